"""Greedy decoding throughput, phi_jax's KV-cache decoder vs transformers' `generate`, one run.

    PYTHONPATH=. python bench/decode_throughput.py [--batch=8] [--prompt=128] [--new=256] \
        [--repeats=3] [--out=result.json]

Both decode the same weights: the model of configs/tiny.py with random params (seed 0), which
`phi_jax.hf_format.save_hf` exports and `transformers.PhiForCausalLM.from_pretrained` loads (torch
CPU, fp32, `use_cache=True`, greedy, exactly --new tokens: no end-of-text). phi_jax: one
`phi_jax.decode.Decoder` on a one-device mesh, greedy, the whole continuation in one decode chunk
(no host stop checks). Random prompts of --prompt tokens, --batch rows.

Compilation and torch's first call are warm-up and excluded. Repetitions alternate the two
(order flipping each time) so that load from other processes hits both alike; reported: the
median time, new tokens/s (batch x new / time), the ratio of medians, the median of the paired
per-repetition ratios, and how many generated tokens the two agree on (greedy decoding of the
same weights; fp32 rounding differences can flip a near-tie and the rows diverge from there).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--prompt", type=int, default=128)
  parser.add_argument("--new", type=int, default=256)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--out", default="")
  args = parser.parse_args(argv)

  import jax
  import numpy as np
  import torch
  import transformers

  from phi_jax import configs, decode, hf_format, sharding
  from phi_jax import model as model_lib

  config = model_lib.as_model_config(configs.get("tiny"))
  params = model_lib.init(config, jax.random.key(0))
  prompts = np.random.default_rng(0).integers(3, config.vocab_size, (args.batch, args.prompt))

  sampling = decode.SamplingConfig(
    max_new_tokens=args.new, eos_id=-1, prompt_bucket=args.prompt, chunk_tokens=args.new
  )
  mesh = sharding.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, devices=jax.devices()[:1])
  decoder = decode.Decoder(config, params, sampling, mesh)

  torch.set_num_threads(os.cpu_count() or 1)
  with tempfile.TemporaryDirectory() as export:
    hf_format.save_hf(config, params, export)
    hf = transformers.PhiForCausalLM.from_pretrained(export, torch_dtype=torch.float32).eval()
  hf_inputs = torch.tensor(prompts)

  def run_jax():
    return decoder.generate(prompts.tolist())

  def run_torch():
    with torch.no_grad():
      out = hf.generate(
        hf_inputs,
        attention_mask=torch.ones_like(hf_inputs),
        do_sample=False,
        max_new_tokens=args.new,
        min_new_tokens=args.new,
        use_cache=True,
        eos_token_id=None,
        pad_token_id=0,
      )
    return out[:, args.prompt :].tolist()

  start = time.perf_counter()
  jax_tokens = run_jax()
  warmup_jax = time.perf_counter() - start
  start = time.perf_counter()
  torch_tokens = run_torch()
  warmup_torch = time.perf_counter() - start

  times = {"phi_jax": [], "transformers": []}
  for repeat in range(args.repeats):
    order = [("phi_jax", run_jax), ("transformers", run_torch)]
    for name, fn in order[::-1] if repeat % 2 else order:
      start = time.perf_counter()
      fn()
      times[name].append(time.perf_counter() - start)

  tokens = args.batch * args.new
  agree = [
    next((i for i, (a, b) in enumerate(zip(x, y)) if a != b), len(x))
    for x, y in zip(jax_tokens, torch_tokens)
  ]
  report = {
    "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    "cpus": os.cpu_count(),
    "load_average": os.getloadavg(),
    "model": "configs/tiny.py",
    "batch": args.batch,
    "prompt_tokens": args.prompt,
    "new_tokens": args.new,
    "repeats": args.repeats,
    "warmup_s": {"phi_jax": warmup_jax, "transformers": warmup_torch},
    "median_s": {k: statistics.median(v) for k, v in times.items()},
    "tokens_per_s": {k: tokens / statistics.median(v) for k, v in times.items()},
    "ratio_of_medians": statistics.median(times["transformers"])
    / statistics.median(times["phi_jax"]),
    "median_paired_ratio": statistics.median(
      t / j for j, t in zip(times["phi_jax"], times["transformers"])
    ),
    "tokens_agreeing_before_first_difference": agree,
    "versions": {
      "jax": jax.__version__,
      "torch": torch.__version__,
      "transformers": transformers.__version__,
    },
  }
  text = json.dumps(report, indent=2)
  print(text)
  if args.out:
    Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
  main()
