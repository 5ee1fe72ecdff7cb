"""Batches for the trainer: each process builds only its own rows of the global batch.

Sources (`cfg.data.source`):
  seqio     -- the registered mixture `cfg.data.mixture` (phi_jax.tasks) over `cfg.data.dir`,
               read by random access from the build's records (phi_jax.records): global row g
               of step s (g = s * global_batch + i) is a pure function of (built data,
               mixture, seed, g): its task from phi_jax.mixture, its tokens from that task's
               packed stream (phi_jax.packing). Reaching step s costs the same for every s, and
               the rows do not depend on the number of processes or the mesh: a run resumes at
               any step on any number of hosts with the same global batches.
  synthetic -- arithmetic progressions mod vocab (row i: a_i, a_i + s_i, a_i + 2 s_i, ...):
               learnable from context, deterministic in (seed, step), independent of the number
               of processes and devices. For smoke tests and benchmarks.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator
from typing import Any

import jax
import numpy as np
from absl import logging
from jax.sharding import NamedSharding

from phi_jax import mixture, packing, records


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


def data_dir(data: Any) -> str:
  """`data.dir`, or $PHI1_DATA_DIR, or the default."""
  from phi_jax import tasks  # seqio and TensorFlow: only runs that read real data load them

  return data.dir or os.environ.get("PHI1_DATA_DIR", tasks.DEFAULT_DATA_DIR)


def _register(data: Any, directory: str) -> None:
  from phi_jax import tasks  # seqio and TensorFlow: only runs that read real data load them

  tasks.register(
    directory,
    mask_prompt=data.mask_prompt,
    pretrain_rates=dict(data.pretrain_rates) or None,
    finetune_rates=dict(data.finetune_rates) or None,
  )


def mixture_of(
  data: Any, seed: int, held_out_split: str = ""
) -> tuple[list[str], mixture.Interleave]:
  """The tasks of the registered mixture `data.mixture` with a positive rate, and which of them
  each row comes from. The seqio registry stays the definition of the mixture: tasks and rates.
  For a `held_out_split`, tasks with no documents in it are left out (a small synthetic part
  may have none), the rest keep their relative rates."""
  import seqio  # (loaded with phi_jax.tasks, by runs that read real data)

  provider = seqio.get_mixture_or_task(data.mixture)
  if isinstance(provider, seqio.Mixture):
    members = sorted((task.name, provider.get_rate(task)) for task in provider.tasks)
  else:
    members = [(provider.name, 1.0)]
  members = [(name, rate) for name, rate in members if rate > 0]
  if held_out_split:
    held = [m for m in members if records.documents_in(data_dir(data), m[0], held_out_split)]
    left_out = sorted({name for name, _ in members} - {name for name, _ in held})
    if held and left_out:
      logging.warning(
        "%s has no %s documents: the held-out mixture leaves it out", left_out, held_out_split
      )
    members = held or members  # none at all: records.Documents names the problem
  return [name for name, _ in members], mixture.Interleave([rate for _, rate in members], seed)


class MixtureRows:
  """Row g of a seqio mixture's endless stream of packed rows, by random access
  (`rows[g]`): the mixture's task for g (phi_jax.mixture), then that task's row (phi_jax.packing)."""

  def __init__(self, data: Any, seq_len: int, seed: int, split: str):
    self.data_dir = data_dir(data)
    self.built = records.require_built(self.data_dir)
    _register(data, self.data_dir)
    held_out = split if split != "train" else ""
    self.task_names, self.interleave = mixture_of(data, seed, held_out)
    self.streams = [
      packing.Stream(
        records.Documents(self.data_dir, name, split),
        seq_len,
        seed=int.from_bytes(hashlib.sha256(f"{seed}/{name}".encode()).digest()[:8], "little"),
        mask_prompt=data.mask_prompt,
      )
      for name in self.task_names
    ]

  def __getitem__(self, row: int) -> dict[str, np.ndarray]:
    task, task_row = self.interleave.locate(row)
    return self.streams[task].row(task_row)


class _ProcessRow:
  """Element k of a process's reading order -> its global row (picklable for reader processes)."""

  def __init__(self, source: MixtureRows, rows: slice, global_batch: int, start_step: int):
    self.source, self.rows, self.global_batch, self.start_step = (
      source,
      rows,
      global_batch,
      start_step,
    )

  def __call__(self, k: int) -> dict[str, np.ndarray]:
    step, row = divmod(int(k), self.rows.stop - self.rows.start)
    return self.source[(self.start_step + step) * self.global_batch + self.rows.start + row]


def read_rows(data: Any, source: MixtureRows, rows: slice, global_batch: int, start_step: int):
  """This process's rows of steps start_step, start_step + 1, ..., batched, read ahead by
  `data.read_threads` threads (in `data.read_processes` processes when > 0) with Grain.

  Elements are whole batches, batched before the threads: mp_prefetch deals the elements out to
  its processes, so each reads whole steps and batch k is step start_step + k's rows for any
  number of processes (rows dealt out and batched after would mix steps). And Grain's prefetch
  scans its ready elements on every `next()`: a buffer of a few batches keeps that short, where
  one of many rows held the trainer's thread (docs/measurements.md)."""
  import grain  # only runs that read real data load it

  threads = int(data.read_threads)
  dataset = (
    grain.MapDataset.range(0, 1 << 62)
    .map(_ProcessRow(source, rows, global_batch, start_step))
    .batch(rows.stop - rows.start, drop_remainder=True)
    .to_iter_dataset(grain.ReadOptions(num_threads=threads, prefetch_buffer_size=max(2, threads)))
  )
  if int(data.read_processes) > 0:
    from absl import flags  # grain 0.2.18's workers read an absl flag (google/grain#1355)

    if not flags.FLAGS.is_parsed():  # train.run from Python or a notebook: nothing parsed them
      flags.FLAGS.mark_as_parsed()
    dataset = dataset.mp_prefetch(
      grain.MultiprocessingOptions(num_workers=int(data.read_processes))
    )
  return iter(dataset)


def _seqio(cfg: Any, rows: slice, start_step: int) -> Iterator[dict]:
  source = MixtureRows(cfg.data, int(cfg.train.seq_len), int(cfg.train.seed), cfg.data.split)
  return read_rows(cfg.data, source, rows, int(cfg.train.global_batch), start_step)


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
  else:  # rows are global (never per process): the process count is not part of it
    signature.update(
      {key: cfg.data[key] for key in ("dir", "mixture", "split", "mask_prompt")},
      pretrain_rates=dict(cfg.data.pretrain_rates),
      finetune_rates=dict(cfg.data.finetune_rates),
      records=records.fingerprint(data_dir(cfg.data)),
    )
  return signature


def mixture_shares(cfg: Any) -> Callable[[int], dict[str, float]]:
  """steps -> each task's realised share of the rows of the first `steps` global batches, as
  metrics `mixture/<task>` (none for synthetic data)."""
  if cfg.data.source != "seqio":
    return lambda steps: {}
  _register(cfg.data, data_dir(cfg.data))
  names, interleave = mixture_of(cfg.data, int(cfg.train.seed))
  global_batch = int(cfg.train.global_batch)

  def shares(steps: int) -> dict[str, float]:
    rows = max(steps * global_batch, 1)
    return {f"mixture/{n}": c / rows for n, c in zip(names, interleave.counts(rows))}

  return shares


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
