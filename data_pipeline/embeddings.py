"""Text embeddings from a phi_jax model: the mean of its final hidden states over each text.

`embed_texts` runs the model jitted on fixed, bucketed shapes (`length_buckets`), with padding
masked out of the mean; `restore_checkpoint` and `CheckpointLoader` bring the model from a
phi_jax checkpoint workdir, local or remote; `byte_encode_fn` is a tokenizer-free encode_fn for
tests and quick runs.
"""

from __future__ import annotations

import functools
import os
import tempfile
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath

from phi_jax import checkpoint, files
from phi_jax import model as model_lib


def length_buckets(max_len: int, smallest: int = 32) -> tuple[int, ...]:
  """Padded lengths: powers of two from `smallest` below max_len, then max_len itself."""
  buckets = []
  length = smallest
  while length < max_len:
    buckets.append(length)
    length *= 2
  return tuple(buckets) + (max_len,)


@functools.lru_cache(maxsize=16)
def _pooled_hidden_fn(model_config):
  """jit(params, tokens, mask) -> mean of final hidden states over mask; one per config."""

  def pooled(params, tokens, mask):
    # Padding is segment 0: real tokens (segment 1) never attend to it; right padding and the
    # causal mask keep it out anyway.
    hidden = model_lib.forward(
      model_config, params, tokens, segment_ids=mask.astype(jnp.int32), return_hidden=True
    ).astype(jnp.float32)
    weights = mask.astype(jnp.float32)[..., None]
    count = jnp.maximum(weights.sum(axis=1), 1.0)
    return (hidden * weights).sum(axis=1) / count

  return jax.jit(pooled)


def embed_texts(
  model_config: Any,
  params: Any,
  encode_fn: Callable[[str], Sequence[int]],
  texts: Sequence[str],
  max_len: int = 512,
  batch_size: int = 8,
  buckets: Sequence[int] | None = None,
) -> np.ndarray:
  """float32 [len(texts), d_model]: each text's mean final-LayerNorm hidden state over its tokens.

  Texts are encoded with `encode_fn` (text -> token ids), cut to `max_len` tokens, sorted by
  length, and run `batch_size` at a time; every batch is padded to exactly `batch_size` rows and
  to the smallest of `buckets` (default `length_buckets(max_len)`) that holds its longest text,
  so the jitted forward compiles once per bucket. Padding is masked out of the mean, so a text's
  embedding does not depend on its batch. A text with no tokens gets the zero vector.
  """
  config = model_lib.portable(model_config)
  buckets = tuple(sorted(buckets)) if buckets else length_buckets(max_len)
  if buckets[-1] < max_len:
    raise ValueError(f"largest bucket {buckets[-1]} < max_len {max_len}")
  encoded = []
  for text in texts:
    ids = np.asarray(list(encode_fn(text))[:max_len], dtype=np.int64)
    if ids.size and (ids.min() < 0 or ids.max() >= config.vocab_size):
      raise ValueError(
        f"encode_fn produced token id {int(ids.max() if ids.max() >= 0 else ids.min())}"
        f" outside the model's vocabulary [0, {config.vocab_size})"
      )
    encoded.append(ids.astype(np.int32))
  out = np.zeros((len(texts), config.d_model), np.float32)
  fn = _pooled_hidden_fn(config)
  order = sorted(range(len(texts)), key=lambda i: len(encoded[i]))
  for start in range(0, len(order), batch_size):
    rows = order[start : start + batch_size]
    longest = max(len(encoded[i]) for i in rows)
    if longest == 0:
      continue
    length = next(b for b in buckets if b >= longest)
    tokens = np.zeros((batch_size, length), np.int32)
    mask = np.zeros((batch_size, length), bool)
    for r, i in enumerate(rows):
      tokens[r, : len(encoded[i])] = encoded[i]
      mask[r, : len(encoded[i])] = True
    pooled = np.asarray(fn(params, tokens, mask))
    out[rows] = pooled[: len(rows)]
  return out


def byte_encode_fn(vocab_size: int, max_len: int | None = None) -> Callable[[str], list[int]]:
  """A trivial byte-level encode_fn (UTF-8 bytes mod vocab_size), for tests and quick runs."""
  return functools.partial(_byte_encode, vocab_size=vocab_size, max_len=max_len)


def _byte_encode(text: str, vocab_size: int, max_len: int | None) -> list[int]:
  data = text.encode("utf-8")[:max_len]
  return [b % vocab_size for b in data]


def check_vocabulary_fits(
  vocab_size: int | None, model_config: Any, encoder: Any, model: Any
) -> None:
  """ValueError unless `encoder`'s `vocab_size` ids (None: unknown, not checked) fit the
  embedding table of `model`: an id past it has no embedding row."""
  model_vocab = model_lib.as_model_config(model_config).vocab_size
  if vocab_size is not None and vocab_size > model_vocab:
    raise ValueError(
      f"{encoder!r} has {vocab_size} token ids but the model from {model!r} embeds only "
      f"{model_vocab} (its vocab_size): encode documents with the model's own tokenizer "
      "(corpus.quality_tokenizer, or a tokenizer.json in the checkpoint workdir)"
    )


def restore_checkpoint(workdir: str, step: int | None = None) -> tuple[Any, Any]:
  """(model config, params) of a phi_jax checkpoint workdir (`DIR/checkpoints/<step>/`), local
  or remote, through `phi_jax.checkpoint.restore_params`. That reads local directories, so a
  remote workdir's `checkpoints/` (every step in it) is first copied to a local temporary one."""
  if not files.is_remote(workdir):
    return checkpoint.restore_params(workdir, step)
  with tempfile.TemporaryDirectory(prefix="phi1_quality_model_") as local:
    files.copy_tree(epath.Path(workdir) / "checkpoints", os.path.join(local, "checkpoints"))
    model_config, params = checkpoint.restore_params(local, step)
    return model_config, jax.block_until_ready(params)  # read before the copy is deleted


class CheckpointLoader:
  """A picklable model_loader for `data_pipeline.quality.Embed`: restores (model config, params) from a phi_jax
  checkpoint workdir, local or remote (`restore_checkpoint`), on each worker."""

  def __init__(self, workdir: str, step: int | None = None):
    self.workdir, self.step = workdir, step

  def __repr__(self):
    return f"CheckpointLoader({self.workdir!r})"

  def __call__(self):
    return restore_checkpoint(self.workdir, self.step)
