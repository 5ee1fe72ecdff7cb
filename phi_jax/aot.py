"""What the compiler says about the train step, for a TPU slice on any machine (no TPU needed).

    python -m phi_jax.aot --config=configs/phi1.py --topology=v4:2x2x1 \
        [--config.train.micro_batch=64 --config.model.remat=full --config.model.dtype=bfloat16]

libtpu (`pip install -e ".[tpu]"`) compiles the real train step (`train_step.make_trainer`) for a
TPU slice described only by its topology, on compile-only devices (or for the devices this
process runs on), and reports: per-chip HBM (arguments, outputs, temporaries, generated code)
against the chip's capacity; the compiled FLOPs per step next to the analytic count of
`phi_jax.metrics`; and the step time the TPU compiler's cost model estimates. `fit` chooses
`train.micro_batch` / `model.remat` where a config says "auto"; `train.run` calls it.

From Python: `phi_jax.aot.fit(phi_jax.configs.get("phi1"), "v5p:2x2x1")` -> dict, and
`compile_report(cfg, topology)` for a config whose settings are given.

Topologies are libtpu's `<chip>:<chips per axis>` names, e.g. `v4:2x2x1` (v4-8: 4 chips, 8
TensorCores), `v5e:2x4` (v5litepod-8: 8 chips), `v5p:2x2x1` (v5p-8: 4 chips), `v6e:2x4`.
v4 and v5p chips have two TensorCores; like Cloud TPU VMs we compile them as one "megacore"
device per chip (`chip_config="megacore"`), so one JAX device is one chip.
"""

from __future__ import annotations

import copy
import os
import re
import time
from typing import Any

import jax
from absl import flags, logging

from phi_jax import attention, cli, configs, hlo_flops, sharding, train_step
from phi_jax import metrics as metrics_lib
from phi_jax import model as model_lib

GiB = 2**30

# HBM per chip, vendor figures (Cloud TPU system-architecture pages), keyed by the chip
# generation prefix of the topology name.
HBM_BYTES = {
  "v4": 32 * GiB,
  "v5e": 16 * GiB,
  "v5litepod": 16 * GiB,
  "v5p": 95 * GiB,
  "v6e": 32 * GiB,
}
# The per-chip HBM limit the TPU compiler itself enforces (libtpu 0.0.42, read from its
# out-of-memory messages): the vendor capacity less what the runtime reserves.
COMPILER_HBM_LIMIT_BYTES = {
  "v4": int(30.75 * GiB),
  "v5e": int(15.75 * GiB),
  "v5litepod": int(15.75 * GiB),
  "v5p": int(95.74 * GiB),
}
# Chips with two TensorCores, compiled as one megacore device per chip.
_MEGACORE = ("v4", "v5p")
# TensorCore clocks, by device_kind: the vendor's peak bf16 FLOP/s over the MXUs' FLOPs per
# cycle (v4, v5p: 2 cores x 4 MXUs x 128 x 128 x 2; v5e: 1 x 4 x 128 x 128 x 2). They turn the
# compiler's estimated cycles into seconds.
CLOCK_HZ = {"TPU v4": 1.05e9, "TPU v5 lite": 1.5e9, "TPU v5": 1.75e9}

# The TPU compiler's out-of-memory messages (sizes in its K/M/G/T = KiB/MiB/GiB/TiB).
_OOM_TOTAL = re.compile(r"Used ([\d.]+)([KMGT]) of ([\d.]+)([KMGT]) hbm")
_OOM_TEMP = re.compile(
  r"HLO temporaries \(([\d.]+)([KMGT])\) exceeds available HBM "
  r"\(([\d.]+)([KMGT])\)"
)
_UNITS = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def chip_name(topology: str) -> str:
  return topology.split(":")[0].strip().lower().removeprefix("tpu ").strip()


def topology_devices(topology: str, chip_config: str | None = None) -> list:
  """Compile-only devices of a TPU slice, e.g. `v4:2x2x1`; needs libtpu, not a TPU."""
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top

  # Compile-only: no TPU is touched, so skip libtpu's one-process-per-host lock
  # (/tmp/libtpu_lockfile), which any other JAX process that loaded libtpu may hold.
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  chip = chip_name(topology)
  if chip_config is None:
    chip_config = "megacore" if chip in _MEGACORE else "default"
  try:
    return topologies.get_topology_desc(topology, "tpu", chip_config_name=chip_config).devices
  except RuntimeError as e:
    if "TPU support not installed" in str(e):
      raise RuntimeError("libtpu is not installed: pip install -e '.[tpu]'") from e
    raise


def _memory(compiled) -> dict:
  stats = compiled.memory_analysis()
  out = {
    "argument_bytes": int(stats.argument_size_in_bytes),
    "output_bytes": int(stats.output_size_in_bytes),
    "alias_bytes": int(stats.alias_size_in_bytes),
    "temp_bytes": int(stats.temp_size_in_bytes),
    "generated_code_bytes": int(stats.generated_code_size_in_bytes),
  }
  # Donated state: the outputs that alias arguments take no extra memory.
  out["total_bytes"] = (
    out["argument_bytes"]
    + out["output_bytes"]
    - out["alias_bytes"]
    + out["temp_bytes"]
    + out["generated_code_bytes"]
  )
  peak = getattr(stats, "peak_memory_in_bytes", None)
  if peak:
    out["peak_bytes"] = int(peak)
  return out


def _flops(compiled) -> float:
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0]
  return float(cost.get("flops", 0.0))


def _memory_limit(devices: list, topology: str | None) -> int | None:
  """Bytes one device may use: the TPU compiler's limit for a named topology; else what the
  runtime reports (TPU, GPU), or for CPU devices the host's RAM shared among them."""
  if topology:
    chip = chip_name(topology)
    return COMPILER_HBM_LIMIT_BYTES.get(chip, HBM_BYTES.get(chip))
  stats = jax.local_devices()[0].memory_stats()  # another host's devices report nothing here
  if stats and "bytes_limit" in stats:
    return int(stats["bytes_limit"])
  if devices[0].platform == "cpu":
    host_bytes = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return host_bytes // len(jax.local_devices())
  return None


def compile_report(
  cfg: Any, topology: str | None, chip_config: str | None = None, hlo_path: str | None = None
) -> dict:
  """AOT-compiles `make_trainer(cfg, mesh).step` for `topology` (None: the devices this process
  runs on); returns the compiler's numbers.

  Memory is per chip (one SPMD partition, `compiled.memory_analysis()`): `total_bytes` is
  arguments + outputs - outputs aliased to the donated state + temporaries + generated code,
  `peak_bytes` XLA's own peak of live buffers. `fits` means the compiler accepted the program
  and `total_bytes` is within the compiler's HBM limit. If the step does not fit at all, the TPU
  compiler refuses it: then `compiled` and `fits` are False, `error` holds its message and the
  sizes it names (`total_bytes` or `temp_bytes`, `compiler_hbm_limit_bytes`).

  FLOPs are per step for the whole slice (per-device numbers times the device count):
  `compiled_flops` counts the dots/convolutions of the compiled HLO with every loop body times
  its trip count (`hlo_flops.matmul_flops`); `cost_analysis_flops` is XLA's cost_analysis(), which
  counts each loop body once; `analytic_flops` is metrics.flops_per_token x batch x seq_len.
  `hlo_path` saves the compiled HLO text.
  """
  devices = topology_devices(topology, chip_config) if topology else jax.devices()
  configs.check(cfg, len(devices))
  limit = _memory_limit(devices, topology)
  mesh = sharding.make_mesh(cfg.mesh, devices=devices)
  trainer = train_step.make_trainer(cfg, mesh)
  batch = train_step.abstract_batch(cfg, trainer.batch_sharding)
  model_config = model_lib.as_model_config(cfg)
  global_batch, seq_len = int(cfg.train.global_batch), int(cfg.train.seq_len)
  analytic = metrics_lib.flops_per_token(model_config, seq_len) * global_batch * seq_len
  report = {
    "topology": topology or "these devices",
    "device_kind": devices[0].device_kind,
    "num_devices": len(devices),
    "mesh": dict(mesh.shape),
    "global_batch": global_batch,
    "micro_batch": int(cfg.train.micro_batch) or global_batch,
    "micro_batches": trainer.micro_batches,
    "seq_len": seq_len,
    "remat": model_config.remat,
    "dtype": model_config.dtype,
    "hbm_bytes": HBM_BYTES.get(chip_name(topology)) if topology else limit,
    "compiler_hbm_limit_bytes": limit,
    "analytic_flops": analytic,
  }
  start = time.perf_counter()
  lowered = trainer.step.lower(trainer.abstract_state, batch)
  report["lower_s"] = time.perf_counter() - start
  start = time.perf_counter()
  try:
    compiled = lowered.compile()
  except Exception as e:  # pylint: disable=broad-except
    message = str(e)
    if "RESOURCE_EXHAUSTED" not in message:
      raise
    report.update(
      compiled=False,
      fits=False,
      error=message.strip().splitlines()[0][:500],
      compile_s=time.perf_counter() - start,
    )
    size = lambda number, unit: int(float(number) * _UNITS[unit])
    if oom := _OOM_TOTAL.search(message):
      report["total_bytes"] = size(*oom.group(1, 2))
      report["compiler_hbm_limit_bytes"] = size(*oom.group(3, 4))
    elif oom := _OOM_TEMP.search(message):
      report["temp_bytes"] = size(*oom.group(1, 2))
      report["compiler_hbm_limit_bytes"] = size(*oom.group(3, 4))
    return report
  report["compile_s"] = time.perf_counter() - start
  hlo_text = compiled.as_text()
  if hlo_path:
    with open(hlo_path, "w") as f:
      f.write(hlo_text)
  report.update(_memory(compiled))
  # Both per device (one SPMD partition), times the devices for the whole step.
  kernel_flops = None
  if model_config.attention == "splash":
    kernel_flops = attention.splash_kernel_flops(seq_len, model_config.head_dim)
  matmul, matmul_once, trips = hlo_flops.matmul_flops(hlo_text, kernel_flops)
  report["loop_trip_counts"] = trips
  report["cost_analysis_flops"] = _flops(compiled) * len(devices)
  report["hlo_matmul_flops_loops_once"] = matmul_once * len(devices)
  report["compiled_flops"] = matmul * len(devices)
  report["flops_ratio"] = report["compiled_flops"] / analytic
  report.update(_step_time_estimate(report, hlo_text, kernel_flops, matmul, devices))
  # The compiler refuses a program whose peak exceeds its limit; `fits` asks more: that the
  # plain sum (arguments + outputs - aliased + temporaries + code) stays within the limit too.
  limit = report["compiler_hbm_limit_bytes"]
  report["compiled"] = True
  report["fits"] = limit is None or report["total_bytes"] <= limit
  return report


def clock_hz(device_kind: str) -> float | None:
  return next((hz for kind, hz in CLOCK_HZ.items() if device_kind.startswith(kind)), None)


def _step_time_estimate(
  report: dict, hlo_text: str, kernel_flops, matmul: float, devices: list
) -> dict:
  """The step time the TPU compiler's cost model predicts, not a measurement: the estimated
  cycles of every fusion (loops times their trip counts) at the TensorCore clock, plus custom
  kernels (splash attention), which carry no estimate, at the chip's peak FLOP/s. Collectives
  are left out (fsdp's gathers overlap compute), as are asynchronous copies."""
  kind = devices[0].device_kind
  clock = clock_hz(kind)
  if devices[0].platform != "tpu" or clock is None:
    return {}
  chips = len({tuple(d.coords) for d in devices})
  peak_per_device = metrics_lib.datasheet_peak_flops(kind) * chips / len(devices)
  cycles, cycles_once, _ = hlo_flops.estimated_cycles(hlo_text)
  kernel = 0.0
  if kernel_flops is not None:  # per device: `matmul` (kernels counted) less the walk without
    kernel = matmul - hlo_flops.matmul_flops(hlo_text)[0]
  seconds = cycles / clock + kernel / peak_per_device
  tokens = report["global_batch"] * report["seq_len"]
  return {
    "estimated_cycles": cycles,
    "estimated_cycles_loops_once": cycles_once,
    "estimated_kernel_s": kernel / peak_per_device,
    "estimated_step_s": seconds,
    "estimated_tokens_per_s_per_chip": tokens / seconds / chips,
    "estimated_mfu": report["analytic_flops"] / seconds / (peak_per_device * len(devices)),
  }


# Remat policies from the least recomputation (and the most memory) to the most.
REMAT_BY_COST = ("none", "dots", "dots_no_batch", "full")


class MemoryFitError(ValueError):
  """No setting `fit` may choose fits the devices' memory."""


def fitted(cfg: Any, micro_batch: int, remat: str) -> Any:
  cfg = copy.deepcopy(cfg)
  with cfg.train.ignore_type():  # a resolved copy of the config may have typed "auto" as str
    cfg.train.micro_batch = micro_batch
  cfg.model.remat = remat
  return cfg


def fit(cfg: Any, topology: str | None = None, chip_config: str | None = None) -> dict:
  """Chooses `train.micro_batch` and/or `model.remat` where they are "auto", by compiling the step.

  For `topology` (None: the devices this process runs on), with train.fit_rule="largest": the
  largest micro-batch that fits with the most memory-saving remat allowed, then at that
  micro-batch the cheapest remat policy that fits (REMAT_BY_COST). With "fastest": the largest
  micro-batch that fits under each remat policy allowed, then the one whose step the TPU
  compiler estimates fastest (`estimated_step_s`). "Fits" means the compiler accepts the step and its per-chip total
  (`compile_report`) is within (1 - train.fit_margin) of the memory limit. A setting that is
  not "auto" is kept as given. Candidate micro-batches divide the global batch and split over
  the data-parallel devices; they are tried from the largest down (a refusal takes seconds, a
  compile that fits minutes).

  Returns {"config": cfg with the choice filled in, "record": the choice, the budget and every
  setting tried (for run.json), "report": compile_report of the choice}; raises MemoryFitError
  when nothing fits.
  """
  devices = topology_devices(topology, chip_config) if topology else jax.devices()
  configs.check(cfg, len(devices))
  mesh_shape = dict(zip(sharding.MESH_AXES, sharding.mesh_shape(cfg.mesh, len(devices))))
  data_parallel = mesh_shape["data"] * mesh_shape["fsdp"]
  global_batch = int(cfg.train.global_batch)
  if cfg.train.micro_batch == configs.AUTO:
    micro_batches = [
      m for m in range(global_batch, 0, -1) if global_batch % m == 0 and m % data_parallel == 0
    ]
  else:
    micro_batches = [int(cfg.train.micro_batch) or global_batch]
  remats = REMAT_BY_COST if cfg.model.remat == configs.AUTO else (cfg.model.remat,)
  limit = _memory_limit(devices, topology)
  if limit is None:
    raise MemoryFitError(
      f"the memory of {devices[0].device_kind} devices is unknown, so 'auto' cannot be fitted "
      "to it; set train.micro_batch and model.remat, or name train.fit_topology"
    )
  budget = int((1 - float(cfg.train.fit_margin)) * limit)
  target = topology or f"{len(devices)} x {devices[0].device_kind}"
  if cfg.train.fit_rule == "fastest" and clock_hz(devices[0].device_kind) is None:
    raise MemoryFitError(
      f"train.fit_rule='fastest' needs the TPU compiler's step-time estimate, which {target} "
      f"lacks (it knows {sorted(CLOCK_HZ)}); use train.fit_rule='largest', or name a TPU "
      "topology in train.fit_topology"
    )
  trials = []

  def attempt(micro_batch: int, remat: str) -> dict | None:
    report = compile_report(fitted(cfg, micro_batch, remat), topology, chip_config)
    needs = report.get("total_bytes", report.get("temp_bytes"))
    fits = report["compiled"] and needs <= budget
    trials.append(
      dict(
        micro_batch=micro_batch,
        remat=remat,
        bytes=needs,
        fits=fits,
        estimated_step_s=report.get("estimated_step_s"),
        compile_s=report["compile_s"],
      )
    )
    logging.warning(
      "memory fit on %s: micro_batch=%d remat=%s needs %s of the %.2f GiB budget: %s",
      target,
      micro_batch,
      remat,
      f"{needs / GiB:.2f} GiB" if needs is not None else "?",
      budget / GiB,
      "fits" if fits else "does not fit",
    )
    return report if fits else None

  def largest_fitting(remat: str) -> dict | None:
    return next((r for r in (attempt(m, remat) for m in micro_batches) if r), None)

  if cfg.train.fit_rule == "fastest":
    fitting = [r for r in map(largest_fitting, remats) if r]
    chosen = min(fitting, key=lambda r: r["estimated_step_s"], default=None)
  elif len(micro_batches) > 1:  # the largest micro-batch with the most memory-saving remat,
    chosen = largest_fitting(remats[-1])  # then the cheapest remat that fits at that size
    if chosen:
      cheaper = (attempt(chosen["micro_batch"], remat) for remat in remats[:-1])
      chosen = next((r for r in cheaper if r), chosen)
  else:
    chosen = next((r for r in (attempt(micro_batches[0], remat) for remat in remats) if r), None)
  if chosen is None:
    raise MemoryFitError(
      f"no setting fits {target}: even train.micro_batch={micro_batches[-1]} with "
      f"model.remat={remats[-1]} needs more than the {budget / GiB:.2f} GiB budget per chip "
      f"({1 - float(cfg.train.fit_margin):.0%} of {limit / GiB:.2f} GiB); use a larger slice, "
      "shard the model more (mesh.tensor), shorten train.seq_len or lower train.fit_margin"
    )
  record = dict(
    micro_batch=chosen["micro_batch"],
    remat=chosen["remat"],
    target=target,
    limit_bytes=limit,
    rule=cfg.train.fit_rule,
    margin=float(cfg.train.fit_margin),
    budget_bytes=budget,
    total_bytes=chosen["total_bytes"],
    trials=trials,
  )
  logging.warning(
    "memory fit on %s: chose train.micro_batch=%d, model.remat=%s (%.2f of %.2f GiB per chip)",
    target,
    record["micro_batch"],
    record["remat"],
    record["total_bytes"] / GiB,
    budget / GiB,
  )
  return dict(
    config=fitted(cfg, record["micro_batch"], record["remat"]), record=record, report=chosen
  )


def format_report(r: dict) -> str:
  gib = lambda b: f"{b / GiB:.2f} GiB"
  lines = [
    f"topology {r['topology']} ({r['num_devices']} x {r['device_kind']}), mesh {r['mesh']}",
    f"batch {r['global_batch']} x {r['seq_len']} tokens, micro_batch {r['micro_batch']} "
    f"({r['micro_batches']} accumulation steps), remat {r['remat']}, dtype {r['dtype']}",
  ]
  hbm = r["hbm_bytes"]
  hbm_text = f"{gib(hbm)} HBM per chip (vendor spec)" if hbm else "HBM unknown"
  if "error" in r:
    lines.append(f"DOES NOT FIT: the TPU compiler refused the step: {r['error']}")
    if "compiler_hbm_limit_bytes" in r:
      needs = (
        f"needs {gib(r['total_bytes'])} per chip"
        if "total_bytes" in r
        else f"needs {gib(r['temp_bytes'])} of temporaries per chip (plus the arguments)"
      )
      lines.append(
        f"  {needs}; the compiler's limit is {gib(r['compiler_hbm_limit_bytes'])} of {hbm_text}"
      )
  else:
    limit = r["compiler_hbm_limit_bytes"]
    verdict = (
      "fits"
      if r["fits"]
      else "compiles, but the sum exceeds the compiler's limit "
      f"{gib(limit)}: NOT counted as fitting"
    )
    lines += [
      "per-chip memory (compiled.memory_analysis(), one SPMD partition):",
      f"  arguments       {gib(r['argument_bytes'])}",
      f"  outputs         {gib(r['output_bytes'])}  ({gib(r['alias_bytes'])} aliased to donated "
      "arguments)",
      f"  temporaries     {gib(r['temp_bytes'])}",
      f"  generated code  {gib(r['generated_code_bytes'])}",
      f"  total           {gib(r['total_bytes'])} (the sum) of {hbm_text}, compiler limit "
      f"{gib(limit) if limit else '?'}: {verdict}",
      f"  peak            {gib(r.get('peak_bytes', 0))} (XLA's peak of live buffers)",
      f"FLOPs per step (all {r['num_devices']} chips):",
      f"  compiled  {r['compiled_flops']:.4g}  (dot/convolution FLOPs of the compiled HLO, "
      f"loop bodies x trip counts {r['loop_trip_counts']})",
      f"  analytic  {r['analytic_flops']:.4g}  (metrics.flops_per_token x batch x seq_len); "
      f"compiled/analytic {r['flops_ratio']:.3f}",
      f"  cost_analysis() {r['cost_analysis_flops']:.4g}  (XLA counts each loop body once; "
      f"the HLO walk counting loops once gives {r['hlo_matmul_flops_loops_once']:.4g})",
    ]
  if "estimated_step_s" in r:
    lines += [
      "step time, the TPU compiler's estimate (its cost model, not a measurement):",
      f"  {r['estimated_step_s']:.3f} s per step = estimated cycles (loops x trip counts) at the "
      f"clock + {r['estimated_kernel_s']:.3f} s of custom kernels at peak FLOP/s; collectives "
      "left out",
      f"  {r['estimated_tokens_per_s_per_chip']:,.0f} tokens/s per chip, MFU "
      f"{r['estimated_mfu']:.1%}",
    ]
  lines.append(f"lower {r['lower_s']:.1f} s, compile {r['compile_s']:.1f} s")
  return "\n".join(lines)


def main(argv):
  del argv
  flag_values = flags.FLAGS
  cfg, topology, chip_config = flag_values.config, flag_values.topology, flag_values.chip_config
  if configs.memory_fit_needed(cfg):
    chosen = fit(cfg, topology, chip_config)
    for trial in chosen["record"]["trials"]:
      print(
        f"tried micro_batch {trial['micro_batch']}, remat {trial['remat']}: "
        + ("fits" if trial["fits"] else "does not fit")
      )
    report = chosen["report"]
  else:
    report = compile_report(cfg, topology, chip_config)
  print(format_report(report))


if __name__ == "__main__":
  # Flags are defined here, not at import, so that other CLIs can import this module.
  cli.define_config()
  flags.DEFINE_string("topology", None, "TPU topology, e.g. v4:2x2x1, v5e:2x4, v5p:2x2x1.")
  flags.DEFINE_string(
    "chip_config",
    None,
    "libtpu chip config: 'megacore' (default for v4/v5p) or 'default' (one device per TensorCore).",
  )
  flags.mark_flags_as_required(["config", "topology"])
  cli.run(main)
