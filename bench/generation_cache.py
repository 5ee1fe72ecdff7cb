"""The response cache's effect on a rerun of synthetic-data generation, side by side in one run.

    PYTHONPATH=. python bench/generation_cache.py [--requests=64] [--new=64] [--repeats=3] \
        [--out=result.json]

The corpus build's generation layer (`data_pipeline.generation`: `OpenAIBackend`, 8 requests in
flight, and `ResponseCache`) asks `phi_jax.serve` on loopback for --requests completions of
--new tokens (greedy, end-of-text disabled) of distinct prompts, three ways:

* cold: an empty cache, as a first build (every request is sent);
* killed halfway: a cache holding the answers to every other prompt, as a rerun after a kill;
* rerun: the whole cache, as a rerun of a finished stage.

The model is configs/tiny.py's with random params, on one CPU device, and the vocabulary writes
token ids as decimal words (bench/serve_throughput.py's), so decoding is cheap: a real endpoint's
answers cost far more time and money than these, and the requests a rerun does not send are the
point. Warm-up (compiling every batch shape) is excluded; the three ways run in an order that
rotates each repetition. Reported: median seconds, requests the server received, and the ratio
of each way's time to the cold one.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")  # CPU benchmark: never probe for accelerators

import jax  # noqa: E402
import numpy as np  # noqa: E402
import openai  # noqa: E402
from serve_throughput import IdsAsText  # noqa: E402  (bench/ is on sys.path: the script's folder)

from data_pipeline import generation  # noqa: E402
from phi_jax import configs, decode, serve, sharding  # noqa: E402
from phi_jax import model as model_lib  # noqa: E402

WAYS = ("cold", "killed_halfway", "rerun")


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--requests", type=int, default=64)
  parser.add_argument("--new", type=int, default=64)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--out", default="")
  args = parser.parse_args(argv)

  load_before = os.getloadavg()
  config = model_lib.as_model_config(configs.get("tiny"))
  params = model_lib.init(config, jax.random.key(0))
  vocab = IdsAsText()
  ids = np.random.default_rng(0).integers(3, config.vocab_size, (args.requests, 32))
  requests = [
    generation.Request(
      vocab.decode(row), mode=generation.COMPLETIONS, max_tokens=args.new, temperature=0.0
    )
    for row in ids
  ]
  sampling = decode.SamplingConfig(max_new_tokens=args.new, eos_id=-1, prompt_bucket=32)
  mesh = sharding.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, devices=jax.devices()[:1])
  decoder = decode.Decoder(config, params, sampling, mesh)
  rows = 1
  while rows <= 16:  # every batch shape the server forms (max_batch 16)
    decoder.generate(ids[:rows].tolist(), rows=[decode.RowSampling()] * rows)
    rows *= 2

  server = serve.Server(decoder, vocab, model_name="bench", max_batch=16, max_queue=args.requests)
  backend = generation.OpenAIBackend(server.url, "bench", concurrency=8, timeout_s=600)
  times = {way: [] for way in WAYS}
  sent = {way: [] for way in WAYS}
  with server, tempfile.TemporaryDirectory(prefix="phi1_cache_bench_") as root:
    whole = generation.ResponseCache(Path(root) / "whole")
    outcomes = generation.generate(backend, whole, requests)  # warms the HTTP path too
    assert all(o.response for o in outcomes), [o.detail for o in outcomes if not o.response]
    keys = [generation.request_key(backend.identity, r) for r in requests]

    def prepared(way: str, repeat: int) -> generation.ResponseCache:
      cache = generation.ResponseCache(Path(root) / f"{way}-{repeat}")
      if way == "rerun":
        shutil.copytree(whole.directory, cache.directory)
      elif way == "killed_halfway":
        for key in keys[::2]:
          target = cache.directory / key[:2] / f"{key}.json"
          target.parent.mkdir(parents=True, exist_ok=True)
          shutil.copy(whole.directory / key[:2] / f"{key}.json", target)
      return cache

    for repeat in range(args.repeats):
      for way in WAYS[repeat % 3 :] + WAYS[: repeat % 3]:
        cache = prepared(way, repeat)
        before = server.engine.stats()["rows"]
        start = time.perf_counter()
        again = generation.generate(backend, cache, requests)
        times[way].append(time.perf_counter() - start)
        sent[way].append(server.engine.stats()["rows"] - before)
        assert [o.response.text for o in again] == [o.response.text for o in outcomes], way

  cold = statistics.median(times["cold"])
  result = {
    "date": datetime.date.today().isoformat(),
    "versions": {"jax": jax.__version__, "openai": openai.__version__},
    "python": sys.version.split()[0],
    "load_average": {"before": load_before, "after": os.getloadavg()},
    "settings": vars(args),
    "ways": {
      way: {
        "median_s": statistics.median(times[way]),
        "requests_sent": sent[way][0],
        "vs_cold": statistics.median(times[way]) / cold,
        "times_s": times[way],
      }
      for way in WAYS
    },
  }
  for way, row in result["ways"].items():
    print(
      f"{way:15s} {row['median_s']:7.3f} s  {row['requests_sent']:3d} requests sent  "
      f"{row['vs_cold']:.3f}x the cold run's time"
    )
  if args.out:
    Path(args.out).write_text(json.dumps(result, indent=2))
  return result


if __name__ == "__main__":
  main()
