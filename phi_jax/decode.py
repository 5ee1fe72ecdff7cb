"""Autoregressive sampling with a KV cache: greedy, temperature, top-k, top-p.

    decoder = decode.Decoder(model_config, params, decode.SamplingConfig(max_new_tokens=256))
    new_tokens = decoder.generate([[5, 6, 7], [8, 9]], stop=lambda row, new: ...)
    # each row its own sampling and random stream (a server's batch of unrelated requests)
    new_tokens = decoder.generate(prompts, rows=[decode.RowSampling(temperature=0.8, seed=7), ...])

Prompts of different lengths are left-padded to a shape bucket (a multiple of
`SamplingConfig.prompt_bucket`), rows to a multiple of the data-parallel devices, so one
compiled prefill and one compiled decode chunk serve every batch of a bucket. The prefill fills
the cache with the prompts; each decode chunk is one jitted `lax.while_loop` of up to
`chunk_tokens` steps that stops early once every row is done (end-of-text, or marked done by the
host's `stop` check, which runs between chunks so stop *strings* can end rows). Params, cache
and tokens are sharded by `phi_jax.sharding`'s logical-axis rules on the given mesh.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from phi_jax import checkpoint, files, sharding
from phi_jax import model as model_lib


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
  """How tokens are drawn; `temperature=0` is greedy (argmax)."""

  temperature: float = 0.0
  top_k: int = 0  # keep the k most likely tokens (0 = all)
  top_p: float = 1.0  # keep the smallest set of tokens with this much probability (1 = all)
  max_new_tokens: int = 256
  eos_id: int = 1  # <|endoftext|> ends a row
  pad_id: int = 0
  prompt_bucket: int = 64  # prompt lengths round up to a multiple of this (one compile each)
  chunk_tokens: int = 64  # decode steps per compiled chunk between host stop checks
  seed: int = 0

  def __post_init__(self):
    _check_filters(self)
    if self.max_new_tokens < 1 or self.prompt_bucket < 1 or self.chunk_tokens < 1:
      raise ValueError(f"max_new_tokens, prompt_bucket and chunk_tokens must be >= 1: {self}")

  @classmethod
  def from_dict(cls, values: Mapping[str, Any]) -> SamplingConfig:
    return model_lib.dataclass_from_dict(cls, values, "sampling")


def _check_filters(sampling: SamplingConfig | RowSampling) -> None:
  if sampling.temperature < 0 or sampling.top_k < 0 or not 0 < sampling.top_p <= 1:
    raise ValueError(f"sampling needs temperature >= 0, top_k >= 0, 0 < top_p <= 1: {sampling}")


@dataclasses.dataclass(frozen=True)
class RowSampling:
  """One row's own sampling in a batch whose rows differ (`Decoder.generate(rows=...)`):
  temperature, top_k and top_p as in SamplingConfig, and a random stream keyed by (`seed`,
  `stream`) alone, so that a row's tokens do not depend on the rows it shares a batch with.
  `stream` tells apart several samples drawn with one seed."""

  temperature: float = 0.0
  top_k: int = 0
  top_p: float = 1.0
  seed: int = 0  # 0 <= seed < 2**32
  stream: int = 0

  def __post_init__(self):
    _check_filters(self)


def sampling_knobs(sampling: SamplingConfig) -> dict:
  """The sampling settings as traced scalars: changing them never recompiles."""
  return {
    "temperature": np.float32(sampling.temperature),
    "top_k": np.int32(sampling.top_k),
    "top_p": np.float32(sampling.top_p),
    "eos_id": np.int32(sampling.eos_id),
    "pad_id": np.int32(sampling.pad_id),
  }


def row_knobs(sampling: SamplingConfig, rows: Sequence[RowSampling]) -> tuple[dict, jax.Array]:
  """(knobs, keys) for rows that each sample their own way: temperature, top_k and top_p as
  [rows] arrays, and one random key per row."""
  knobs = {
    **sampling_knobs(sampling),
    "temperature": np.array([r.temperature for r in rows], np.float32),
    "top_k": np.array([r.top_k for r in rows], np.int32),
    "top_p": np.array([r.top_p for r in rows], np.float32),
  }
  seeds = np.array([r.seed for r in rows], np.uint32)
  streams = np.array([r.stream for r in rows], np.uint32)
  keys = jax.vmap(lambda seed, stream: jax.random.fold_in(jax.random.key(seed), stream))
  return knobs, keys(seeds, streams)


def _fold_in(rng: jax.Array, data: Any) -> jax.Array:
  """`jax.random.fold_in` of one key, or of each key of a [rows] array of them."""
  return (
    jax.random.fold_in(rng, data)
    if rng.ndim == 0
    else jax.vmap(jax.random.fold_in, (0, None))(rng, data)
  )


def sample_logits(logits: jax.Array, rng: jax.Array, knobs: Mapping[str, Any]) -> jax.Array:
  """One token per row from fp32 logits [batch, vocab]; `knobs` as made by `sampling_knobs` (one
  setting for all rows) or `row_knobs` (each row its own): greedy where temperature is 0, top-k
  and top-p both filter when set. `rng`: one key, or [batch] keys, a row's draw then depending
  on its own key alone."""
  rows = logits.shape[:1]
  temperature = jnp.broadcast_to(knobs["temperature"], rows)

  def greedy():
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)

  def sample():
    scaled = logits / jnp.where(temperature > 0, temperature, 1.0)[:, None]
    ordered = jnp.sort(scaled, axis=-1)[:, ::-1]
    vocab = logits.shape[-1]
    top_k = jnp.broadcast_to(knobs["top_k"], rows)[:, None]
    top_k = jnp.where(top_k > 0, jnp.minimum(top_k, vocab), vocab)
    ordered = jnp.where(jnp.arange(vocab) < top_k, ordered, -jnp.inf)
    probs = jax.nn.softmax(ordered, axis=-1)
    # Keep a token while the mass before it is < top_p (the most likely one always stays).
    kept = (jnp.cumsum(probs, axis=-1) - probs) < jnp.broadcast_to(knobs["top_p"], rows)[:, None]
    threshold = jnp.min(jnp.where(kept, ordered, jnp.inf), axis=-1, keepdims=True)
    filtered = jnp.where(scaled < threshold, -jnp.inf, scaled)
    if rng.ndim == 0:
      drawn = jax.random.categorical(rng, filtered, axis=-1)
    else:
      drawn = jax.vmap(jax.random.categorical)(rng, filtered)
    return jnp.where(temperature > 0, drawn.astype(jnp.int32), greedy())

  return jax.lax.cond(jnp.any(temperature > 0), sample, greedy)


def _round_up(value: int, multiple: int) -> int:
  return max(multiple, math.ceil(value / multiple) * multiple)


def _prefill(config, mesh, params, prompts, start, rng, knobs, cache_len):
  """Fills a fresh cache with the left-padded prompts; samples each row's first new token."""
  with sharding.activation_rules(mesh):
    cache = model_lib.init_cache(config, prompts.shape[0], cache_len, start)
    logits, cache = model_lib.forward_with_cache(config, params, prompts, cache, last_only=True)
    return cache, sample_logits(logits[:, -1], _fold_in(rng, 0), knobs)


def _chunk(config, mesh, params, cache, last, done, rng, knobs, limit, steps):
  """Up to min(`steps`, `limit`) decode steps. `last` holds each row's newest sampled token, not
  yet emitted nor in the cache; a step emits it (or ends the row at end-of-text), feeds it, and
  samples the next. Returns (cache, emitted [batch, steps] (-1 where nothing was), done, last,
  steps taken)."""

  def step(carry):
    cache, last, done, out, i = carry
    done = done | (last == knobs["eos_id"])
    out = out.at[:, i].set(jnp.where(done, -1, last))
    # Finished rows feed padding; whatever they sample is never emitted.
    logits, cache = model_lib.forward_with_cache(
      config, params, jnp.where(done, knobs["pad_id"], last)[:, None], cache
    )
    token = sample_logits(logits[:, -1], _fold_in(rng, i), knobs)
    return cache, token, done, out, i + 1

  with sharding.activation_rules(mesh):
    out = jnp.full((last.shape[0], steps), -1, jnp.int32)
    carry = (cache, last, done, out, jnp.zeros((), jnp.int32))
    carry = jax.lax.while_loop(
      lambda c: (c[4] < jnp.minimum(steps, limit)) & ~jnp.all(c[2]), step, carry
    )
    cache, last, done, out, taken = carry
    return cache, out, done, last, taken


@functools.cache
def _compiled(config: model_lib.ModelConfig, mesh: jax.sharding.Mesh):
  """The jitted prefill and chunk for a model and mesh, shared by every Decoder of them (XLA
  compiles each once per shape: rows, prompt bucket, cache length, chunk size)."""
  params = sharding.logical_sharding(model_lib.decode_logical_axes(config), mesh)
  cache = sharding.logical_sharding(model_lib.cache_logical_axes(config), mesh)
  rows = NamedSharding(mesh, P(("data", "fsdp")))
  tokens = sharding.batch_sharding(mesh)
  replicated = NamedSharding(mesh, P())
  prefill = jax.jit(
    functools.partial(_prefill, config, mesh),
    static_argnums=(5,),
    in_shardings=(params, tokens, rows, replicated, replicated),
    out_shardings=(cache, rows),
  )
  chunk = jax.jit(
    functools.partial(_chunk, config, mesh),
    static_argnums=(7,),
    donate_argnums=(1,),
    in_shardings=(params, cache, rows, rows, replicated, replicated, replicated),
    out_shardings=(cache, tokens, rows, rows, replicated),
  )
  return params, prefill, chunk


class Decoder:
  """Generation for one (model, params, sampling settings, mesh). It holds its own copy of the
  params, split per layer (`model.decode_params`)."""

  def __init__(
    self,
    config: Any,
    params: Any,
    sampling: SamplingConfig = SamplingConfig(),
    mesh: jax.sharding.Mesh | None = None,
  ):
    self.config = model_lib.as_model_config(config)
    self.sampling = sampling
    self.mesh = mesh or sharding.make_mesh({"data": 1, "fsdp": -1, "tensor": 1})
    self.rows_multiple = sharding.data_parallel_size(self.mesh)
    param_sharding, self._prefill, self._chunk = _compiled(self.config, self.mesh)
    self.params = jax.device_put(model_lib.decode_params(self.config, params), param_sharding)

  @property
  def max_prompt_len(self) -> int:
    """The longest prompt that leaves room for `max_new_tokens` within the model's max_len."""
    room = self.config.max_len - self.sampling.max_new_tokens
    return room - room % self.sampling.prompt_bucket

  def generate(
    self,
    prompts: Sequence[Sequence[int]],
    *,
    rng: jax.Array | None = None,
    stop: Callable[[int, list[int]], bool] | None = None,
    rows: Sequence[RowSampling] | None = None,
  ) -> list[list[int]]:
    """New tokens for each prompt: at most `max_new_tokens`, ending before end-of-text, or
    soon after `stop(row, its new tokens so far)` (checked between chunks) says so: the caller
    trims at its stop string. Rows are independent: a row's tokens do not depend on the other
    prompts. `rows`: each prompt's own sampling and random stream (instead of the decoder's
    sampling settings and `rng`); padding rows decode greedily."""
    sampling = self.sampling
    if not prompts or any(len(p) == 0 for p in prompts):
      raise ValueError("generate needs at least one prompt, each of at least one token")
    if rows is not None and (len(rows) != len(prompts) or rng is not None):
      raise ValueError("generate(rows=...) needs one RowSampling per prompt, and no rng")
    n_rows = _round_up(len(prompts), self.rows_multiple)
    prompt_len = _round_up(max(len(p) for p in prompts), sampling.prompt_bucket)
    cache_len = _round_up(prompt_len + sampling.max_new_tokens, sampling.prompt_bucket)
    if prompt_len + sampling.max_new_tokens > self.config.max_len:
      raise ValueError(
        f"prompt bucket {prompt_len} + max_new_tokens {sampling.max_new_tokens} exceeds the "
        f"model's max_len {self.config.max_len}: shorten the prompts or max_new_tokens"
      )
    batch = np.full((n_rows, prompt_len), sampling.pad_id, np.int32)
    start = np.full((n_rows,), prompt_len - 1, np.int32)  # padding rows: one pad token
    for row, prompt in enumerate(prompts):
      batch[row, prompt_len - len(prompt) :] = prompt
      start[row] = prompt_len - len(prompt)
    if rows is None:
      knobs, rng = sampling_knobs(sampling), jax.random.key(sampling.seed) if rng is None else rng
    else:
      knobs, rng = row_knobs(sampling, [*rows, *[RowSampling()] * (n_rows - len(rows))])

    cache, last = self._prefill(self.params, batch, start, rng, knobs, cache_len)
    done = np.arange(n_rows) >= len(prompts)
    produced = [[] for _ in prompts]
    total = 0
    while total < sampling.max_new_tokens and not done.all():
      chunk_rng = _fold_in(rng, total + 1)
      cache, out, done_dev, last, taken = self._chunk(
        self.params,
        cache,
        last,
        done,
        chunk_rng,
        knobs,
        np.int32(sampling.max_new_tokens - total),
        sampling.chunk_tokens,
      )
      out, done = np.asarray(out), np.array(done_dev)
      taken = int(taken)
      total += taken
      for row in range(len(prompts)):
        produced[row] += [int(t) for t in out[row, :taken] if t >= 0]
        if not done[row] and stop is not None and stop(row, produced[row]):
          done[row] = True
    return produced


def truncate(text: str, stop: Sequence[str]) -> str:
  """`text` up to the first occurrence of any stop string."""
  return text[: min((i for i in (text.find(s) for s in stop) if i >= 0), default=len(text))]


def continuation(vocab: Any, prompt: Sequence[int], new: Sequence[int]) -> str:
  """The text `new` continues `prompt` with, decoded together with the prompt and the prompt's
  text removed, so that tokenizers which decode a leading piece differently on its own cannot
  change it."""
  head, whole = vocab.decode(list(prompt)), vocab.decode([*prompt, *new])
  return whole[len(head) :] if whole.startswith(head) else vocab.decode(list(new))


def generate_text(
  decoder: Decoder,
  vocab: Any,
  prompts: Sequence[str],
  *,
  stop: Sequence[str] = (),
  rng: jax.Array | None = None,
) -> list[str]:
  """The text each prompt is continued with, cut before the first stop string.

  vocab: anything with `encode(str) -> ids` and `decode(ids) -> str` (a seqio vocabulary); the
  text is decoded by `continuation`. A prompt
  longer than the context leaves room for loses its beginning (its end, where the code goes on,
  is kept), as evaluation harnesses do.
  """
  keep = decoder.max_prompt_len
  if keep <= 0:
    raise ValueError(
      f"sampling.max_new_tokens={decoder.sampling.max_new_tokens} leaves no room "
      f"for a prompt within the model's max_len {decoder.config.max_len}"
    )
  encoded = [list(vocab.encode(p))[-keep:] for p in prompts]
  outputs = decoder.generate(
    encoded,
    rng=rng,
    stop=(lambda row, new: any(s in continuation(vocab, encoded[row], new) for s in stop))
    if stop
    else None,
  )
  return [truncate(continuation(vocab, p, new), stop) for p, new in zip(encoded, outputs)]


def sampling_config(cfg: Any, eos_id: int) -> SamplingConfig:
  """A run config's `sampling` section, ending rows at `eos_id` (the vocabulary's end-of-text,
  `vocabularies.eot_id`)."""
  sampling = SamplingConfig.from_dict(dict(cfg.sampling.items()))
  return dataclasses.replace(sampling, eos_id=eos_id)


def load_decoder(checkpoint_dir: str, sampling: SamplingConfig, step: int | None = None) -> Decoder:
  """A decoder over the params of `checkpoint_dir` (a workdir with checkpoints/<step>/)."""
  model_config, params = checkpoint.restore_params(
    files.existing(checkpoint_dir, "checkpoint"), step
  )
  return Decoder(model_config, params, sampling)
