"""Greedy decoding throughput, phi_jax's KV-cache decoder vs transformers' `generate`, one run.

    PYTHONPATH=. python bench/decode_throughput.py [--model=bench58m] [--batch=1,8,32] \
        [--prompt=128] [--new=64] [--repeats=3] [--out=result.json]

Both decode the same weights: --model's architecture (`bench58m`: the ~58M phi of
bench/train_throughput.py, `tiny`: configs/tiny.py; bench/bench_models.py) with random params
(seed 0), which `phi_jax.hf_format.save_hf` exports and `transformers.PhiForCausalLM.
from_pretrained` loads (torch CPU, fp32, `use_cache=True`, greedy, exactly --new tokens: no
end-of-text). phi_jax: one `phi_jax.decode.Decoder` on a one-device mesh, greedy, the whole
continuation in one decode chunk (no host stop checks). Random prompts of --prompt tokens.

Each batch size of --batch is measured in turn. Compilation and torch's first call are warm-up
and excluded. A repetition times four runs: each side generating --new tokens and generating 1
token (the prefill; phi_jax's also runs one decode step, whose token is never emitted), in an
order that flips every repetition so that load from other processes hits both sides alike.
Reported per batch size: the median times, new tokens/s (batch x new / median time), the ratio of
medians and the median of the paired per-repetition ratios, the time per decode step ((full -
prefill) / (new - 1), per repetition, median), and how many generated tokens the two agree on
before their first difference per row (greedy decoding of the same weights; fp32 rounding can
flip a near-tie and the rows diverge from there).
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

from bench_models import MODELS

os.environ.setdefault("JAX_PLATFORMS", "cpu")

SIDES = ("phi_jax", "transformers")


def _batch_sizes(text: str) -> list[int]:
  return [int(b) for b in text.split(",")]


def _median_ratio(numerators, denominators):
  return statistics.median(n / d for n, d in zip(numerators, denominators))


def measure_batch(args, batch, config, params, hf, mesh):
  """The report of one batch size (see the module docstring)."""
  import numpy as np  # these imports wait for JAX_PLATFORMS, like main's
  import torch

  from phi_jax import decode

  prompts = np.random.default_rng(batch).integers(3, config.vocab_size, (batch, args.prompt))
  hf_inputs = torch.tensor(prompts)

  def jax_run(new):
    sampling = decode.SamplingConfig(
      max_new_tokens=new, eos_id=-1, prompt_bucket=args.prompt, chunk_tokens=new
    )
    decoder = decode.Decoder(config, params, sampling, mesh)
    return lambda: decoder.generate(prompts.tolist())

  def torch_run(new):
    def run():
      with torch.no_grad():
        out = hf.generate(
          hf_inputs,
          attention_mask=torch.ones_like(hf_inputs),
          do_sample=False,
          max_new_tokens=new,
          min_new_tokens=new,
          use_cache=True,
          eos_token_id=None,
          pad_token_id=0,
        )
      return out[:, args.prompt :].tolist()

    return run

  runs = {
    ("phi_jax", "full"): jax_run(args.new),
    ("phi_jax", "prefill"): jax_run(1),
    ("transformers", "full"): torch_run(args.new),
    ("transformers", "prefill"): torch_run(1),
  }
  warmup, tokens = {}, {}
  for key, run in runs.items():
    start = time.perf_counter()
    tokens[key] = run()
    warmup[key] = time.perf_counter() - start

  times = {key: [] for key in runs}
  for repeat in range(args.repeats):
    order = list(runs)
    for key in order[::-1] if repeat % 2 else order:
      start = time.perf_counter()
      runs[key]()
      times[key].append(time.perf_counter() - start)

  full = {side: times[side, "full"] for side in SIDES}
  step = {
    side: [(f - p) / max(args.new - 1, 1) for f, p in zip(full[side], times[side, "prefill"])]
    for side in SIDES
  }
  agree = [
    next((i for i, (a, b) in enumerate(zip(x, y)) if a != b), len(x))
    for x, y in zip(tokens["phi_jax", "full"], tokens["transformers", "full"])
  ]
  median = {key: statistics.median(t) for key, t in times.items()}
  return {
    "batch": batch,
    "load_average_after": os.getloadavg(),
    "warmup_s": {f"{side}/{what}": t for (side, what), t in warmup.items()},
    "median_s": {f"{side}/{what}": t for (side, what), t in median.items()},
    "tokens_per_s": {side: batch * args.new / median[side, "full"] for side in SIDES},
    "ratio_of_medians": median["transformers", "full"] / median["phi_jax", "full"],
    "median_paired_ratio": _median_ratio(full["transformers"], full["phi_jax"]),
    "decode_step_ms": {side: 1e3 * statistics.median(step[side]) for side in SIDES},
    "decode_step_paired_ratio": _median_ratio(step["transformers"], step["phi_jax"]),
    "tokens_agreeing_before_first_difference": agree,
  }


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--model", choices=sorted(MODELS), default="bench58m")
  parser.add_argument("--batch", type=_batch_sizes, default=[1, 8, 32])
  parser.add_argument("--prompt", type=int, default=128)
  parser.add_argument("--new", type=int, default=64)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--out", default="")
  args = parser.parse_args(argv)

  import jax
  import torch
  import transformers

  from phi_jax import configs, hf_format, sharding
  from phi_jax import model as model_lib

  cfg = configs.get("tiny")
  cfg.model.update(MODELS[args.model])
  config = model_lib.as_model_config(cfg)
  params = model_lib.init(config, jax.random.key(0))
  mesh = sharding.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, devices=jax.devices()[:1])

  torch.set_num_threads(os.cpu_count() or 1)
  with tempfile.TemporaryDirectory() as export:
    hf_format.save_hf(config, params, export)
    hf = transformers.PhiForCausalLM.from_pretrained(export, torch_dtype=torch.float32).eval()

  report = {
    "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    "cpus": os.cpu_count(),
    "load_average_at_start": os.getloadavg(),
    "model": args.model,
    "params": model_lib.num_params(config),
    "prompt_tokens": args.prompt,
    "new_tokens": args.new,
    "repeats": args.repeats,
    "versions": {
      "jax": jax.__version__,
      "torch": torch.__version__,
      "transformers": transformers.__version__,
    },
    "batches": [],
  }
  for batch in args.batch:
    report["batches"].append(measure_batch(args, batch, config, params, hf, mesh))
    print(json.dumps(report["batches"][-1]), flush=True)
  text = json.dumps(report, indent=2)
  print(text)
  if args.out:
    Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
  main()
