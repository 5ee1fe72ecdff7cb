"""Batches for the trainer: each process builds only its own rows of the global batch.

Sources (`cfg.data.source`):
  synthetic -- arithmetic progressions mod vocab (row i: a_i, a_i + s_i, a_i + 2 s_i, ...):
               learnable from context, deterministic in (seed, step), independent of the number
               of processes and devices. For smoke tests and benchmarks.
"""

from __future__ import annotations

from typing import Any, Iterator

import jax
import numpy as np
from jax.sharding import NamedSharding


def process_rows(batch_sharding: NamedSharding, global_batch: int) -> slice:
  """The contiguous rows of the global batch that live on this process's devices."""
  indices = batch_sharding.addressable_devices_indices_map((global_batch, 1)).values()
  blocks = sorted({index[0].indices(global_batch)[:2] for index in indices})
  for (_, stop), (start, _) in zip(blocks, blocks[1:]):
    if start != stop:
      raise ValueError("this process's batch rows are not contiguous: the mesh's device order "
                       "does not group devices by process")
  return slice(blocks[0][0], blocks[-1][1])


def synthetic_rows(seed: int, step: int, rows: slice, global_batch: int, seq_len: int,
                   vocab_size: int) -> dict[str, np.ndarray]:
  rng = np.random.default_rng([seed, step])
  start = rng.integers(0, vocab_size, global_batch)[rows]
  stride = rng.integers(1, 4, global_batch)[rows]
  tokens = (start[:, None] + stride[:, None] * np.arange(seq_len + 1)) % vocab_size
  tokens = tokens.astype(np.int32)
  shape = tokens[:, 1:].shape
  return {
      "inputs": tokens[:, :-1],
      "targets": tokens[:, 1:],
      "loss_weights": np.ones(shape, np.float32),
      "segment_ids": np.ones(shape, np.int32),
      "positions": np.broadcast_to(np.arange(seq_len, dtype=np.int32), shape).copy(),
  }


def batches(cfg: Any, batch_sharding: NamedSharding, start_step: int) -> Iterator[dict]:
  """Global, sharded batches for steps start_step, start_step + 1, ..."""
  global_batch, seq_len = int(cfg.train.global_batch), int(cfg.train.seq_len)
  rows = process_rows(batch_sharding, global_batch)
  if cfg.data.source != "synthetic":
    raise ValueError(f"data.source={cfg.data.source!r} is not known; use 'synthetic'")
  step = start_step
  while True:
    local = synthetic_rows(int(cfg.train.seed), step, rows, global_batch, seq_len,
                           int(cfg.model.vocab_size))
    yield {key: jax.make_array_from_process_local_data(batch_sharding, value,
                                                       (global_batch, seq_len))
           for key, value in local.items()}
    step += 1
