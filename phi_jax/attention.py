"""Swappable causal self-attention kernels behind one interface.

Every function takes query [batch, length, heads, head_dim], key and value
[batch, length, kv_heads, head_dim] (kv_heads divides heads), and keyword arguments
`segment_ids` ([batch, length] ints or None: tokens attend only within their own segment),
`dropout_rate` and `dropout_rng`; it returns [batch, length, heads, head_dim] in the query dtype.
The model picks one by name (`config.model.attention`).
"""

from __future__ import annotations

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental.pallas.ops.tpu import splash_attention as splash

from phi_jax import sharding


def attention_mask(segment_ids: jax.Array | None, length: int) -> jax.Array:
  """Boolean [batch or 1, 1, length, length]: causal, and within one segment when given."""
  causal = jnp.tril(jnp.ones((length, length), bool))[None, None]
  if segment_ids is None:
    return causal
  same_segment = segment_ids[:, None, :, None] == segment_ids[:, None, None, :]
  return causal & same_segment


def masked_attention(query, key, value, mask, *, dropout_rate=0.0, dropout_rng=None):
  """Einsum attention under an explicit boolean `mask` broadcastable to [batch, 1, q_len, k_len]
  (query and key lengths may differ); scores and softmax in fp32 whatever the compute dtype."""
  return heads_first_attention(
    query,
    key.swapaxes(1, 2),
    value.swapaxes(1, 2),
    mask,
    dropout_rate=dropout_rate,
    dropout_rng=dropout_rng,
  )


def heads_first_attention(query, key, value, mask, *, dropout_rate=0.0, dropout_rng=None):
  """`masked_attention` with key and value laid out heads first, [batch, kv_heads, k_len,
  head_dim], as a KV cache stores them: each (row, head) is then one contiguous [k_len, head_dim]
  matrix that the score and output matmuls read in place, where the [batch, k_len, kv_heads,
  head_dim] layout needs a transposed copy of the keys and values first."""
  batch, q_len, heads, head_dim = query.shape
  groups = heads // key.shape[1]
  query = query.reshape(batch, q_len, key.shape[1], groups, head_dim)
  scores = jnp.einsum("bqhgd,bhkd->bhgqk", query, key, preferred_element_type=jnp.float32)
  scores = scores * (head_dim**-0.5)
  scores = jnp.where(mask[:, :, None], scores, jnp.finfo(jnp.float32).min)  # over the group axis
  probs = jax.nn.softmax(scores, axis=-1)
  if dropout_rate > 0.0:
    keep = jax.random.bernoulli(dropout_rng, 1.0 - dropout_rate, probs.shape)
    probs = jnp.where(keep, probs / (1.0 - dropout_rate), 0.0)
  out = jnp.einsum("bhgqk,bhkd->bqhgd", probs.astype(value.dtype), value)
  return out.reshape(batch, q_len, heads, head_dim)


def xla_attention(query, key, value, *, segment_ids=None, dropout_rate=0.0, dropout_rng=None):
  """Plain einsum attention (`masked_attention` under the causal/segment mask)."""
  return masked_attention(
    query,
    key,
    value,
    attention_mask(segment_ids, query.shape[1]),
    dropout_rate=dropout_rate,
    dropout_rng=dropout_rng,
  )


def _dot_product_attention(
  implementation, query, key, value, *, segment_ids=None, dropout_rate=0.0, dropout_rng=None
):
  del dropout_rng
  name = implementation or "fused"
  if dropout_rate > 0.0:
    raise ValueError(
      f"attention='{name}' has no attention dropout; set model.attn_dropout=0 "
      "or use model.attention='xla'"
    )
  mask = None if segment_ids is None else attention_mask(segment_ids, query.shape[1])
  return jax.nn.dot_product_attention(
    query, key, value, mask=mask, is_causal=segment_ids is None, implementation=implementation
  )


def fused_attention(query, key, value, **kwargs):
  """`jax.nn.dot_product_attention` as XLA chooses to compile it."""
  return _dot_product_attention(None, query, key, value, **kwargs)


def cudnn_attention(query, key, value, **kwargs):
  """`jax.nn.dot_product_attention` through cuDNN's flash-attention kernels: NVIDIA GPUs only,
  bf16 or fp16 inputs; the scores are never materialized, forward or backward."""
  return _dot_product_attention("cudnn", query, key, value, **kwargs)


# Query rows per block of `blockwise_attention`.
BLOCK_SIZE = 128


def _blocks(length: int, block_size: int) -> list[tuple[int, int]]:
  return [(start, min(start + block_size, length)) for start in range(0, length, block_size)]


def _block_mask(segment_ids, start: int, end: int) -> jax.Array:
  """Boolean [batch or 1, 1, 1, end - start, end]: query rows start..end-1 against keys 0..end-1
  (only the diagonal square can be causally masked: earlier keys are all in the past)."""
  q_pos = jnp.arange(start, end)[:, None]
  mask = (jnp.arange(end)[None, :] <= q_pos)[None, None, None]
  if segment_ids is not None:
    same = segment_ids[:, start:end, None] == segment_ids[:, None, :end]
    mask = mask & same[:, None, None]
  return mask


# Inside the kernel, heads lead: query [B, KV, G, T, D], key and value [B, KV, T, D], so every
# block's matmuls are plain batched matmuls over (B, KV) without per-block transposes.


def _blockwise_forward(query, key, value, segment_ids, block_size):
  """(out [B, KV, G, T, D], log-sum-exp [B, KV, G, T] fp32)."""
  scale = query.shape[-1] ** -0.5
  outs, lses = [], []
  for start, end in _blocks(query.shape[3], block_size):
    scores = (
      jnp.einsum(
        "bhgqd,bhkd->bhgqk",
        query[:, :, :, start:end],
        key[:, :, :end],
        preferred_element_type=jnp.float32,
      )
      * scale
    )
    scores = jnp.where(_block_mask(segment_ids, start, end), scores, jnp.finfo(jnp.float32).min)
    row_max = jnp.max(scores, axis=-1, keepdims=True)
    probs = jnp.exp(scores - row_max)  # unnormalized
    row_sum = jnp.sum(probs, axis=-1, keepdims=True)
    out = jnp.einsum(
      "bhgqk,bhkd->bhgqd",
      probs.astype(value.dtype),
      value[:, :, :end],
      preferred_element_type=jnp.float32,
    )
    outs.append((out / row_sum).astype(query.dtype))
    lses.append((row_max + jnp.log(row_sum))[..., 0])
  return jnp.concatenate(outs, axis=3), jnp.concatenate(lses, axis=3)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _blockwise(query, key, value, segment_ids, block_size):
  return _blockwise_forward(query, key, value, segment_ids, block_size)[0]


def _blockwise_fwd(query, key, value, segment_ids, block_size):
  out, lse = _blockwise_forward(query, key, value, segment_ids, block_size)
  return out, (query, key, value, segment_ids, out, lse)


def _blockwise_bwd(block_size, residuals, d_out):
  query, key, value, segment_ids, out, lse = residuals
  scale = query.shape[-1] ** -0.5
  # rowsum(dP * P) = rowsum(dO * O): [B, KV, G, T]
  delta = jnp.sum(d_out.astype(jnp.float32) * out.astype(jnp.float32), axis=-1)
  d_query = []
  d_key = jnp.zeros(key.shape, jnp.float32)
  d_value = jnp.zeros(value.shape, jnp.float32)
  for start, end in _blocks(query.shape[3], block_size):
    q, do = query[:, :, :, start:end], d_out[:, :, :, start:end]
    scores = (
      jnp.einsum("bhgqd,bhkd->bhgqk", q, key[:, :, :end], preferred_element_type=jnp.float32)
      * scale
    )
    probs = jnp.where(
      _block_mask(segment_ids, start, end), jnp.exp(scores - lse[..., start:end, None]), 0.0
    )
    d_value = d_value.at[:, :, :end].add(
      jnp.einsum(
        "bhgqk,bhgqd->bhkd", probs.astype(do.dtype), do, preferred_element_type=jnp.float32
      )
    )
    d_probs = jnp.einsum(
      "bhgqd,bhkd->bhgqk", do, value[:, :, :end], preferred_element_type=jnp.float32
    )
    d_scores = (probs * (d_probs - delta[..., start:end, None]) * scale).astype(query.dtype)
    d_query.append(
      jnp.einsum(
        "bhgqk,bhkd->bhgqd", d_scores, key[:, :, :end], preferred_element_type=jnp.float32
      ).astype(query.dtype)
    )
    d_key = d_key.at[:, :, :end].add(
      jnp.einsum("bhgqk,bhgqd->bhkd", d_scores, q, preferred_element_type=jnp.float32)
    )
  return (
    jnp.concatenate(d_query, axis=3),
    d_key.astype(key.dtype),
    d_value.astype(value.dtype),
    None,
  )


_blockwise.defvjp(_blockwise_fwd, _blockwise_bwd)


def blockwise_attention(
  query, key, value, *, segment_ids=None, dropout_rate=0.0, dropout_rng=None, block_size=None
):
  """Causal attention over blocks of `BLOCK_SIZE` query rows that skips the key blocks in the
  future (about half the scores at long lengths), with a flash-attention-style custom VJP: only
  the log-sum-exp is saved and the probabilities are recomputed per block in the backward pass.
  Scores and softmax in fp32. Same results as `xla_attention` up to float rounding; the fast
  choice on CPU."""
  del dropout_rng
  if dropout_rate > 0.0:
    raise ValueError(
      "attention='blockwise' has no attention dropout; set model.attn_dropout=0 "
      "or use model.attention='xla'"
    )
  batch, length, heads, head_dim = query.shape
  kv_heads = key.shape[2]
  query = query.reshape(batch, length, kv_heads, heads // kv_heads, head_dim).transpose(
    0, 2, 3, 1, 4
  )
  key, value = key.transpose(0, 2, 1, 3), value.transpose(0, 2, 1, 3)
  out = _blockwise(query, key, value, segment_ids, block_size or BLOCK_SIZE)
  return out.transpose(0, 3, 1, 2, 4).reshape(batch, length, heads, head_dim)


# Splash kernel block sizes tried in order: the largest that divides the sequence length.
SPLASH_BLOCK_SIZES = (512, 256, 128)


@functools.lru_cache(maxsize=16)
def _splash_kernel(heads: int, length: int, interpret: bool):
  """A causal splash kernel for [heads, length, head_dim] inputs (its block masks are numpy
  arrays computed once per shape, hence the cache)."""
  block = next((b for b in SPLASH_BLOCK_SIZES if length % b == 0), None)
  if block is None:
    raise ValueError(
      f"attention='splash' needs train.seq_len divisible by {SPLASH_BLOCK_SIZES[-1]} (got "
      f"{length}); change the length or use model.attention='blockwise'"
    )
  causal = splash.MultiHeadMask([splash.CausalMask((length, length))] * heads)
  # One fused backward kernel (dq, dk and dv from one pass over the blocks): 5 matmuls per
  # block where separate dq and dkv kernels take 7.
  block_sizes = splash.BlockSizes(
    block_q=block,
    block_kv=block,
    block_kv_compute=block,
    block_q_dkv=block,
    block_kv_dkv=block,
    block_kv_dkv_compute=block,
    use_fused_bwd_kernel=True,
  )
  return splash.make_splash_mha(
    causal, block_sizes=block_sizes, head_shards=1, q_seq_shards=1, interpret=interpret
  )


def splash_attention(
  query, key, value, *, segment_ids=None, dropout_rate=0.0, dropout_rng=None, interpret=False
):
  """The Pallas splash-attention kernel for TPUs: causal, within segments when `segment_ids`
  are given, block-sparse (fully masked blocks are skipped, forward and backward), scores never
  materialized. Under a mesh it runs per shard (`shard_map`) over the batch and heads axes of
  `sharding.LOGICAL_AXIS_RULES`. `interpret=True` runs the kernel in Pallas' interpreter on any
  backend (for tests; slow)."""
  del dropout_rng
  if dropout_rate > 0.0:
    raise ValueError(
      "attention='splash' has no attention dropout; set model.attn_dropout=0 "
      "or use model.attention='xla'"
    )
  groups = query.shape[2] // key.shape[2]
  if groups > 1:  # grouped-query attention: every query head gets its own key/value copy
    key, value = jnp.repeat(key, groups, axis=2), jnp.repeat(value, groups, axis=2)
  query = query * jnp.asarray(query.shape[-1] ** -0.5, query.dtype)  # the kernel does not scale

  def per_shard(query, key, value, segment_ids):
    kernel = _splash_kernel(query.shape[2], query.shape[1], interpret)
    heads_first = lambda x: x.swapaxes(1, 2)  # the kernel takes [heads, length, head_dim]
    if segment_ids is None:
      out = jax.vmap(kernel)(heads_first(query), heads_first(key), heads_first(value))
    else:
      out = jax.vmap(lambda q, k, v, s: kernel(q, k, v, segment_ids=splash.SegmentIds(s, s)))(
        heads_first(query), heads_first(key), heads_first(value), segment_ids
      )
    return heads_first(out)

  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    return per_shard(query, key, value, segment_ids)
  spec = nn.logical_to_mesh_axes(("batch", "length", "heads", "kv"), sharding.LOGICAL_AXIS_RULES)
  segment_spec = None if segment_ids is None else jax.P(spec[0], None)
  return jax.shard_map(
    per_shard,
    mesh=mesh,
    in_specs=(spec, spec, spec, segment_spec),
    out_specs=spec,
    check_vma=False,
  )(query, key, value, segment_ids)


# Per splash kernel: its block mask, and the matmuls it runs per visited block (forward: scores
# and output; the fused backward: scores, dP, dV, dK, dQ).
_SPLASH_KERNEL_MATMULS = {
  "splash_mha_fwd": ("fwd_mask_info", 2),
  "splash_mha_dkv": ("dkv_mask_info", 5),
}


def splash_kernel_flops(length: int, head_dim: int):
  """`hlo_flops.KernelFlops` for the splash kernels of `splash_attention` at this length: a
  call's FLOPs are its matmuls over every block its causal mask visits (diagonal blocks whole,
  as the kernel computes them), for each [length, head_dim] row of its query operand."""
  kernel = _splash_kernel(1, length, False)

  def flops(name: str, operand_dims) -> float:
    for prefix, (mask_info, matmuls) in _SPLASH_KERNEL_MATMULS.items():
      if name.startswith(prefix):
        block_mask = getattr(kernel, mask_info).block_mask
        block_q, block_kv = length // block_mask.shape[1], length // block_mask.shape[2]
        visited = int(np.count_nonzero(block_mask)) * block_q * block_kv
        rows = next(math.prod(d[:-2]) for d in operand_dims if d and d[-2:] == [length, head_dim])
        return 2.0 * matmuls * visited * head_dim * rows
    return 0.0

  return flops


ATTENTION_FNS = {
  "xla": xla_attention,
  "fused": fused_attention,
  "cudnn": cudnn_attention,
  "blockwise": blockwise_attention,
  "splash": splash_attention,
}
