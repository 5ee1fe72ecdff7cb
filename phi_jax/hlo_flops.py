"""What a compiled XLA program costs, read from its HLO text with loops counted by trip count.

XLA's cost_analysis() counts a while loop's body once, whatever its trip count: for the train
step (a scan over micro-batches around a scan over layers) it reports about one layer of one
micro-batch. This module walks the optimized per-device HLO text (`compiled.as_text()`) instead,
fusions and calls followed, each while body multiplied by its trip count (a known trip count,
or an `i < constant` condition), and sums a cost per instruction:

- `matmul_flops`: the FLOPs of every dot and convolution (XLA's own formula, padding and
  dilation included). Elementwise ops are not counted, as in the analytic count of
  phi_jax.metrics.
- `estimated_cycles`: the TPU compiler's own cost model, the `estimated_cycles` it writes into
  each fusion's backend config. Collectives, asynchronous copies and custom kernels carry none.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence

# (custom call's instruction name, its operands' dims) -> the FLOPs of one call of that kernel.
KernelFlops = Callable[[str, Sequence[list[int] | None]], float]

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
      return re.findall(r"%([\w.\-]+)", rest[:i]), rest[i + 1 :]
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
  return (
    2.0
    * (input_feature // feature_groups)
    * output_feature
    * (batch // batch_groups)
    * valid_product
  )


# (name, opcode, operand names, attributes, output dims, dims of every instruction) -> its cost
InstructionCost = Callable[
  [str, str, list[str], str, list[int] | None, dict[str, list[int] | None]], float
]


def matmul_flops(
  hlo_text: str, kernel_flops: KernelFlops | None = None
) -> tuple[float, float, list[int]]:
  """(matmul FLOPs with loop trip counts, the same counting each loop body once, trip counts)
  of one device's program, from `compiled.as_text()`. Custom kernels (Pallas/Mosaic calls) are
  opaque to the walk: `kernel_flops` counts them where given."""

  def cost(name, opcode, operands, attrs, out, shapes):
    if opcode == "convolution" and out is not None:
      return _conv_flops(out, shapes[operands[0]], attrs)
    if opcode == "dot" and out is not None:
      lhs = shapes[operands[0]]
      contracted = math.prod(lhs[d] for d in _int_list(_attr(attrs, "lhs_contracting_dims")))
      return 2.0 * math.prod(out) * contracted
    if opcode == "custom-call" and kernel_flops is not None and not _attr(attrs, "calls"):
      return kernel_flops(name, [shapes.get(o) for o in operands])
    return 0.0

  return _walk(hlo_text, cost)


def estimated_cycles(hlo_text: str) -> tuple[float, float, list[int]]:
  """(the TPU compiler's estimated cycles with loop trip counts, the same counting each loop
  body once, trip counts) of one device's program, from `compiled.as_text()`."""

  def cost(name, opcode, operands, attrs, out, shapes):
    del name, opcode, operands, out, shapes
    match = re.search(r'"estimated_cycles":"(\d+)"', attrs)
    return float(match.group(1)) if match else 0.0

  return _walk(hlo_text, cost)


def _walk(hlo_text: str, cost: InstructionCost) -> tuple[float, float, list[int]]:
  """(the sum of `cost` over the instructions, loops times their trip counts; the same sum with
  each loop body once; the trip counts)."""
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

  instructions = {
    name: (opcode, operands, attrs)
    for body in computations.values()
    for name, opcode, operands, attrs, _ in body
  }
  constants = {}  # scalar integer constants
  for line in hlo_text.splitlines():
    match = re.match(r"^\s*(?:ROOT\s+)?%?([\w.\-]+) = [su]\d+\[\]\S* constant\((-?\d+)\)", line)
    if match:
      constants[match.group(1)] = int(match.group(2))

  def constant(name: str) -> int | None:
    while name not in constants and instructions.get(name, ("",))[0] in (
      "copy",
      "bitcast",
      "convert",
    ):
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
    root = next(
      (ops for _, op, ops, _, _ in reversed(computations.get(body, [])) if op == "tuple"), None
    )
    if root is not None and k < len(root):
      opcode, operands, _ = instructions.get(root[k], ("", [], ""))
      if opcode == "add" and len(operands) == 2:
        for a, b in (operands, operands[::-1]):
          if tuple_index(a) == k and constant(b):
            step = constant(b)
    return max(0, -(-(limit - init) // step))

  trips: list[int] = []
  cache: dict[tuple[str, bool], float] = {}

  def summed(computation: str, with_trips: bool) -> float:
    key = (computation, with_trips)
    if key in cache:
      return cache[key]
    total = 0.0
    for name, opcode, operands, attrs, out in computations.get(computation, []):
      total += cost(name, opcode, operands, attrs, out, shapes)
      if opcode == "while":
        body, condition = _attr(attrs, "body").lstrip("%"), _attr(attrs, "condition").lstrip("%")
        known = re.search(r'"known_trip_count":\{"n":"(\d+)"', attrs)
        n = int(known.group(1)) if known else trip_count(operands[0], condition, body)
        if with_trips:
          trips.append(n)
        total += (n if with_trips and n else 1) * (
          summed(body, with_trips) + summed(condition, with_trips)
        )
      elif opcode in ("fusion", "call", "async-start", "custom-call") and _attr(attrs, "calls"):
        for callee in re.findall(r"%?([\w.\-]+)", _attr(attrs, "calls")):
          total += summed(callee, with_trips)
      elif opcode == "conditional":
        branches = re.findall(r"%([\w.\-]+)", _attr(attrs, "branch_computations") or "")
        total += max((summed(b, with_trips) for b in branches), default=0.0)
    cache[key] = total
    return total

  return summed(entry, True), summed(entry, False), trips
