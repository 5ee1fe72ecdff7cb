"""Serving throughput: phi_jax.serve with 1, 4 and 16 concurrent clients vs one offline batch.

    PYTHONPATH=. python bench/serve_throughput.py [--prompts=16] [--prompt=128] [--new=64] \
        [--repeats=3] [--window_ms=10] [--out=result.json]

The model is the ~58M one of bench/train_throughput.py (`MODEL`), random params (seed 0), fp32,
on one CPU device. Every configuration decodes the same --prompts prompts of --prompt random
tokens, greedily, exactly --new new tokens each (end-of-text disabled), on one
`phi_jax.decode.Decoder` whose prompt bucket is --prompt and whose decode chunk is --new tokens:

* offline: `Decoder.generate` of all the prompts in one batch;
* serve with C clients: a `phi_jax.serve.Server` on loopback (max_batch = --prompts, batch
  window --window_ms, restarting with each arrival) and C threads, each an `openai` client sending its share of the prompts
  one request after another (C = 1, 4, 16): the time from the first request to the last answer.

The vocabulary writes token ids as decimal words ("17 4051 ..."), so the bench measures HTTP,
batching and decoding rather than a tokenizer. Warm-up compiles every batch shape the server can
form (1, 2, 4, ... rows) and the offline batch, and is excluded. Repetitions run the four
configurations in an order that rotates every repetition, so that load from other processes hits
all alike. Reported: each configuration's median time, new tokens/s, its ratio to offline (of
the medians, and the median of the per-repetition ratios), and the batches the server ran.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import threading
import time
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")  # CPU benchmark: never probe for accelerators

import jax  # noqa: E402
import numpy as np  # noqa: E402
import openai  # noqa: E402
import starlette  # noqa: E402
import uvicorn  # noqa: E402
from train_throughput import MODEL  # noqa: E402  (bench/ is on sys.path: the script's folder)

from phi_jax import decode, serve, sharding  # noqa: E402
from phi_jax import model as model_lib  # noqa: E402

CLIENTS = (1, 4, 16)


class IdsAsText:
  """A vocabulary whose text is the token ids as decimal words."""

  def encode(self, text: str) -> list[int]:
    return [int(word) for word in text.split()]

  def decode(self, ids) -> str:
    return "".join(f" {int(i)}" for i in ids)


def serve_run(server: serve.Server, prompts: list[str], clients: int, new: int) -> float:
  """Seconds for `clients` threads to get all `prompts` continued, each thread its share."""
  shares = [prompts[i::clients] for i in range(clients)]
  barrier = threading.Barrier(clients + 1)
  errors = []

  def client(share):
    api = openai.OpenAI(base_url=server.url, api_key="none", max_retries=0, timeout=3600)
    barrier.wait()
    for prompt in share:
      response = api.completions.create(model=server.model, prompt=prompt, max_tokens=new)
      if response.usage.completion_tokens != new:
        errors.append(response.usage.completion_tokens)

  threads = [threading.Thread(target=client, args=(share,)) for share in shares]
  for t in threads:
    t.start()
  barrier.wait()
  start = time.perf_counter()
  for t in threads:
    t.join()
  elapsed = time.perf_counter() - start
  assert not errors, f"rows with other than {new} new tokens: {errors}"
  return elapsed


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--prompts", type=int, default=16)
  parser.add_argument("--prompt", type=int, default=128)
  parser.add_argument("--new", type=int, default=64)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--window_ms", type=float, default=10.0)
  parser.add_argument("--out", default="")
  args = parser.parse_args(argv)

  load_before = os.getloadavg()
  config = model_lib.ModelConfig(**MODEL)
  params = model_lib.init(config, jax.random.key(0))
  ids = np.random.default_rng(0).integers(3, config.vocab_size, (args.prompts, args.prompt))
  vocab = IdsAsText()
  prompts = [vocab.decode(row) for row in ids]
  sampling = decode.SamplingConfig(
    max_new_tokens=args.new, eos_id=-1, prompt_bucket=args.prompt, chunk_tokens=args.new
  )
  mesh = sharding.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, devices=jax.devices()[:1])
  decoder = decode.Decoder(config, params, sampling, mesh)

  warmup = time.perf_counter()
  offline_tokens = decoder.generate(ids.tolist())
  rows = 1
  while rows < args.prompts * 2:  # every batch shape the engine can form
    n = min(rows, args.prompts)
    decoder.generate(ids[:n].tolist(), rows=[decode.RowSampling()] * n)
    rows *= 2
  warmup = time.perf_counter() - warmup

  server = serve.Server(
    decoder,
    vocab,
    model_name="bench",
    max_batch=args.prompts,
    max_queue=args.prompts,
    batch_window_s=args.window_ms / 1000,
  )
  runs = {"offline": lambda: decoder.generate(ids.tolist())}
  for clients in CLIENTS:
    runs[f"serve_{clients}_clients"] = lambda c=clients: serve_run(server, prompts, c, args.new)
  times = {name: [] for name in runs}
  batches = {name: [] for name in runs}
  with server:
    # The server answers what offline decoding gives (greedy, the same decoder).
    api = openai.OpenAI(base_url=server.url, api_key="none", max_retries=0, timeout=3600)
    text = api.completions.create(model="bench", prompt=prompts[0], max_tokens=args.new)
    assert text.choices[0].text == vocab.decode(offline_tokens[0]), "server != offline"
    names = list(runs)
    for repeat in range(args.repeats):
      for name in names[repeat % len(names) :] + names[: repeat % len(names)]:
        before = server.engine.stats()["batches"]
        start = time.perf_counter()
        result = runs[name]()
        elapsed = result if isinstance(result, float) else time.perf_counter() - start
        times[name].append(elapsed)
        batches[name].append(server.engine.stats()["batches"] - before)
        print(f"repeat {repeat}: {name} {elapsed:.1f} s", file=sys.stderr, flush=True)

  tokens = args.prompts * args.new
  offline = times["offline"]
  report = {
    "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    "cpus": os.cpu_count(),
    "load_average_before_and_after": [load_before, os.getloadavg()],
    "model": f"bench/train_throughput.py MODEL, {model_lib.num_params(config):,} params, fp32",
    "prompts": args.prompts,
    "prompt_tokens": args.prompt,
    "new_tokens": args.new,
    "repeats": args.repeats,
    "batch_window_ms": args.window_ms,
    "warmup_s": warmup,
    "times_s": times,
    "median_s": {k: statistics.median(v) for k, v in times.items()},
    "tokens_per_s": {k: tokens / statistics.median(v) for k, v in times.items()},
    "ratio_to_offline": {
      k: statistics.median(offline) / statistics.median(v) for k, v in times.items()
    },
    "median_paired_ratio_to_offline": {
      k: statistics.median(o / t for o, t in zip(offline, v)) for k, v in times.items()
    },
    "batches_per_run": {k: v for k, v in batches.items() if k != "offline"},
    "versions": {
      "jax": jax.__version__,
      "openai": openai.__version__,
      "uvicorn": uvicorn.__version__,
      "starlette": starlette.__version__,
    },
  }
  text = json.dumps(report, indent=2)
  print(text)
  if args.out:
    Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
  main()
