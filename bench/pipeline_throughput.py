"""Input pipeline vs trainer: tokens/s delivered as packed batches, side by side in one run.

    python bench/pipeline_throughput.py [--data_dir=DIR] [--batches=50]

Measures, for configs/tiny.py's batch shape: (1) the phi1_pretrain mixture packed on the fly
(seqio preprocessing + tokenization each time), (2) the same from data_pipeline.build's seqio
cache, and (3) what the tiny train step consumes (tokens/s of jitted steps on this machine).
Without --data_dir a small corpus is built first (the build's own stages, a few hundred files).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import jax

from phi_jax import configs, input_pipeline, sharding, train_step


def pipeline_tokens_per_second(cfg, use_cached: bool, batches: int) -> float:
  data = cfg.data
  data.use_cached = use_cached
  dataset = input_pipeline.seqio_dataset(
    data, cfg.train.seq_len, cfg.train.global_batch, cfg.train.seed, "train"
  )
  iterator = dataset.as_numpy_iterator()
  next(iterator)  # start-up (graph building, file opening) is not throughput
  start = time.perf_counter()
  for _ in range(batches):
    next(iterator)
  return batches * cfg.train.global_batch * cfg.train.seq_len / (time.perf_counter() - start)


def trainer_tokens_per_second(cfg, steps: int) -> float:
  mesh = sharding.make_mesh(cfg.mesh)
  trainer = train_step.make_trainer(cfg, mesh)
  state = trainer.init_state(jax.random.key(0))
  cfg.data.source = "synthetic"
  batches = input_pipeline.batches(cfg, trainer.batch_sharding, 0)
  ready = [next(batches) for _ in range(steps + 1)]
  state, metrics = trainer.step(state, ready[0])
  jax.block_until_ready(metrics)
  start = time.perf_counter()
  for batch in ready[1:]:
    state, metrics = trainer.step(state, batch)
  jax.block_until_ready(metrics)
  return steps * cfg.train.global_batch * cfg.train.seq_len / (time.perf_counter() - start)


def main():
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--data_dir", default="")
  parser.add_argument("--batches", type=int, default=50)
  parser.add_argument("--steps", type=int, default=10)
  args = parser.parse_args()
  cfg = configs.get("tiny")
  cfg.logging.progress_bar = False
  if not args.data_dir:
    from data_pipeline import build

    args.data_dir = tempfile.mkdtemp(prefix="phi1_bench_data_")
    cfg.corpus.update(max_files=300, quality_model_steps=20)
    build.run(cfg, args.data_dir)
  cfg.data.update(source="seqio", dir=args.data_dir, mixture="phi1_pretrain")

  results = {
    "on_the_fly": pipeline_tokens_per_second(cfg, False, args.batches),
    "from_cache": pipeline_tokens_per_second(cfg, True, args.batches),
    "trainer_consumes": trainer_tokens_per_second(cfg, args.steps),
  }
  print(
    f"batch {cfg.train.global_batch} x {cfg.train.seq_len} tokens (configs/tiny.py), "
    f"{jax.device_count()} {jax.devices()[0].platform} device(s)\n"
  )
  print("| source | tokens/s | x trainer |\n|---|---|---|")
  for name, value in results.items():
    print(f"| {name} | {value:,.0f} | {value / results['trainer_consumes']:.1f} |")
  print(json.dumps(results))


if __name__ == "__main__":
  main()
