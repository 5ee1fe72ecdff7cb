"""Training throughput, phi_jax vs transformers' PhiForCausalLM, side by side on one machine.

    PYTHONPATH=. python bench/train_throughput.py [--steps=3] [--repeats=5] [--out=result.json]
    PYTHONPATH=. python bench/train_throughput.py --device=gpu --model=phi1_small \
        --attention=cudnn --no_segment_mask --scan_unroll=20 --loss_chunk=0 --batch=16 \
        --seq_len=2048 --torch_compile --torch_adamw=fused

On the CPU (the default) both frameworks train the same ~58M phi model (d_model 512, 8 layers,
8 heads x 64, MLP 2048, vocab 32000, rotary_dim 32, fp32, no dropout) on batch 8 x seq 512:

* phi_jax: the real train step, `phi_jax.train_step.make_trainer(cfg, mesh)` on a one-device
  mesh (jitted, state donated; AdamW + global-norm clipping from `cfg.optim`), with the CPU
  settings `model.attention=blockwise` and `train.loss_chunk=64` (`--attention`, `--loss_chunk`).
* torch: `transformers.PhiForCausalLM` built from the same architecture
  (`phi_jax.hf_format.config_to_hf`), `torch.optim.AdamW` with the same hyperparameters and
  weight-decay mask, forward -> cross-entropy -> `loss.backward()` -> `clip_grad_norm_` ->
  `optimizer.step()`, with as many torch threads as cores.

Each framework runs in its own worker process (so neither's thread pools or allocator touch the
other's; on a GPU they share the card but never compute at the same time), and the parent
alternates them: repetition r times `--steps` steps of one framework, then of the other (the
order flips every repetition), so CPU contention from other processes hits both alike. Warm-up steps (compilation included) are excluded. Reported: the median over
repetitions of the step time, tokens/s, MFU (PaLM FLOPs per token, `phi_jax.metrics.
flops_per_token`, over the jitted-matmul peak `phi_jax.metrics.measured_matmul_peak`, sampled
before and after every repetition, best sample kept: a sample taken while other processes run
reads low), the phi_jax / torch ratio of the median tokens/s, and the median of the per-repetition
(paired) ratios, which is steadier when the machine's load changes during the run.

`--device=gpu` runs both on the first NVIDIA GPU: `--model=phi1_small` is configs/phi1_small.py's
model (bf16 compute over fp32 params, dropout off), phi_jax with `model.attention=cudnn` (cuDNN
flash attention), torch with `torch.compile` and bf16 autocast over the same fp32 params. MFU's
denominator is then the chip's datasheet dense bf16 rate (`phi_jax.metrics`); the report also
gives a bf16 matmul measured on the card (random 8192 x 8192 operands) and MFU against it.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench_models import BENCH_58M

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("JAX_PLATFORMS", "cpu")  # CPU benchmark: never probe for accelerators


# --------------------------------------------------------------------------- shared setup


def build_cfg(args):
  """The phi_jax run config: configs/tiny.py with the 58M benchmark model, or
  configs/phi1_small.py's model without dropout (torch trains without it), with the benchmark's
  attention, batch and one-device mesh."""
  from phi_jax import configs

  if args.model == "phi1_small":
    cfg = configs.get("phi1_small")
    cfg.model.update(embed_dropout=0.0, resid_dropout=0.0, attn_dropout=0.0, remat="none")
  else:
    cfg = configs.get("tiny")
    cfg.model.update(BENCH_58M)
  cfg.model.update(attention=args.attention, mask_packed_segments=not args.no_segment_mask)
  if args.layers:
    cfg.model.n_layers = args.layers
  if args.scan_unroll:
    cfg.model.scan_unroll = args.scan_unroll
  cfg.mesh.update(data=1, fsdp=1, tensor=1)
  cfg.train.update(
    global_batch=args.batch, micro_batch=0, seq_len=args.seq_len, loss_chunk=args.loss_chunk
  )
  return cfg


def make_tokens(args, vocab_size):
  import numpy as np

  rng = np.random.RandomState(0)
  return rng.randint(0, vocab_size, (args.batch, args.seq_len + 1)).astype(np.int32)


# --------------------------------------------------------------------------- workers


class JaxRunner:
  name = "phi_jax"

  def __init__(self, args):
    import jax
    import jax.numpy as jnp
    import numpy as np

    from phi_jax import sharding, train_step

    self.jax = jax
    cfg = build_cfg(args)
    mesh = sharding.make_mesh(cfg.mesh, jax.devices()[:1])
    self.trainer = train_step.make_trainer(cfg, mesh)
    self.state = self.trainer.init_state(jax.random.key(0))
    tokens = make_tokens(args, cfg.model.vocab_size)
    shape = (args.batch, args.seq_len)
    host = {
      "inputs": tokens[:, :-1],
      "targets": tokens[:, 1:],
      "loss_weights": np.ones(shape, np.float32),
      "segment_ids": np.ones(shape, np.int32),
      "positions": np.broadcast_to(np.arange(args.seq_len, dtype=np.int32), shape),
    }
    self.batch = {
      k: jax.device_put(jnp.asarray(v), self.trainer.batch_sharding) for k, v in host.items()
    }
    self.info = {
      "jax": jax.__version__,
      "device": str(jax.devices()[0]),
      "attention": args.attention,
      "segment_mask": not args.no_segment_mask,
      "xla_flags": os.environ.get("XLA_FLAGS", ""),
    }

  def steps(self, n):
    start = time.perf_counter()
    for _ in range(n):
      self.state, metrics = self.trainer.step(self.state, self.batch)
    loss = float(metrics["loss"])  # blocks on the last step
    return time.perf_counter() - start, loss


class TorchRunner:
  name = "torch"

  def __init__(self, args):
    import torch
    import transformers

    from phi_jax import hf_format
    from phi_jax import model as model_lib

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    self.torch = torch
    cfg = build_cfg(args)
    model_config = model_lib.as_model_config(cfg)
    hf = hf_format.config_to_hf(model_config, "float32")
    hf_config = transformers.PhiConfig(**{k: v for k, v in hf.items() if k != "architectures"})
    hf_config._attn_implementation = args.torch_attention
    hf_config.use_cache = False
    device = "cuda" if args.device == "gpu" else "cpu"
    self.model = transformers.PhiForCausalLM(hf_config).float().to(device).train()
    # phi_jax's mixed precision: fp32 params, matmuls in the model's compute dtype.
    self.autocast = (
      torch.autocast(device, dtype=torch.bfloat16)
      if model_config.dtype == "bfloat16"
      else contextlib.nullcontext()
    )
    self.forward = torch.compile(self.model) if args.torch_compile else self.model
    # The phi_jax recipe: decay matrices (kernels, embeddings), not biases or LayerNorm scales.
    decay = [p for n, p in self.model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in self.model.named_parameters() if p.ndim < 2]
    optim = cfg.optim
    kwargs = dict(lr=optim.learning_rate, betas=(optim.b1, optim.b2), eps=optim.eps)
    if args.torch_adamw != "default":
      kwargs[args.torch_adamw] = True
    self.optimizer = torch.optim.AdamW(
      [
        {"params": decay, "weight_decay": optim.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
      ],
      **kwargs,
    )
    warmup = max(int(optim.warmup_steps), 1)
    self.scheduler = torch.optim.lr_scheduler.LambdaLR(
      self.optimizer, lambda step: min(1.0, step / warmup)
    )
    self.clip = float(optim.grad_clip_norm)
    tokens = torch.from_numpy(make_tokens(args, model_config.vocab_size)).long().to(device)
    self.inputs, self.targets = tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()
    self.info = {
      "torch": torch.__version__,
      "transformers": transformers.__version__,
      "threads": torch.get_num_threads(),
      "attn_implementation": self.model.config._attn_implementation,
      "adamw": args.torch_adamw,
      "compiled": args.torch_compile,
      "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
    }

  def steps(self, n):
    torch = self.torch
    start = time.perf_counter()
    for _ in range(n):
      with self.autocast:
        logits = self.forward(input_ids=self.inputs).logits
      loss = torch.nn.functional.cross_entropy(
        logits.float().view(-1, logits.shape[-1]), self.targets.view(-1)
      )
      loss.backward()
      torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip)
      self.optimizer.step()
      self.scheduler.step()
      self.optimizer.zero_grad(set_to_none=True)
    loss = float(loss.detach())
    return time.perf_counter() - start, loss


def worker_main(args):
  """Runs one framework; reads commands from stdin, answers one JSON line each on stdout."""
  out = sys.stdout
  sys.stdout = sys.stderr  # keep library prints off the protocol channel
  runner = {"jax": JaxRunner, "torch": TorchRunner}[args.worker](args)
  reply = lambda obj: (out.write(json.dumps(obj) + "\n"), out.flush())
  seconds, loss = runner.steps(args.warmup)  # compilation / allocator warm-up: not timed
  reply({"ready": True, "info": runner.info, "warmup_s": seconds, "loss": loss})
  for line in sys.stdin:
    command = json.loads(line)
    if command["op"] == "steps":
      seconds, loss = runner.steps(command["n"])
      reply({"seconds": seconds, "loss": loss})
    elif command["op"] == "peak":
      # Uncached on purpose: the parent samples the peak between repetitions and keeps the
      # best, so that a sample taken while other processes ran does not deflate it.
      from phi_jax import metrics

      dtype, size = ("bfloat16", 8192) if args.device == "gpu" else ("float32", 1024)
      reply({"peak": metrics.measured_matmul_peak.__wrapped__(dtype, size)})
    elif command["op"] == "quit":
      reply({"bye": True})
      return


# --------------------------------------------------------------------------- parent


class Worker:
  def __init__(self, kind, args):
    argv = [sys.executable, str(Path(__file__).resolve()), f"--worker={kind}"]
    for key in (
      "batch",
      "seq_len",
      "layers",
      "scan_unroll",
      "attention",
      "loss_chunk",
      "model",
      "device",
      "torch_attention",
      "torch_adamw",
      "threads",
      "warmup",
    ):
      argv.append(f"--{key}={getattr(args, key)}")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH", "")]))
    if args.no_segment_mask:
      argv.append("--no_segment_mask")
    if args.torch_compile:
      argv.append("--torch_compile")
    if kind == "jax":
      env["JAX_PLATFORMS"] = {"cpu": "cpu", "gpu": "cuda"}[args.device]
      if args.xla_flags:
        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " " + args.xla_flags).strip()
    self.kind = kind
    self.proc = subprocess.Popen(
      argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
    )

  def request(self, **command):
    if command:
      self.proc.stdin.write(json.dumps(command) + "\n")
      self.proc.stdin.flush()
    line = self.proc.stdout.readline()
    if not line:
      raise RuntimeError(f"the {self.kind} worker died (exit code {self.proc.wait()})")
    return json.loads(line)

  def close(self):
    try:
      self.request(op="quit")
    finally:
      self.proc.wait()


def load_average():
  try:
    return os.getloadavg()[0]
  except OSError:
    return float("nan")


def run_benchmark(args):
  from phi_jax import metrics
  from phi_jax import model as model_lib

  model_config = model_lib.as_model_config(build_cfg(args))

  tokens_per_step = args.batch * args.seq_len
  flops_per_token = metrics.flops_per_token(model_config, args.seq_len)

  # One worker at a time while warming up (compiling), so neither's warm-up slows the other.
  workers, ready = {}, {}
  for kind in ("jax", "torch"):
    workers[kind] = Worker(kind, args)
    ready[kind] = workers[kind].request()
  peaks = [workers["jax"].request(op="peak")["peak"]]

  seconds = {kind: [] for kind in workers}
  losses = {kind: [] for kind in workers}
  loads = [load_average()]
  try:
    for rep in range(args.repeats):
      order = ("jax", "torch") if rep % 2 == 0 else ("torch", "jax")
      for kind in order:
        result = workers[kind].request(op="steps", n=args.steps)
        seconds[kind].append(result["seconds"] / args.steps)
        losses[kind].append(result["loss"])
      loads.append(load_average())
      peaks.append(workers["jax"].request(op="peak")["peak"])
      if args.verbose:
        print(
          f"rep {rep}: " + ", ".join(f"{k} {seconds[k][-1]:.3f}s/step" for k in order),
          file=sys.stderr,
        )
  finally:
    for worker in workers.values():
      worker.close()

  measured_peak = max(peaks)
  device_kind = ready["torch"]["info"]["device"]
  peak = metrics.datasheet_peak_flops(device_kind) if args.device == "gpu" else measured_peak
  results = {}
  for kind, name in (("jax", "phi_jax"), ("torch", "torch")):
    step = statistics.median(seconds[kind])
    results[name] = {
      "step_time_s": step,
      "tokens_per_s": tokens_per_step / step,
      "mfu": flops_per_token * tokens_per_step / step / peak,
      "fraction_of_measured_matmul": flops_per_token * tokens_per_step / step / measured_peak,
      "step_times_s": seconds[kind],
      "losses": losses[kind],
      "warmup_s": ready[kind]["warmup_s"],
      **ready[kind]["info"],
    }
  paired = [t / j for j, t in zip(seconds["jax"], seconds["torch"])]
  return {
    "date": datetime.date.today().isoformat(),
    "device": device_kind,
    "cores": os.cpu_count(),
    "load_average_1m": loads,
    "model": {
      **dataclasses.asdict(model_config),
      "name": args.model,
      "params": model_lib.num_params(model_config),
    },
    "batch": args.batch,
    "seq_len": args.seq_len,
    "tokens_per_step": tokens_per_step,
    "flops_per_token": flops_per_token,
    "mfu_peak_flops": peak,
    "matmul_peak_flops": measured_peak,
    "matmul_peak_samples": peaks,
    "steps_per_repeat": args.steps,
    "repeats": args.repeats,
    "warmup_steps": args.warmup,
    "results": results,
    "ratio_tokens_per_s": results["phi_jax"]["tokens_per_s"] / results["torch"]["tokens_per_s"],
    "ratio_paired_median": statistics.median(paired),
    "ratios_paired": paired,
  }


def table(report):
  res = report["results"]
  model = report["model"]
  lines = [
    f"phi {model['params'] / 1e6:.1f}M params ({model['name']}), batch {report['batch']} x seq "
    f"{report['seq_len']}, {model['dtype']} compute, {report['device']} ({report['cores']} "
    f"cores), median of {report['repeats']} x {report['steps_per_repeat']} steps; MFU peak "
    f"{report['mfu_peak_flops'] / 1e12:.3f} TFLOP/s, measured matmul "
    f"{report['matmul_peak_flops'] / 1e12:.3f} TFLOP/s",
    "",
    "| framework | step time (s) | tokens/s | MFU | of measured matmul |",
    "|---|---|---|---|---|",
  ]
  for name, label in (
    ("phi_jax", f"phi_jax (attention={res['phi_jax']['attention']})"),
    (
      "torch",
      f"torch PhiForCausalLM ({res['torch']['attn_implementation']}"
      f"{', compiled' if res['torch']['compiled'] else ''})",
    ),
  ):
    r = res[name]
    lines.append(
      f"| {label} | {r['step_time_s']:.4f} | {r['tokens_per_s']:.0f} | {100 * r['mfu']:.1f}% "
      f"| {100 * r['fraction_of_measured_matmul']:.1f}% |"
    )
  lines.append("")
  lines.append(
    f"phi_jax / torch tokens/s: **{report['ratio_tokens_per_s']:.2f}x** (median of "
    f"the per-repetition ratios: {report['ratio_paired_median']:.2f}x)"
  )
  return "\n".join(lines)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--steps", type=int, default=3, help="timed steps per repetition")
  parser.add_argument("--repeats", type=int, default=5, help="alternating repetitions")
  parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (>= 1)")
  parser.add_argument("--out", default="", help="write the JSON report here")
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--seq_len", type=int, default=512)
  parser.add_argument("--device", default="cpu", choices=["cpu", "gpu"])
  parser.add_argument("--model", default="bench58m", choices=["bench58m", "phi1_small"])
  parser.add_argument("--layers", type=int, default=0, help="n_layers (0: the model's)")
  parser.add_argument("--attention", default="blockwise", help="phi_jax model.attention")
  parser.add_argument(
    "--scan_unroll", type=int, default=0, help="phi_jax model.scan_unroll (0: the config's)"
  )
  parser.add_argument(
    "--no_segment_mask",
    action="store_true",
    help="phi_jax model.mask_packed_segments=False: one document per row, as torch trains",
  )
  parser.add_argument("--loss_chunk", type=int, default=64, help="phi_jax train.loss_chunk")
  parser.add_argument("--torch_attention", default="sdpa", help="transformers attn_implementation")
  parser.add_argument(
    "--torch_adamw",
    default="default",
    choices=["default", "foreach", "fused"],
    help="torch.optim.AdamW implementation",
  )
  parser.add_argument("--torch_compile", action="store_true", help="torch.compile the model")
  parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads")
  parser.add_argument("--xla_flags", default="", help="extra XLA_FLAGS for the phi_jax worker")
  parser.add_argument("--verbose", action="store_true")
  parser.add_argument("--worker", default="", help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.warmup < 1:
    parser.error("--warmup must be >= 1 (the first phi_jax step compiles)")
  if args.worker:
    return worker_main(args)
  report = run_benchmark(args)
  print(table(report))
  if args.out:
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
  main()
