"""TPU ahead-of-time compilation of the train step, on any machine (no TPU needed).

    python -m phi_jax.aot --config=configs/phi1.py --topology=v4:2x2x1 \
        [--config.train.micro_batch=64 --config.model.remat=full --config.model.dtype=bfloat16]

libtpu (`pip install -e ".[tpu]"`) compiles the real train step (`train_step.make_trainer`) for a
TPU slice described only by its topology, on compile-only devices, and reports what the compiler
says about it: per-chip HBM (arguments, outputs, temporaries, generated code) against the chip's
capacity, and the compiled FLOPs per step next to the analytic count of `phi_jax.metrics`.

From Python: `phi_jax.aot.compile_report(phi_jax.configs.get("phi1"), "v5p:2x2x1")` -> dict.

Topologies are libtpu's `<chip>:<chips per axis>` names, e.g. `v4:2x2x1` (v4-8: 4 chips, 8
TensorCores), `v5e:2x4` (v5litepod-8: 8 chips), `v5p:2x2x1` (v5p-8: 4 chips), `v6e:2x4`.
v4 and v5p chips have two TensorCores; like Cloud TPU VMs we compile them as one "megacore"
device per chip (`chip_config="megacore"`), so one JAX device is one chip.
"""

from __future__ import annotations

import math
import os
import re
import time
from typing import Any

from absl import flags

from phi_jax import cli
from phi_jax import configs
from phi_jax import metrics as metrics_lib
from phi_jax import model as model_lib
from phi_jax import sharding
from phi_jax import train_step

GiB = 2 ** 30

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

# The TPU compiler's out-of-memory messages (sizes in its K/M/G/T = KiB/MiB/GiB/TiB).
_OOM_TOTAL = re.compile(r"Used ([\d.]+)([KMGT]) of ([\d.]+)([KMGT]) hbm")
_OOM_TEMP = re.compile(r"HLO temporaries \(([\d.]+)([KMGT])\) exceeds available HBM "
                       r"\(([\d.]+)([KMGT])\)")
_UNITS = {"K": 2 ** 10, "M": 2 ** 20, "G": 2 ** 30, "T": 2 ** 40}


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
  out["total_bytes"] = (out["argument_bytes"] + out["output_bytes"] - out["alias_bytes"]
                        + out["temp_bytes"] + out["generated_code_bytes"])
  peak = getattr(stats, "peak_memory_in_bytes", None)
  if peak:
    out["peak_bytes"] = int(peak)
  return out


def _flops(compiled) -> float:
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0]
  return float(cost.get("flops", 0.0))


# --- matmul FLOPs of a compiled HLO module, loops counted by their trip counts ---------------
# XLA's cost_analysis() counts a while loop's body once, whatever its trip count: for the train
# step (a scan over micro-batches around a scan over layers) it reports about one layer of one
# micro-batch. This walks the optimized per-device HLO text instead: the FLOPs of every dot and
# convolution (XLA's own formula, padding and dilation included), fusions and calls followed,
# each while body multiplied by its trip count (`i < constant` conditions). Elementwise ops are
# not counted, as in the analytic count.

_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+) = (.*?) ([a-z][a-z0-9\-]*)\((.*)$")
_ARRAY_SHAPE = re.compile(r"^[a-z]+\d*\[([\d,]*)\]")


def _dims(shape: str) -> list[int] | None:
  match = _ARRAY_SHAPE.match(shape)
  if match is None:
    return None
  return [int(d) for d in match.group(1).split(",") if d]


def _split_call(rest: str) -> tuple[list[str], str]:
  """'a, b), attrs' -> operand names, attribute text."""
  depth = 1
  for i, ch in enumerate(rest):
    depth += {"(": 1, ")": -1}.get(ch, 0)
    if depth == 0:
      return re.findall(r"%([\w.\-]+)", rest[:i]), rest[i + 1:]
  return [], rest


def _attr(attrs: str, key: str) -> str | None:
  match = re.search(rf"(?:^|[ ,]){key}=(\{{[^}}]*\}}|[^ ,]+)", attrs)
  return match.group(1) if match else None


def _int_list(text: str | None) -> list[int]:
  return [int(v) for v in re.findall(r"-?\d+", text or "")]


def _conv_flops(out: list[int], lhs: list[int], attrs: str) -> float:
  """XLA HloCostAnalysis::GetConvolutionFlops: 2 x the FMAs at valid (non-padding) taps."""
  labels = _attr(attrs, "dim_labels")
  lhs_labels, rest = labels.split("_")
  rhs_labels, out_labels = rest.split("->")
  spatial = sorted(ch for ch in lhs_labels if ch.isdigit())
  window = {}
  window_text = (_attr(attrs, "window") or "{}").strip("{}")
  for item in window_text.split():
    key, value = item.split("=")
    window[key] = value.split("x")
  def window_value(key, i, default):
    return int(window[key][i]) if key in window else default
  valid_product = 1
  for i, dim in enumerate(spatial):
    input_limit = lhs[lhs_labels.index(dim)]
    output_limit = out[out_labels.index(dim)]
    kernel_limit = window_value("size", i, 1)
    stride = window_value("stride", i, 1)
    pad_low = int(window["pad"][i].split("_")[0]) if "pad" in window else 0
    lhs_dilate = window_value("lhs_dilate", i, 1)
    rhs_dilate = window_value("rhs_dilate", i, 1)
    valid = 0
    for o in range(output_limit):
      for k in range(kernel_limit):
        undilated = o * stride - pad_low + k * rhs_dilate
        if undilated % lhs_dilate == 0 and 0 <= undilated // lhs_dilate < input_limit:
          valid += 1
    valid_product *= valid
  feature_groups = int(_attr(attrs, "feature_group_count") or 1)
  batch_groups = int(_attr(attrs, "batch_group_count") or 1)
  input_feature = lhs[lhs_labels.index("f")]
  batch = lhs[lhs_labels.index("b")]
  output_feature = out[out_labels.index("f")]
  return 2.0 * (input_feature // feature_groups) * output_feature * (batch // batch_groups) \
      * valid_product


def hlo_matmul_flops(hlo_text: str) -> tuple[float, float, list[int]]:
  """(matmul FLOPs with loop trip counts, the same counting each loop body once, trip counts)
  of one device's program, from `compiled.as_text()`."""
  computations: dict[str, list[tuple[str, str, list[str], str, list[int] | None]]] = {}
  shapes: dict[str, list[int] | None] = {}
  entry, current = None, None
  for line in hlo_text.splitlines():
    if line and not line[0].isspace() and line.rstrip().endswith("{"):
      header = line.split()
      is_entry = header[0] == "ENTRY"
      current = header[1 if is_entry else 0].lstrip("%")
      computations[current] = []
      if is_entry:
        entry = current
      continue
    if current is None or line.startswith("}"):
      continue
    match = _INSTRUCTION.match(line)
    if match is None:
      continue
    name, shape, opcode, rest = match.groups()
    operands, attrs = _split_call(rest)
    shapes[name] = _dims(shape)
    computations[current].append((name, opcode, operands, attrs, shapes[name]))

  instructions = {name: (opcode, operands, attrs)
                  for body in computations.values() for name, opcode, operands, attrs, _ in body}
  constants = {}  # scalar integer constants
  for line in hlo_text.splitlines():
    match = re.match(r"^\s*(?:ROOT\s+)?%?([\w.\-]+) = [su]\d+\[\]\S* constant\((-?\d+)\)", line)
    if match:
      constants[match.group(1)] = int(match.group(2))

  def constant(name: str) -> int | None:
    while name not in constants and instructions.get(name, ("",))[0] in ("copy", "bitcast", "convert"):
      name = instructions[name][1][0]
    return constants.get(name)

  def tuple_index(name: str) -> int | None:
    opcode, _, attrs = instructions.get(name, ("", [], ""))
    return int(_attr(attrs, "index")) if opcode == "get-tuple-element" else None

  def trip_count(init_tuple: str, condition: str, body: str) -> int | None:
    """Loops `for (i = init; i < limit; i += step)` over tuple element k: (limit - init) / step;
    init and step default to 0 and 1 when they are not constants."""
    for _, opcode, operands, attrs, _ in computations.get(condition, []):
      if opcode == "compare" and _attr(attrs, "direction") == "LT" and len(operands) == 2:
        k, limit = tuple_index(operands[0]), constant(operands[1])
        if k is not None and limit is not None:
          break
    else:
      return None
    init, step = 0, 1
    tuple_operands = instructions.get(init_tuple, ("", [], ""))[1]
    if k < len(tuple_operands) and constant(tuple_operands[k]) is not None:
      init = constant(tuple_operands[k])
    root = next((ops for _, op, ops, _, _ in reversed(computations.get(body, [])) if op == "tuple"),
                None)
    if root is not None and k < len(root):
      opcode, operands, _ = instructions.get(root[k], ("", [], ""))
      if opcode == "add" and len(operands) == 2:
        for a, b in (operands, operands[::-1]):
          if tuple_index(a) == k and constant(b):
            step = constant(b)
    return max(0, -(-(limit - init) // step))

  trips: list[int] = []
  cache: dict[tuple[str, bool], float] = {}

  def flops(computation: str, with_trips: bool) -> float:
    key = (computation, with_trips)
    if key in cache:
      return cache[key]
    total = 0.0
    for name, opcode, operands, attrs, out in computations.get(computation, []):
      if opcode == "convolution" and out is not None:
        total += _conv_flops(out, shapes[operands[0]], attrs)
      elif opcode == "dot" and out is not None:
        lhs = shapes[operands[0]]
        contracted = math.prod(lhs[d] for d in _int_list(_attr(attrs, "lhs_contracting_dims")))
        total += 2.0 * math.prod(out) * contracted
      elif opcode == "while":
        body, condition = _attr(attrs, "body").lstrip("%"), _attr(attrs, "condition").lstrip("%")
        known = re.search(r'"known_trip_count":\{"n":"(\d+)"', attrs)
        n = int(known.group(1)) if known else trip_count(operands[0], condition, body)
        if with_trips:
          trips.append(n)
        total += (n if with_trips and n else 1) * (flops(body, with_trips) + flops(condition, with_trips))
      elif opcode in ("fusion", "call", "async-start", "custom-call") and _attr(attrs, "calls"):
        for callee in re.findall(r"%?([\w.\-]+)", _attr(attrs, "calls")):
          total += flops(callee, with_trips)
      elif opcode == "conditional":
        branches = re.findall(r"%([\w.\-]+)", _attr(attrs, "branch_computations") or "")
        total += max((flops(b, with_trips) for b in branches), default=0.0)
    cache[key] = total
    return total

  return flops(entry, True), flops(entry, False), trips


def compile_report(cfg: Any, topology: str, chip_config: str | None = None,
                   hlo_path: str | None = None) -> dict:
  """AOT-compiles `make_trainer(cfg, mesh).step` for `topology`; returns the compiler's numbers.

  Memory is per chip (one SPMD partition, `compiled.memory_analysis()`): `total_bytes` is
  arguments + outputs - outputs aliased to the donated state + temporaries + generated code,
  `peak_bytes` XLA's own peak of live buffers. `fits` means the compiler accepted the program
  and `total_bytes` is within the compiler's HBM limit. If the step does not fit at all, the TPU
  compiler refuses it: then `compiled` and `fits` are False, `error` holds its message and the
  sizes it names (`total_bytes` or `temp_bytes`, `compiler_hbm_limit_bytes`).

  FLOPs are per step for the whole slice (per-device numbers times the device count):
  `compiled_flops` counts the dots/convolutions of the compiled HLO with every loop body times
  its trip count (`hlo_matmul_flops`); `cost_analysis_flops` is XLA's cost_analysis(), which
  counts each loop body once; `analytic_flops` is metrics.flops_per_token x batch x seq_len.
  `hlo_path` saves the compiled HLO text.
  """
  devices = topology_devices(topology, chip_config)
  configs.check(cfg, len(devices))
  chip = chip_name(topology)
  mesh = sharding.make_mesh(cfg.mesh, devices=devices)
  trainer = train_step.make_trainer(cfg, mesh)
  batch = train_step.abstract_batch(cfg, trainer.batch_sharding)
  model_config = model_lib.as_model_config(cfg)
  global_batch, seq_len = int(cfg.train.global_batch), int(cfg.train.seq_len)
  analytic = metrics_lib.flops_per_token(model_config, seq_len) * global_batch * seq_len
  report = {
      "topology": topology,
      "device_kind": devices[0].device_kind,
      "num_devices": len(devices),
      "mesh": dict(mesh.shape),
      "global_batch": global_batch,
      "micro_batch": int(cfg.train.micro_batch) or global_batch,
      "micro_batches": trainer.micro_batches,
      "seq_len": seq_len,
      "remat": model_config.remat,
      "dtype": model_config.dtype,
      "hbm_bytes": HBM_BYTES.get(chip),
      "compiler_hbm_limit_bytes": COMPILER_HBM_LIMIT_BYTES.get(chip, HBM_BYTES.get(chip)),
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
    report.update(compiled=False, fits=False, error=message.strip().splitlines()[0][:500],
                  compile_s=time.perf_counter() - start)
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
  matmul, matmul_once, trips = hlo_matmul_flops(hlo_text)
  report["loop_trip_counts"] = trips
  report["cost_analysis_flops"] = _flops(compiled) * len(devices)
  report["hlo_matmul_flops_loops_once"] = matmul_once * len(devices)
  report["compiled_flops"] = matmul * len(devices)
  report["flops_ratio"] = report["compiled_flops"] / analytic
  # The compiler refuses a program whose peak exceeds its limit; `fits` asks more: that the
  # plain sum (arguments + outputs - aliased + temporaries + code) stays within the limit too.
  limit = report["compiler_hbm_limit_bytes"]
  report["compiled"] = True
  report["fits"] = limit is None or report["total_bytes"] <= limit
  return report


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
      needs = (f"needs {gib(r['total_bytes'])} per chip" if "total_bytes" in r else
               f"needs {gib(r['temp_bytes'])} of temporaries per chip (plus the arguments)")
      lines.append(f"  {needs}; the compiler's limit is {gib(r['compiler_hbm_limit_bytes'])} "
                   f"of {hbm_text}")
  else:
    limit = r["compiler_hbm_limit_bytes"]
    verdict = ("fits" if r["fits"] else "compiles, but the sum exceeds the compiler's limit "
               f"{gib(limit)}: NOT counted as fitting")
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
  lines.append(f"lower {r['lower_s']:.1f} s, compile {r['compile_s']:.1f} s")
  return "\n".join(lines)


def main(argv):
  del argv
  flag_values = flags.FLAGS
  print(format_report(compile_report(flag_values.config, flag_values.topology,
                                     flag_values.chip_config)))


if __name__ == "__main__":
  # Flags are defined here, not at import, so that other CLIs can import this module.
  cli.define_config()
  flags.DEFINE_string("topology", None, "TPU topology, e.g. v4:2x2x1, v5e:2x4, v5p:2x2x1.")
  flags.DEFINE_string("chip_config", None, "libtpu chip config: 'megacore' (default for v4/v5p) "
                      "or 'default' (one device per TensorCore).")
  flags.mark_flags_as_required(["config", "topology"])
  cli.run(main)
