"""Input pipeline vs trainer: packed tokens/s the seqio reader delivers per host, what the trainer
consumes, and the time to the first batch when a run resumes, side by side in one run.

    PYTHONPATH=. python bench/pipeline_throughput.py [--data_dir=DIR] [--seconds=4] \
        [--repeats=9] [--process_repeats=3] [--out=result.json]

Reader: phi_jax.input_pipeline's seqio source (`MixtureRows` + `read_rows`, as `_seqio` builds
it: ArrayRecord documents -> phi_jax.packing rows -> Grain batches read ahead), the phi1_pretrain
mixture of a built corpus, for two batch shapes:
  tiny        configs/tiny.py, 16 x 256: all 16 rows (one host);
  phi1_small  configs/phi1_small.py, 1024 x 2048 global: the 256 rows that host 0 of a 4-host
              slice reads (--hosts);
each with 1 and 2 reading threads in the trainer's process (`data.read_threads`) and with 2
reading processes of 1 thread each (`data.read_processes`, Grain mp_prefetch). Delivered
tokens/s: rows x seq_len of numpy batches per second, over --seconds after the first two
batches, by a consumer that does nothing else. "next() when ahead": the median time `next()`
then holds the trainer's thread when the reader had --step_seconds (a trainer step; the
consumer sleeps) to read ahead since the last batch: the reader's own cost on the thread that
dispatches the steps. "same batches": each reader's first batch at every resume step equals
the 1-thread reader's (the batch of a step must not depend on how it is read).

Trainer consumption: tiny: jitted train steps on this machine (synthetic batches, the first,
compiling step excluded). phi1_small: NOT measured (on a 2-core CPU its first 1 x 2048 step,
fp32, compiled and ran for 9 minutes, the second for over 6); estimated per host from FLOPs per token (phi_jax.metrics.
flops_per_token) at --host_flops x --mfu (default: a host of 8 H200s at bf16 dense peak, 40% MFU).

Time to the first batch when resuming at step 0, 1,000 and 1,000,000 (median of --repeats, of
--process_repeats for the readers with processes; the steps interleaved, so that load from
other processes hits all alike):
a fresh reader for that start step, then `next()`. Included: `MixtureRows` (task registration,
the mixture's rates, each task's index files), the Grain pipeline and its threads (or the
spawn of its reader processes, which import phi_jax), the epoch permutations the first rows
touch, reading and packing the rows of the first batch. Excluded: the one-time process start-up
that no step changes (importing seqio / TensorFlow / Grain, the first registration of the tasks
with its vocabulary load), done by a warm-up reader first and reported separately; the
host-to-device copy `input_pipeline.batches` adds. The corpus files are in the page cache.

Old way (extra rows, tiny shape only): seqio's `get_dataset` of the mixture (shuffled, seeded,
on the fly, and from the build's seqio cache when it has one: corpus.cache), packed with tf.data as the deleted
phi_jax.packing.pack did (its 20 lines re-created here), resumed by `skip(step)`, which reads
every earlier row: timed once at steps 0 and --old_step (100), extrapolated linearly to 1,000 and
1,000,000 (marked *).

Without --data_dir a small corpus is built first with data_pipeline.build's own stages
(configs/tiny.py, corpus.max_files=300, quality_model_steps=20; about 3.5 minutes on 2 cores,
outside the measurements). The measurements take about 5 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform
import statistics
import tempfile
import time
from importlib import metadata

import numpy as np

# CPU benchmark: never probe for accelerators (also in Grain's reader processes, which spawn).
os.environ.setdefault("JAX_PLATFORMS", "cpu")

RESUME_STEPS = (0, 1_000, 1_000_000)
READERS = {  # label -> (data.read_threads, data.read_processes)
  "1 thread": (1, 0),
  "2 threads": (2, 0),
  "2 processes": (1, 2),
}


def shapes(hosts: int) -> dict:
  """name -> (config, rows this host reads, label)."""
  # phi_jax (and with it JAX) loads here, after the environment above is set
  from phi_jax import configs

  tiny, small = configs.get("tiny"), configs.get("phi1_small")
  small_rows = int(small.train.global_batch) // hosts
  return {
    "tiny": (tiny, slice(0, int(tiny.train.global_batch)), f"tiny {tiny.train.global_batch}"),
    "phi1_small": (
      small,
      slice(0, small_rows),
      f"phi1_small {small_rows} of {small.train.global_batch} (host 0 of {hosts})",
    ),
  }


# --------------------------------------------------------------------------- new reader


def open_reader(cfg, rows: slice, step: int, threads: int, processes: int):
  """This host's batches from `step` on, as `input_pipeline._seqio` builds them."""
  from phi_jax import input_pipeline  # (see shapes)

  cfg.data.update(read_threads=threads, read_processes=processes)
  source = input_pipeline.MixtureRows(
    cfg.data, int(cfg.train.seq_len), int(cfg.train.seed), cfg.data.split
  )
  return input_pipeline.read_rows(cfg.data, source, rows, int(cfg.train.global_batch), step)


def first_batch_seconds(open_fn, step: int, batches: dict | None = None):
  """(seconds to construct a reader at `step` and get its first batch, the open reader); the
  batch goes into `batches[step]`."""
  start = time.perf_counter()
  reader = open_fn(step)
  batch = next(reader)
  seconds = time.perf_counter() - start
  if batches is not None:
    batches.setdefault(step, batch)
  return seconds, reader


def tokens_per_second(reader, tokens_per_batch: int, seconds: float) -> float:
  next(reader)  # a second untimed batch: mp_prefetch's second worker has started too
  batches, start = 0, time.perf_counter()
  while batches < 3 or time.perf_counter() - start < seconds:
    next(reader)
    batches += 1
  return batches * tokens_per_batch / (time.perf_counter() - start)


def blocked_seconds(reader, step_seconds: float, samples: int = 5) -> float:
  """Median time `next()` holds the caller when the reader had a trainer step's time to read
  ahead: the consumer sleeps `step_seconds` (releasing the GIL, as a thread waiting on the
  accelerator does), then takes a batch."""
  waits = []
  for _ in range(samples):
    time.sleep(step_seconds)
    start = time.perf_counter()
    next(reader)
    waits.append(time.perf_counter() - start)
  return statistics.median(waits)


def measure_reader(open_fn, tokens_per_batch: int, repeats: int, args) -> dict:
  """Time to first batch at each resume step (median of repeats, steps interleaved) and the
  delivered tokens/s of the first step-0 reader."""
  firsts, throughput, batches = {step: [] for step in RESUME_STEPS}, None, {}
  for _ in range(repeats):
    for step in RESUME_STEPS:
      seconds, reader = first_batch_seconds(open_fn, step, batches)
      firsts[step].append(seconds)
      if throughput is None:
        throughput = tokens_per_second(reader, tokens_per_batch, args.seconds)
        blocked = blocked_seconds(reader, args.step_seconds)
      reader.close()
      del reader
      gc.collect()
  first = {step: statistics.median(values) for step, values in firsts.items()}
  return {
    "tokens_per_s": throughput,
    "blocked_s": blocked,
    "first_batch_s": first,
    "first_batch_samples_s": firsts,
    "first_batch_ratio": first[RESUME_STEPS[-1]] / first[0],
    "batches": batches,
  }


def same_batches(a: dict, b: dict) -> bool:
  return all(
    a[step].keys() == b[step].keys()
    and all(np.array_equal(a[step][key], b[step][key]) for key in a[step])
    for step in a
  )


# --------------------------------------------------------------------------- old way


def old_pack(dataset, seq_len: int):
  """The deleted phi_jax.packing.pack (tf.data): per-document examples -> packed rows."""
  import tensorflow as tf  # only the old-way rows load TensorFlow's tf.data

  def per_token(index, example):
    tokens = tf.cast(example["targets"], tf.int32)
    weights = example.get("loss_weights")
    weights = tf.ones_like(tokens, tf.float32) if weights is None else tf.cast(weights, tf.float32)
    document = tf.fill(tf.shape(tokens), tf.cast(index, tf.int32))
    return tf.data.Dataset.from_tensor_slices((tokens, weights, document))

  def row(tokens, weights, document):
    document = document[:-1]
    new_segment = tf.concat([[True], document[1:] != document[:-1]], axis=0)
    index = tf.range(tf.shape(document)[0])
    segment_start = tf.scan(tf.maximum, tf.where(new_segment, index, 0))
    return {
      "inputs": tokens[:-1],
      "targets": tokens[1:],
      "loss_weights": weights[1:],
      "segment_ids": tf.cumsum(tf.cast(new_segment, tf.int32)),
      "positions": index - segment_start,
    }

  stream = dataset.enumerate().flat_map(per_token).batch(seq_len + 1, drop_remainder=True)
  return stream.map(row, num_parallel_calls=tf.data.AUTOTUNE)


def open_old_reader(cfg, step: int, use_cached: bool):
  """The deleted `input_pipeline._seqio`: seqio get_dataset -> tf packing -> batch -> skip."""
  import seqio  # only the old-way rows load seqio's tf.data readers

  from phi_jax import input_pipeline  # (see shapes)

  input_pipeline._register(cfg.data, input_pipeline.data_dir(cfg.data))
  dataset = seqio.get_mixture_or_task(cfg.data.mixture).get_dataset(
    None,
    split=cfg.data.split,
    shuffle=True,
    seed=int(cfg.train.seed),
    shard_info=seqio.ShardInfo(0, 1),
    use_cached=use_cached,
  )
  dataset = old_pack(dataset, int(cfg.train.seq_len))
  dataset = dataset.batch(int(cfg.train.global_batch), drop_remainder=True)
  return _Closing(dataset.skip(step).prefetch(2).as_numpy_iterator())


class _Closing:
  def __init__(self, iterator):
    self.iterator = iterator

  def __next__(self):
    return next(self.iterator)

  def close(self):
    self.iterator = None


def measure_old_reader(cfg, use_cached: bool, args) -> dict:
  """As measure_reader, but resuming is skip(step), which reads every earlier row: it is timed
  at steps 0 and --old_step (one sample each) and extrapolated linearly to the other steps."""
  open_fn = lambda step: open_old_reader(cfg, step, use_cached)
  warm = open_fn(0)
  next(warm)  # one-time: seqio's and tf.data's graph machinery, as for the new reader
  warm.close()
  tokens = int(cfg.train.global_batch) * int(cfg.train.seq_len)
  seconds, reader = first_batch_seconds(open_fn, 0)
  measured = {0: seconds}
  throughput = tokens_per_second(reader, tokens, args.seconds)
  blocked = blocked_seconds(reader, args.step_seconds)
  reader.close()
  measured[args.old_step], reader = first_batch_seconds(open_fn, args.old_step)
  reader.close()
  per_step = (measured[args.old_step] - measured[0]) / args.old_step
  first = {step: measured[0] + per_step * step for step in RESUME_STEPS}
  return {
    "tokens_per_s": throughput,
    "blocked_s": blocked,
    "first_batch_s": first,
    "first_batch_measured_s": measured,
    "first_batch_extrapolated": [step for step in RESUME_STEPS if step not in measured],
    "first_batch_ratio": first[RESUME_STEPS[-1]] / first[0],
  }


# --------------------------------------------------------------------------- trainer


def trainer_tokens_per_second(cfg, steps: int) -> float:
  """Jitted train steps of `cfg` on synthetic batches on this machine (compilation excluded)."""
  import jax  # (see shapes)

  from phi_jax import input_pipeline, sharding, train_step  # (see shapes)

  cfg.data.source = "synthetic"
  mesh = sharding.make_mesh(cfg.mesh)
  trainer = train_step.make_trainer(cfg, mesh)
  state = trainer.init_state(jax.random.key(0))
  batches = input_pipeline.batches(cfg, trainer.batch_sharding, 0)
  ready = [next(batches) for _ in range(steps + 1)]
  state, metrics = trainer.step(state, ready[0])
  jax.block_until_ready(metrics)
  start = time.perf_counter()
  for batch in ready[1:]:
    state, metrics = trainer.step(state, batch)
  jax.block_until_ready(metrics)
  return steps * cfg.train.global_batch * cfg.train.seq_len / (time.perf_counter() - start)


def estimated_host_tokens_per_second(cfg, host_flops: float, mfu: float) -> tuple[float, float]:
  """(tokens/s one host's accelerators train at host_flops x mfu, FLOPs per token)."""
  from phi_jax import metrics  # (see shapes)
  from phi_jax import model as model_lib

  flops = metrics.flops_per_token(model_lib.as_model_config(cfg), int(cfg.train.seq_len))
  return host_flops * mfu / flops, flops


# --------------------------------------------------------------------------- report


def versions() -> dict:
  names = ("jax", "jaxlib", "grain", "array_record", "seqio", "tensorflow", "numpy")
  found = {}
  for name in names:
    try:
      found[name] = metadata.version(name.replace("_", "-"))
    except metadata.PackageNotFoundError:
      found[name] = metadata.version(name)
  return {"python": platform.python_version(), **found}


def table(report) -> str:
  tiny = report["trainer_tokens_per_s"]["tiny"]
  small = report["trainer_tokens_per_s"]["phi1_small_host_estimated"]
  s0, s1, s2 = (f"{step:,}" for step in RESUME_STEPS)
  startup = f"{report['startup_s']:.1f} s"
  if report["built_here"]:
    startup = "done by the corpus build in this process"
  load = ", ".join(f"{x:.1f}" for x in report["load_average"])
  lines = [
    f"phi1_pretrain mixture of {report['data_dir']} ({report['corpus_tokens']:,} training "
    f"tokens); {report['date']}; {report['cores']} cores, load average {load} at the end; "
    f"one-time process start-up (imports, first task registration): {startup}, not in the "
    f"first-batch times (medians of {report['repeats']}, {report['process_repeats']} with "
    "processes)",
    "",
    f"| rows/host x seq_len | source | tokens/s | x tiny trainer (>= 10) | x phi1_small host "
    f"(est.) | next() when ahead (ms) | same batches | 1st batch @{s0} (s) | @{s1} (s) | @{s2} (s) | @{s2} / @{s0} (<= 2) |",
    "|---|---|---|---|---|---|---|---|---|---|---|",
  ]
  for row in report["rows"]:
    tokens, trainer = row["tokens_per_s"], row.get("trainer")
    cells = [f"{tokens:,.0f}", "", ""]
    if trainer != "phi1_small":
      cells[1] = f"{tokens / tiny:,.1f}"
    if row["shape"].startswith("phi1_small") and trainer != "tiny":
      cells[2] = f"{tokens / small:,.2f}"
    cells.append(f"{row['blocked_s'] * 1e3:,.1f}" if "blocked_s" in row else "")
    cells.append({True: "yes", False: "**no**", None: ""}[row.get("same_batches")])
    first = row.get("first_batch_s", {})
    guessed = row.get("first_batch_extrapolated", [])
    cells += [f"{first[k]:,.3f}" + "*" * (k in guessed) if first else "" for k in RESUME_STEPS]
    cells.append(f"{row['first_batch_ratio']:,.2f}" if first else "")
    lines.append(
      f"| {row['shape']} x {row['seq_len']} | {row['source']} | " + " | ".join(cells) + " |"
    )
  lines += [
    "",
    f"phi1_small host consumption (est.): {report['host_flops']:.3g} FLOP/s x "
    f"{report['mfu']:.0%} MFU / {report['phi1_small_flops_per_token']:.3g} FLOP/token. "
    "same batches: the first batch at each resume step equals the 1-thread reader's. "
    f"next() when ahead: median wait for a batch after sleeping {report['step_seconds']} s (a "
    "trainer step) since the last one. "
    f"* extrapolated linearly from steps 0 and {report['old_step']:,} (skip(step) reads every "
    "earlier row)",
  ]
  return "\n".join(lines)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--data_dir", default="", help="a built corpus (default: build one)")
  parser.add_argument("--seconds", type=float, default=4.0, help="timed reading per reader")
  parser.add_argument("--step_seconds", type=float, default=0.4, help="a step, for next() ahead")
  parser.add_argument("--repeats", type=int, default=9, help="first-batch samples per step")
  parser.add_argument("--process_repeats", type=int, default=3, help="the same, with processes")
  parser.add_argument("--steps", type=int, default=10, help="timed tiny train steps")
  parser.add_argument("--hosts", type=int, default=4, help="hosts sharing phi1_small's batch")
  parser.add_argument("--host_flops", type=float, default=8 * 989e12, help="peak FLOP/s a host")
  parser.add_argument("--mfu", type=float, default=0.4)
  parser.add_argument("--old_step", type=int, default=100, help="old way: resume step timed")
  parser.add_argument("--skip_old", action="store_true", help="no old-way (seqio + tf) rows")
  parser.add_argument("--out", default="", help="also write the JSON report here")
  args = parser.parse_args(argv)
  # Grain's mp_prefetch reads absl flags (as `python -m phi_jax.cli` has parsed them): their defaults
  from absl import flags

  flags.FLAGS(["pipeline_throughput"])

  from phi_jax import configs, files, input_pipeline, records  # (see shapes)

  built_here = not args.data_dir
  if built_here:
    from data_pipeline import build  # only a run without --data_dir builds

    args.data_dir = tempfile.mkdtemp(prefix="phi1_bench_data_")
    cfg = configs.get("tiny")
    cfg.logging.progress_bar = False
    # cache: seqio's cache layout too (optional in the build), for the old way's cached row
    cfg.corpus.update(max_files=300, quality_model_steps=20, cache=True)
    build.run(cfg, args.data_dir)
  args.data_dir = os.path.abspath(args.data_dir)
  cases = shapes(args.hosts)
  for cfg, _, _ in cases.values():
    cfg.data.update(source="seqio", dir=args.data_dir, mixture="phi1_pretrain")

  start = time.perf_counter()  # one-time start-up: imports, the first registration
  tiny_cfg, tiny_rows, _ = cases["tiny"]
  warm = open_reader(tiny_cfg, tiny_rows, 0, 1, 0)
  next(warm)
  warm.close()
  startup = time.perf_counter() - start

  rows = []
  for cfg, host_rows, label in cases.values():
    reference = None
    tokens_per_batch = (host_rows.stop - host_rows.start) * int(cfg.train.seq_len)
    for reader, (threads, processes) in READERS.items():
      open_fn = lambda step, c=cfg, r=host_rows, t=threads, p=processes: open_reader(
        c, r, step, t, p
      )
      repeats = args.process_repeats if processes else args.repeats
      result = measure_reader(open_fn, tokens_per_batch, repeats, args)
      batches = result.pop("batches")
      reference = reference or batches
      result["same_batches"] = same_batches(batches, reference)
      rows.append({"shape": label, "seq_len": int(cfg.train.seq_len), "source": reader, **result})
  old_ways = [] if args.skip_old else [False]
  if old_ways and files.done(args.data_dir, "cache") is not None:  # the build's seqio cache
    old_ways.append(True)
  for use_cached in old_ways:
    source = f"old: seqio {'cache' if use_cached else 'on the fly'} + tf"
    result = measure_old_reader(tiny_cfg, use_cached, args)
    rows.append(
      {"shape": cases["tiny"][2], "seq_len": int(tiny_cfg.train.seq_len), "source": source} | result
    )
  gc.collect()

  tiny_consumes = trainer_tokens_per_second(configs.get("tiny"), args.steps)
  small_cfg = cases["phi1_small"][0]
  small_host, small_flops = estimated_host_tokens_per_second(small_cfg, args.host_flops, args.mfu)
  rows.append(
    {
      "shape": cases["tiny"][2],
      "seq_len": int(tiny_cfg.train.seq_len),
      "source": "tiny trainer consumes (jitted steps, this CPU)",
      "trainer": "tiny",
      "tokens_per_s": tiny_consumes,
    }
  )
  rows.append(
    {
      "shape": cases["phi1_small"][2],
      "seq_len": int(small_cfg.train.seq_len),
      "source": "phi1_small trainer consumes per host (est.)",
      "trainer": "phi1_small",
      "tokens_per_s": small_host,
    }
  )
  summary = records.require_built(args.data_dir)
  task_names, _ = input_pipeline.mixture_of(tiny_cfg.data, int(tiny_cfg.train.seed))
  report = {
    "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    "cores": os.cpu_count(),
    "load_average": os.getloadavg(),
    "versions": versions(),
    "data_dir": args.data_dir,
    "corpus_tokens": sum(int(summary[name]["train_tokens"]) for name in task_names),
    "startup_s": startup,
    "repeats": args.repeats,
    "process_repeats": args.process_repeats,
    "built_here": built_here,
    "seconds": args.seconds,
    "hosts": args.hosts,
    "host_flops": args.host_flops,
    "mfu": args.mfu,
    "old_step": args.old_step,
    "step_seconds": args.step_seconds,
    "phi1_small_flops_per_token": small_flops,
    "trainer_tokens_per_s": {"tiny": tiny_consumes, "phi1_small_host_estimated": small_host},
    "rows": rows,
  }
  print(table(report))
  print(json.dumps(report))
  if args.out:
    with open(args.out, "w") as f:
      f.write(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
  main()
