"""The main job's report: a summary table (printed and written as JSON) and loss-curve PNGs."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from phi_jax import files

# (key in a stage row, column heading, format)
COLUMNS = (
  ("stage", "stage", "{}"),
  ("time_s", "time (s)", "{:.0f}"),
  ("tokens", "tokens", "{:,}"),
  ("loss", "train loss", "{:.3f}"),
  ("eval_loss", "held-out loss", "{:.3f}"),
  ("humaneval_pass@1", "HumanEval pass@1", "{:.3f}"),
  ("mbpp_pass@1", "MBPP pass@1", "{:.3f}"),
  ("humaneval_solution_loss", "HumanEval solution loss", "{:.3f}"),
  ("mbpp_solution_loss", "MBPP solution loss", "{:.3f}"),
  ("gsm8k_accuracy", "GSM8K accuracy", "{:.3f}"),
  ("deepmind_math_accuracy", "DeepMind Math accuracy", "{:.3f}"),
)
# Columns shown whatever the rows hold; the benchmarks' only when some row has a value.
_ALWAYS = ("stage", "time_s", "tokens", "loss", "eval_loss")


def read_metrics(path: str | Path) -> list[dict]:
  """The JSON lines of a run's metrics.jsonl (empty when the run has not logged yet)."""
  path = Path(path)
  if not path.exists():
    return []
  return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _cell(row: dict, key: str, fmt: str) -> str:
  value = row.get(key)
  if value is None or (isinstance(value, float) and math.isnan(value)):
    return "-"
  return fmt.format(value)


def table(rows: Sequence[dict]) -> str:
  """A fixed-width text table of the stage rows; absent values print as '-'."""
  columns = [c for c in COLUMNS if c[0] in _ALWAYS or any(c[0] in row for row in rows)]
  cells = [[heading for _, heading, _ in columns]]
  cells += [[_cell(row, key, fmt) for key, _, fmt in columns] for row in rows]
  widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
  lines = [
    "  ".join(
      cell.ljust(width) if i == 0 else cell.rjust(width)
      for i, (cell, width) in enumerate(zip(line, widths))
    )
    for line in cells
  ]
  lines.insert(1, "  ".join("-" * width for width in widths))
  return "\n".join(lines)


def _series(records: Iterable[dict], key: str) -> tuple[list[int], list[float]]:
  points = [(r["step"], r[key]) for r in records if key in r]
  return [s for s, _ in points], [v for _, v in points]


def pyplot():
  """matplotlib's pyplot drawing to files only (no display on TPU VMs and CI)."""
  import matplotlib  # only reports draw, and "Agg" must be chosen before pyplot loads

  matplotlib.use("Agg")
  from matplotlib import pyplot as plt  # after the backend choice above

  return plt


def plot_losses(name: str, records: Sequence[dict], path: str | Path) -> Path:
  """PNG of one run's training loss (and held-out loss where evaluated) against the step."""
  plt = pyplot()
  figure, axes = plt.subplots(figsize=(7, 4), dpi=100)
  for key, label, style in (("loss", "train", "-"), ("eval_loss", "held-out", "o--")):
    steps, values = _series(records, key)
    if steps:
      axes.plot(steps, values, style, label=label)
  axes.set(title=f"{name} loss", xlabel="step", ylabel="cross-entropy (nats/token)")
  axes.grid(alpha=0.3)
  axes.legend()
  figure.tight_layout()
  path = Path(path)
  figure.savefig(path)
  plt.close(figure)
  return path


def write(
  out_dir: str | Path,
  rows: Sequence[dict],
  runs: dict[str, Sequence[dict]],
  extra: dict[str, Any] | None = None,
) -> dict:
  """Writes OUT/report.json and OUT/<run>_loss.png for every run; returns the report."""
  out_dir = Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  plots = {
    name: str(plot_losses(name, records, out_dir / f"{name}_loss.png"))
    for name, records in runs.items()
    if records
  }
  report = {"stages": list(rows), "plots": plots, **(extra or {})}
  files.write_atomic(out_dir / "report.json", json.dumps(report, indent=2, sort_keys=True))
  return report
