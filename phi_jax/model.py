"""The phi-1 decoder, in functional Flax.

Params are a plain pytree of arrays; `forward(config, params, tokens)` is a pure function.
Every parameter and main activation carries logical axis names (`batch`, `length`, `embed`,
`heads`, `kv`, `mlp`, `vocab`, plus `layers` for the scanned layer stack and `norm` for
LayerNorm vectors); `phi_jax.sharding` maps those names onto a device mesh.

One block (CodeGen-style, parallel): h = LN(x); x = x + Attn(h) + MLP(h).
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
from collections.abc import Mapping
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from phi_jax import attention as attention_lib

Params = Any  # a nested dict of arrays

# Activation checkpointing policies, by config name ('none' = no remat).
REMAT_POLICIES = {
  "none": None,
  "full": jax.checkpoint_policies.nothing_saveable,
  "dots": jax.checkpoint_policies.checkpoint_dots,
  "dots_no_batch": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}
ACTIVATIONS = {
  "gelu_tanh": lambda x: nn.gelu(x, approximate=True),  # HF "gelu_new"
  "gelu": lambda x: nn.gelu(x, approximate=False),
}
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Architecture and numerics of one phi model. Defaults are phi-1 (1.3B)."""

  vocab_size: int = 51200
  d_model: int = 2048
  n_layers: int = 24
  n_heads: int = 32
  n_kv_heads: int = 0  # 0 = n_heads (phi-1 has no GQA; kept for interop with other phi shapes)
  head_dim: int = 64
  mlp_dim: int = 8192
  rotary_dim: int = 32  # leading dims of each head that rotate; the rest pass through
  rope_base: float = 10000.0
  max_len: int = 2048
  layer_norm_eps: float = 1e-5
  activation: str = "gelu_tanh"
  qk_layernorm: bool = False
  embed_dropout: float = 0.0
  resid_dropout: float = 0.0
  attn_dropout: float = 0.0
  init_std: float = 0.02
  dtype: str = "float32"  # compute dtype
  param_dtype: str = "float32"
  attention: str = "xla"  # a key of phi_jax.attention.ATTENTION_FNS
  remat: str = "none"  # a key of REMAT_POLICIES (a run config may say "auto": configs.AUTO)
  scan_unroll: int = 1  # layers per loop iteration of the layer scan (n_layers = no loop)
  mask_packed_segments: bool = True  # packed documents cannot attend to each other

  def __post_init__(self):
    _check_choice("activation", self.activation, ACTIVATIONS)
    _check_choice("dtype", self.dtype, DTYPES)
    _check_choice("param_dtype", self.param_dtype, DTYPES)
    _check_choice("attention", self.attention, attention_lib.ATTENTION_FNS)
    _check_choice("remat", self.remat, REMAT_POLICIES)
    if not 0 < self.rotary_dim <= self.head_dim or self.rotary_dim % 2:
      raise ValueError(
        f"rotary_dim={self.rotary_dim} must be even and in (0, head_dim={self.head_dim}]"
      )
    if self.num_kv_heads <= 0 or self.n_heads % self.num_kv_heads:
      raise ValueError(f"n_heads={self.n_heads} must be a multiple of n_kv_heads={self.n_kv_heads}")

  @property
  def num_kv_heads(self) -> int:
    return self.n_kv_heads or self.n_heads

  @classmethod
  def from_dict(cls, values: Mapping[str, Any]) -> ModelConfig:
    """Builds a config from a mapping (e.g. `cfg.model` of a ConfigDict), naming any unknown key."""
    return dataclass_from_dict(cls, values, "model config")


def dataclass_from_dict(cls, values: Mapping[str, Any], what: str):
  """`cls(**values)` for a dataclass, naming an unknown key and the closest known one."""
  fields = {f.name for f in dataclasses.fields(cls)}
  for key in values:
    if key not in fields:
      close = difflib.get_close_matches(key, sorted(fields), n=1)
      hint = f"; did you mean '{close[0]}'?" if close else f"; valid keys: {sorted(fields)}"
      raise KeyError(f"unknown {what} key '{key}'{hint}")
  return cls(**dict(values))


def _check_choice(name: str, value: str, choices: Mapping[str, Any]) -> None:
  if value not in choices:
    raise ValueError(f"model.{name}={value!r} is not one of {sorted(choices)}")


def as_model_config(config: Any) -> ModelConfig:
  """Accepts a ModelConfig, a run config with a `model` section, or the model section itself."""
  if isinstance(config, ModelConfig):
    return config
  if "model" in config:
    config = config["model"]
  fields = dict(config.items())
  if fields.get("remat") == "auto":  # chosen when the config trains (phi_jax.aot.fit); only
    fields["remat"] = "none"  # gradients recompute activations
  return ModelConfig.from_dict(fields)


def portable(config: Any) -> ModelConfig:
  """The model config for scoring texts of any length on any machine: an attention kernel bound
  to one platform and to block-multiple lengths (`cudnn`, `splash`) becomes `xla`, which computes
  the same function."""
  config = as_model_config(config)
  if config.attention in ("cudnn", "splash"):
    return dataclasses.replace(config, attention="xla")
  return config


def _param(init_fn, names):
  return nn.with_logical_partitioning(init_fn, names)


def _constrain(x, names):
  return nn.with_logical_constraint(x, names)


def positions_from_segments(segment_ids: jax.Array) -> jax.Array:
  """Per-token positions that restart at 0 at each new segment of a packed row."""
  index = jnp.arange(segment_ids.shape[-1], dtype=jnp.int32)
  index = jnp.broadcast_to(index, segment_ids.shape)
  first = jnp.concatenate(
    [jnp.ones_like(segment_ids[..., :1], bool), segment_ids[..., 1:] != segment_ids[..., :-1]],
    axis=-1,
  )
  segment_start = jax.lax.cummax(jnp.where(first, index, 0), axis=segment_ids.ndim - 1)
  return index - segment_start


def apply_rotary(x: jax.Array, positions: jax.Array, rotary_dim: int, base: float) -> jax.Array:
  """Half-split (NeoX) rotary on the first `rotary_dim` dims of each head; angles in fp32.

  x: [batch, length, heads, head_dim]; positions: [batch, length].
  """
  half = rotary_dim // 2
  inv_freq = 1.0 / (base ** (jnp.arange(0, rotary_dim, 2, dtype=jnp.float32) / rotary_dim))
  angles = positions.astype(jnp.float32)[..., None] * inv_freq  # [batch, length, half]
  cos = jnp.cos(angles)[:, :, None, :]
  sin = jnp.sin(angles)[:, :, None, :]
  x_rot, x_pass = x[..., :rotary_dim].astype(jnp.float32), x[..., rotary_dim:]
  x1, x2 = x_rot[..., :half], x_rot[..., half:]
  rotated = jnp.concatenate([x1 * cos - x2 * sin, x1 * sin + x2 * cos], axis=-1)
  return jnp.concatenate([rotated.astype(x.dtype), x_pass], axis=-1)


class Linear(nn.Module):
  """x . kernel + bias, contracting the trailing `in_dims` axes of x; kernel is [*in, *features].

  Params are created at their real shape (so their logical names always fit their rank).
  """

  config: ModelConfig
  features: tuple[int, ...]
  kernel_axes: tuple[str, ...]
  in_dims: int = 1

  @nn.compact
  def __call__(self, x):
    cfg = self.config
    dtype, param_dtype = DTYPES[cfg.dtype], DTYPES[cfg.param_dtype]
    kernel = self.param(
      "kernel",
      _param(nn.initializers.normal(cfg.init_std), self.kernel_axes),
      (*x.shape[-self.in_dims :], *self.features),
      param_dtype,
    )
    bias = self.param(
      "bias",
      _param(nn.initializers.zeros, self.kernel_axes[self.in_dims :]),
      self.features,
      param_dtype,
    )
    y = jnp.tensordot(x.astype(dtype), kernel.astype(dtype), axes=self.in_dims)
    return y + bias.astype(dtype)


class Attention(nn.Module):
  """Self-attention; with `kv` (this layer's {"k", "v"} cache arrays) and `slots` (see
  `KVCache`) it writes this chunk's keys and values into the cache and attends over the whole
  cache instead."""

  config: ModelConfig
  deterministic: bool

  @nn.compact
  def __call__(self, h, segment_ids, positions, kv=None, slots=None):
    cfg = self.config

    def project(name, n_heads):
      return Linear(cfg, (n_heads, cfg.head_dim), ("embed", "heads", "kv"), name=name)(h)

    q = project("q_proj", cfg.n_heads)
    k = project("k_proj", cfg.num_kv_heads)
    v = project("v_proj", cfg.num_kv_heads)
    if cfg.qk_layernorm:
      q = _layer_norm(cfg, "q_layernorm", axis_name="kv")(q)
      k = _layer_norm(cfg, "k_layernorm", axis_name="kv")(k)
    q = apply_rotary(q, positions, cfg.rotary_dim, cfg.rope_base)
    k = apply_rotary(k, positions, cfg.rotary_dim, cfg.rope_base)
    q = _constrain(q, ("batch", "length", "heads", "kv"))
    k = _constrain(k, ("batch", "length", "heads", "kv"))
    v = _constrain(v, ("batch", "length", "heads", "kv"))
    dense = Linear(cfg, (cfg.d_model,), ("heads", "kv", "embed"), in_dims=2, name="dense")

    if kv is not None:
      index, start = slots
      kv = {
        name: _constrain(
          jax.lax.dynamic_update_slice(
            kv[name], new.swapaxes(1, 2).astype(kv[name].dtype), (0, 0, index, 0)
          ),
          CACHE_AXES,
        )
        for name, new in (("k", k), ("v", v))
      }
      out = attention_lib.heads_first_attention(
        q,
        kv["k"].astype(q.dtype),
        kv["v"].astype(q.dtype),
        cache_mask(start, index, q.shape[1], kv["k"].shape[2]),
      )
      return dense(_constrain(out, ("batch", "length", "heads", "kv"))), kv

    dropout_rate = 0.0 if self.deterministic else cfg.attn_dropout
    dropout_rng = self.make_rng("dropout") if dropout_rate > 0 else None
    out = attention_lib.ATTENTION_FNS[cfg.attention](
      q,
      k,
      v,
      segment_ids=segment_ids if cfg.mask_packed_segments else None,
      dropout_rate=dropout_rate,
      dropout_rng=dropout_rng,
    )
    out = _constrain(out, ("batch", "length", "heads", "kv"))
    return dense(out), None


class Mlp(nn.Module):
  config: ModelConfig

  @nn.compact
  def __call__(self, h):
    cfg = self.config
    h = Linear(cfg, (cfg.mlp_dim,), ("embed", "mlp"), name="fc1")(h)
    h = _constrain(ACTIVATIONS[cfg.activation](h), ("batch", "length", "mlp"))
    return Linear(cfg, (cfg.d_model,), ("mlp", "embed"), name="fc2")(h)


def _layer_norm(cfg: ModelConfig, name: str, axis_name: str = "norm") -> nn.LayerNorm:
  return nn.LayerNorm(
    epsilon=cfg.layer_norm_eps,
    dtype=DTYPES[cfg.dtype],
    param_dtype=DTYPES[cfg.param_dtype],
    use_fast_variance=False,
    name=name,
    scale_init=_param(nn.initializers.ones, (axis_name,)),
    bias_init=_param(nn.initializers.zeros, (axis_name,)),
  )


class Block(nn.Module):
  """One parallel block; written as a scan body: (carry, broadcast args) -> (carry, None)."""

  config: ModelConfig
  deterministic: bool

  @nn.compact
  def __call__(self, x, segment_ids, positions, kv=None, slots=None):
    cfg = self.config
    h = _layer_norm(cfg, "input_layernorm")(x)
    attn, kv = Attention(cfg, self.deterministic, name="attn")(h, segment_ids, positions, kv, slots)
    mlp = Mlp(cfg, name="mlp")(h)
    drop = nn.Dropout(cfg.resid_dropout, deterministic=self.deterministic)
    x = x + drop(attn) + drop(mlp)
    return _constrain(x, ("batch", "length", "embed")), kv


class Phi(nn.Module):
  """The whole decoder; layers are one scanned stack (params carry a leading `layers` axis), or
  with a KV cache (`kv`: per-layer {"k", "v"} arrays) a loop over `layers_<i>` blocks: params
  split by `decode_params`."""

  config: ModelConfig

  @nn.compact
  def __call__(
    self,
    tokens,
    segment_ids,
    positions,
    deterministic: bool = True,
    return_hidden: bool = False,
    kv=None,
    slots=None,
    last_only: bool = False,
  ):
    cfg = self.config
    dtype, param_dtype = DTYPES[cfg.dtype], DTYPES[cfg.param_dtype]
    x = nn.Embed(
      cfg.vocab_size,
      cfg.d_model,
      dtype=dtype,
      param_dtype=param_dtype,
      embedding_init=_param(nn.initializers.normal(cfg.init_std), ("vocab", "embed")),
      name="embed_tokens",
    )(tokens)
    x = nn.Dropout(cfg.embed_dropout, deterministic=deterministic)(x)
    x = _constrain(x, ("batch", "length", "embed"))

    block = Block
    if REMAT_POLICIES[cfg.remat] is not None:
      block = nn.remat(Block, policy=REMAT_POLICIES[cfg.remat], prevent_cse=False)
    if kv is None:
      stack = nn.scan(
        block,
        variable_axes={"params": 0},
        split_rngs={"params": True, "dropout": True},
        in_axes=(nn.broadcast, nn.broadcast),
        length=cfg.n_layers,
        unroll=cfg.scan_unroll,
        metadata_params={nn.PARTITION_NAME: "layers"},
      )
      x, _ = stack(cfg, deterministic, name="layers")(x, segment_ids, positions)
    else:
      # Unrolled, so that every layer's weights and cache are buffers of their own that a step
      # reads, and writes one slot of, in place: a scan would slice each layer's weights and
      # cache out of the stacks (copies) and stack the updated caches again, every step.
      updated = []
      for i, layer_kv in enumerate(kv):
        x, layer_kv = block(cfg, deterministic, name=f"layers_{i}")(
          x, segment_ids, positions, layer_kv, slots
        )
        updated.append(layer_kv)
      kv = updated

    if last_only:
      x = x[:, -1:]
    x = _layer_norm(cfg, "final_layernorm")(x)
    if return_hidden:
      return x
    logits = Linear(cfg, (cfg.vocab_size,), ("embed", "vocab"), name="lm_head")(x)
    logits = _constrain(logits.astype(jnp.float32), ("batch", "length", "vocab"))
    return logits if kv is None else (logits, kv)


def _inputs(tokens, segment_ids, positions):
  if segment_ids is None:
    segment_ids = jnp.ones(tokens.shape, jnp.int32)
  if positions is None:
    positions = positions_from_segments(segment_ids)
  return segment_ids, positions


def _boxed_init(config: ModelConfig, rng: jax.Array):
  tokens = jnp.zeros((1, 8), jnp.int32)
  # No kernel has params, and a length-8 probe is shorter than the splash kernel's blocks.
  config = dataclasses.replace(config, attention="xla")
  return Phi(config).init(rng, tokens, *_inputs(tokens, None, None))["params"]


def _abstract_boxed(config: Any):
  return jax.eval_shape(functools.partial(_boxed_init, as_model_config(config)), jax.random.key(0))


def init(config: Any, rng: jax.Array) -> Params:
  """Fresh params (N(0, init_std) weights, zero biases, unit LayerNorm) as a plain pytree."""
  return nn.meta.unbox(_boxed_init(as_model_config(config), rng))


def param_shapes(config: Any) -> Params:
  """ShapeDtypeStructs of the params, computed without allocating them."""
  return nn.meta.unbox(_abstract_boxed(config))


def logical_axes(config: Any) -> Params:
  """The logical axis names of every param, as a pytree of PartitionSpecs."""
  return nn.get_partition_spec(_abstract_boxed(config))


def num_params(config: Any) -> int:
  return sum(x.size for x in jax.tree.leaves(param_shapes(config)))


def forward(
  config: Any,
  params: Params,
  tokens: jax.Array,
  *,
  segment_ids: jax.Array | None = None,
  positions: jax.Array | None = None,
  deterministic: bool = True,
  rng: jax.Array | None = None,
  return_hidden: bool = False,
) -> jax.Array:
  """Logits [batch, length, vocab] (fp32) for int tokens [batch, length].

  segment_ids: packed-document ids per token (0 = padding); documents with different ids do not
    attend to each other when `mask_packed_segments` is on. Default: one document per row.
  positions: rotary positions per token; default restarts at 0 at each segment.
  deterministic=False turns dropout on and needs `rng`.
  return_hidden: return the final-LayerNorm hidden states [batch, length, d_model] instead.
  """
  config = as_model_config(config)
  segment_ids, positions = _inputs(tokens, segment_ids, positions)
  rngs = {"dropout": rng} if rng is not None else {}
  if not deterministic and rng is None:
    raise ValueError("forward(deterministic=False) needs rng= for dropout")
  return Phi(config).apply(
    {"params": params},
    tokens,
    segment_ids,
    positions,
    deterministic=deterministic,
    return_hidden=return_hidden,
    rngs=rngs,
  )


# Logical axes of one layer's cached keys or values: [batch, kv heads, cache length, head dim].
CACHE_AXES = ("batch", "heads", "length", "kv")


@flax.struct.dataclass
class KVCache:
  """Keys and values of every layer for `generate`-style decoding, one slot per token.

  Rows are left-padded: row b's tokens occupy slots start[b] .. index-1, so all rows write
  their next token at the same slot `index`. Slots before `start[b]` are never attended to.
  Each layer's keys and values are arrays of their own (see `Phi`), heads first (see
  `attention.heads_first_attention`).
  """

  k: tuple[jax.Array, ...]  # per layer: [batch, kv_heads, length, head_dim], compute dtype
  v: tuple[jax.Array, ...]
  index: jax.Array  # int32 scalar: the next slot to write
  start: jax.Array  # int32 [batch]: each row's first real slot


def init_cache(config: Any, batch: int, length: int, start: jax.Array) -> KVCache:
  """An empty cache of `length` slots for `batch` rows whose prompts start at slot `start`."""
  config = as_model_config(config)
  shape = (batch, config.num_kv_heads, length, config.head_dim)

  def empty():  # every layer's keys and values a buffer of their own, to be updated in place
    return tuple(jnp.zeros(shape, DTYPES[config.dtype]) for _ in range(config.n_layers))

  return KVCache(
    k=empty(), v=empty(), index=jnp.zeros((), jnp.int32), start=jnp.asarray(start, jnp.int32)
  )


def cache_logical_axes(config: Any) -> KVCache:
  """The cache's logical axis names (shards like activations: batch over data, heads over
  tensor)."""
  P = jax.sharding.PartitionSpec
  layers = (P(*CACHE_AXES),) * as_model_config(config).n_layers
  return KVCache(k=layers, v=layers, index=P(), start=P("batch"))


def _split_layers(tree: Mapping[str, Any], n_layers: int, take) -> dict:
  """`tree` with its `layers` subtree (leading layer axis) replaced by `layers_0` .. `layers_<n-1>`,
  layer i's leaves being `take(i, leaf)`."""
  tree = dict(tree)
  stack = tree.pop("layers")
  for i in range(n_layers):
    tree[f"layers_{i}"] = jax.tree.map(functools.partial(take, i), stack)
  return tree


def decode_params(config: Any, params: Params) -> Params:
  """The params as `forward_with_cache` reads them fastest: the layer stack split into one
  subtree per layer (`layers_0`, ...), each weight a buffer of its own (new arrays: the stacked
  params stay as they are)."""
  return _split_layers(params, as_model_config(config).n_layers, lambda i, leaf: leaf[i])


def decode_logical_axes(config: Any) -> Params:
  """The logical axis names of `decode_params`' params."""
  config = as_model_config(config)
  return _split_layers(
    logical_axes(config),
    config.n_layers,
    lambda i, spec: jax.sharding.PartitionSpec(*spec[1:]),
  )


def cache_mask(start: jax.Array, index: jax.Array, q_len: int, cache_len: int) -> jax.Array:
  """Boolean [batch, 1, q_len, cache_len]: query i (at slot index + i) sees slots start..index+i."""
  slot = jnp.arange(cache_len)[None, None, None, :]
  query_slot = index + jnp.arange(q_len)[None, None, :, None]
  return (slot <= query_slot) & (slot >= start[:, None, None, None])


def forward_with_cache(
  config: Any, params: Params, tokens: jax.Array, cache: KVCache, *, last_only: bool = False
) -> tuple[jax.Array, KVCache]:
  """(logits [batch, length, vocab] fp32, updated cache) for `tokens` [batch, length] written at
  slots cache.index .., each at rotary position slot - start (so every prompt starts at 0).

  params: as `decode_params` makes them, or stacked as `init` makes them (then split here, which
    copies the layer weights at every call: decoders split them once).
  last_only: logits for the last position only ([batch, 1, vocab]), all a prefill samples from.
  """
  config = as_model_config(config)
  if "layers" in params:
    params = decode_params(config, params)
  length = tokens.shape[1]
  positions = cache.index + jnp.arange(length)[None, :] - cache.start[:, None]
  logits, kv = Phi(config).apply(
    {"params": params},
    tokens,
    jnp.ones(tokens.shape, jnp.int32),
    positions,
    kv=[{"k": k, "v": v} for k, v in zip(cache.k, cache.v)],
    slots=(cache.index, cache.start),
    last_only=last_only,
  )
  return logits, cache.replace(
    k=tuple(layer["k"] for layer in kv),
    v=tuple(layer["v"] for layer in kv),
    index=cache.index + length,
  )
