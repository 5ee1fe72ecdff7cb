"""Training metrics: FLOPs per token, device peak, MFU, and the metrics.jsonl/TensorBoard writer.

FLOPs convention (PaLM appendix B, causal): per trained token,
  6 * N  +  6 * n_layers * n_heads * head_dim * seq_len
where N counts every parameter that takes part in a matmul (all but the input embedding table,
which is a lookup), and the attention term is half the non-causal 12 * L * H * Q * T.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Mapping
from typing import Any

import jax
from etils import epath

from phi_jax import files
from phi_jax import model as model_lib

# Dense bf16 peak FLOP/s per chip (vendor figures).
_PEAK_FLOPS = {
  "TPU v4": 275e12,
  "TPU v5 lite": 197e12,
  "TPU v5e": 197e12,
  "TPU v5p": 459e12,
  "TPU v5": 459e12,
  "TPU v6 lite": 918e12,
  "TPU v6e": 918e12,
  "NVIDIA H100": 989e12,
  "NVIDIA H200": 989e12,
  "NVIDIA A100": 312e12,
}


def flops_per_token(model_config: model_lib.ModelConfig, seq_len: int) -> float:
  n = model_lib.num_params(model_config) - model_config.vocab_size * model_config.d_model
  attention = 6 * model_config.n_layers * model_config.n_heads * model_config.head_dim * seq_len
  return 6.0 * n + attention


@functools.cache
def measured_matmul_peak(dtype: str = "float32", size: int = 1024, repeats: int = 5) -> float:
  """FLOP/s of a large jitted matmul of random operands on the default device: the CPU's
  practical peak (random, not constant: some chips multiply constant data faster)."""
  a = jax.random.normal(jax.random.key(0), (size, size), model_lib.DTYPES[dtype])
  matmul = jax.jit(lambda x: x @ x)
  matmul(a).block_until_ready()
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    matmul(a).block_until_ready()
    best = min(best, time.perf_counter() - start)
  return 2 * size**3 / best


def datasheet_peak_flops(device_kind: str) -> float:
  """The dense bf16 FLOP/s of an accelerator, by its `device_kind` (a JAX device's, or the
  name torch.cuda gives the same chip)."""
  for prefix, peak in _PEAK_FLOPS.items():
    if device_kind.startswith(prefix):
      return peak
  raise ValueError(f"no peak FLOP/s known for device kind {device_kind!r}")


def peak_flops_per_device(dtype: str = "float32") -> float:
  device = jax.devices()[0]
  if device.platform == "cpu":
    return measured_matmul_peak(dtype)
  return datasheet_peak_flops(device.device_kind)


def records(workdir: str | epath.PathLike) -> list[dict]:
  """The records of DIR/metrics.jsonl; a torn last line (a process killed while appending) is
  left out."""
  path = epath.Path(workdir) / "metrics.jsonl"
  if not path.exists():
    return []
  lines = path.read_text().splitlines()
  parsed = []
  for number, line in enumerate(lines, 1):
    try:
      parsed.append(json.loads(line))
    except json.JSONDecodeError:
      if number < len(lines):
        raise ValueError(f"{path}:{number} is not a JSON object: {line[:80]!r}") from None
  return parsed


class Writer:
  """Appends one JSON object per logged step to metrics.jsonl and mirrors scalars to TensorBoard.

  A run that (re)starts at `start_step` first drops what an earlier attempt logged past it, so
  that a resumed run's log reads like an uninterrupted one. Only process 0 writes; other
  processes get a no-op writer.
  """

  def __init__(self, workdir: str | epath.PathLike, tensorboard: bool = True, start_step: int = 0):
    self.active = jax.process_index() == 0
    self.path = epath.Path(workdir) / "metrics.jsonl"
    self.tb = None
    if self.active:
      self.path.parent.mkdir(parents=True, exist_ok=True)
      kept = [r for r in records(workdir) if r["step"] <= start_step]
      files.write_atomic(self.path, "".join(json.dumps(r) + "\n" for r in kept))
      if tensorboard:
        from tensorboardX import SummaryWriter  # only runs that write TensorBoard load it

        # purge_step: TensorBoard hides the earlier attempt's events from start_step + 1 on.
        self.tb = SummaryWriter(str(epath.Path(workdir) / "tensorboard"), purge_step=start_step + 1)

  def write(self, step: int, scalars: Mapping[str, Any]) -> None:
    if not self.active:
      return
    record = {"step": int(step), **{k: float(v) for k, v in scalars.items()}}
    with self.path.open("a") as f:
      f.write(json.dumps(record) + "\n")
    if self.tb is not None:
      for key, value in scalars.items():
        self.tb.add_scalar(key, float(value), int(step))

  def close(self) -> None:
    if self.tb is not None:
      self.tb.close()
