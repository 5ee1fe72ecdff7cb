"""Batches for the trainer: each process builds only its own rows of the global batch.

Sources (`cfg.data.source`):
  seqio     -- the registered mixture `cfg.data.mixture` (data_pipeline.tasks) over
               `cfg.data.dir`, read with one seqio.ShardInfo per process, shuffled with the
               run's seed, packed the paper's way (data_pipeline.packing). A run started at
               step k skips exactly k batches of the same deterministic stream.
  synthetic -- arithmetic progressions mod vocab (row i: a_i, a_i + s_i, a_i + 2 s_i, ...):
               learnable from context, deterministic in (seed, step), independent of the number
               of processes and devices. For smoke tests and benchmarks.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import jax
import numpy as np
from etils import epath
from jax.sharding import NamedSharding


def process_rows(batch_sharding: NamedSharding, global_batch: int) -> slice:
  """The contiguous rows of the global batch that live on this process's devices."""
  indices = batch_sharding.addressable_devices_indices_map((global_batch, 1)).values()
  blocks = sorted({index[0].indices(global_batch)[:2] for index in indices})
  for (_, stop), (start, _) in zip(blocks, blocks[1:]):
    if start != stop:
      raise ValueError(
        "this process's batch rows are not contiguous: the mesh's device order "
        "does not group devices by process"
      )
  return slice(blocks[0][0], blocks[-1][1])


def synthetic_rows(
  seed: int, step: int, rows: slice, global_batch: int, seq_len: int, vocab_size: int
) -> dict[str, np.ndarray]:
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


def _synthetic(cfg: Any, rows: slice, start_step: int) -> Iterator[dict]:
  step = start_step
  while True:
    yield synthetic_rows(
      int(cfg.train.seed),
      step,
      rows,
      int(cfg.train.global_batch),
      int(cfg.train.seq_len),
      int(cfg.model.vocab_size),
    )
    step += 1


def seqio_dataset(
  data: Any,
  seq_len: int,
  rows_per_batch: int,
  seed: int,
  split: str,
  shard_index: int = 0,
  num_shards: int = 1,
  num_epochs: int | None = None,
):
  """Packed batches [rows_per_batch, seq_len] of a registered phi-1 mixture, as a tf.data set."""
  # seqio and TensorFlow are heavy: only runs that read real data pay for them
  import seqio
  import tensorflow as tf

  from phi_jax import packing, tasks

  tf.config.set_visible_devices([], "GPU")  # TF must not take accelerator memory from JAX
  data_dir = data.dir or os.environ.get("PHI1_DATA_DIR", tasks.DEFAULT_DATA_DIR)
  if not epath.Path(data_dir).exists():
    raise FileNotFoundError(
      f"data.dir={data_dir} does not exist: build it with `python -m data_pipeline.build "
      f"--config=CONFIG --out={data_dir}`, or set --config.data.dir to a built corpus"
    )
  tasks.register(
    data_dir,
    mask_prompt=data.mask_prompt,
    pretrain_rates=dict(data.pretrain_rates) or None,
    finetune_rates=dict(data.finetune_rates) or None,
  )
  dataset = seqio.get_mixture_or_task(data.mixture).get_dataset(
    None,
    split=split,
    shuffle=True,
    seed=seed,
    num_epochs=num_epochs,
    shard_info=seqio.ShardInfo(shard_index, num_shards),
    use_cached=data.use_cached,
  )
  return packing.pack(dataset, seq_len).batch(rows_per_batch, drop_remainder=True)


def _seqio(cfg: Any, rows: slice, start_step: int) -> Iterator[dict]:
  dataset = seqio_dataset(
    cfg.data,
    int(cfg.train.seq_len),
    rows.stop - rows.start,
    int(cfg.train.seed),
    cfg.data.split,
    jax.process_index(),
    jax.process_count(),
  )
  return dataset.skip(start_step).prefetch(2).as_numpy_iterator()


_SOURCES = {"synthetic": _synthetic, "seqio": _seqio}


def stream_signature(cfg: Any) -> dict:
  """The settings that fix the stream of global batches. Batch k of two runs with equal
  signatures is the same, so a run resumed at step k continues at the exact next example."""
  signature = {
    "source": cfg.data.source,
    "seed": int(cfg.train.seed),
    "global_batch": int(cfg.train.global_batch),
    "seq_len": int(cfg.train.seq_len),
  }
  if cfg.data.source == "synthetic":
    signature["vocab_size"] = int(cfg.model.vocab_size)
  else:  # each process reads its own seqio shard: the process count changes the stream
    signature.update(
      {key: cfg.data[key] for key in ("dir", "mixture", "split", "mask_prompt", "use_cached")},
      pretrain_rates=dict(cfg.data.pretrain_rates),
      finetune_rates=dict(cfg.data.finetune_rates),
      process_count=jax.process_count(),
    )
  return signature


def batches(cfg: Any, batch_sharding: NamedSharding, start_step: int) -> Iterator[dict]:
  """Global, sharded batches for steps start_step, start_step + 1, ..."""
  if cfg.data.source not in _SOURCES:
    raise ValueError(f"data.source={cfg.data.source!r} is not one of {sorted(_SOURCES)}")
  global_shape = (int(cfg.train.global_batch), int(cfg.train.seq_len))
  rows = process_rows(batch_sharding, global_shape[0])
  for local in _SOURCES[cfg.data.source](cfg, rows, start_step):
    yield {
      key: jax.make_array_from_process_local_data(batch_sharding, value, global_shape)
      for key, value in local.items()
    }
