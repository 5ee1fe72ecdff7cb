"""The README's TPU AOT table: for each config, slice and remat policy, the largest micro-batch
that phi_jax.aot.fit finds at the paper's batch, with its memory, FLOPs and the compiler's
step-time estimate. libtpu, no TPU.

    PYTHONPATH=. python bench/aot_table.py [--configs=phi1,phi1_small]
        [--topologies=v4:2x2x1,v5e:2x4,v5p:2x2x1] [--remats=none,dots_no_batch,full]
        [--out=aot_table.jsonl]

Each row is appended to --out as one JSON object as soon as it is measured (a long run keeps
what it has); the markdown table is printed at the end. The configs are used as they are (the
phi-1 configs: splash attention, bf16, resid dropout 0.1, fit margin 0.1), with micro_batch
"auto" and each remat policy in turn.
"""

from __future__ import annotations

import argparse
import json
import time

from phi_jax import aot, configs

GiB = 2**30


def measure(config: str, topology: str, remat: str) -> dict:
  cfg = configs.get(config)
  cfg.train.micro_batch = configs.AUTO
  cfg.model.remat = remat
  row = dict(config=config, topology=topology, remat=remat)
  start = time.perf_counter()
  try:
    chosen = aot.fit(cfg, topology)
  except aot.MemoryFitError as e:
    return dict(row, fits=False, error=str(e), fit_s=time.perf_counter() - start)
  report, record = chosen["report"], chosen["record"]
  return dict(
    row,
    fits=True,
    micro_batch=record["micro_batch"],
    micro_batches=report["micro_batches"],
    total_gib=report["total_bytes"] / GiB,
    peak_gib=report.get("peak_bytes", 0) / GiB,
    budget_gib=record["budget_bytes"] / GiB,
    limit_gib=record["limit_bytes"] / GiB,
    flops_ratio=report["flops_ratio"],
    compiled_flops=report["compiled_flops"],
    analytic_flops=report["analytic_flops"],
    estimated_step_s=report.get("estimated_step_s"),
    estimated_tokens_per_s_per_chip=report.get("estimated_tokens_per_s_per_chip"),
    estimated_mfu=report.get("estimated_mfu"),
    tried=[(t["micro_batch"], t["fits"], round(t["compile_s"], 1)) for t in record["trials"]],
    fit_s=time.perf_counter() - start,
  )


def markdown(rows: list[dict]) -> str:
  lines = [
    "| config | slice | remat | largest micro_batch (accum. steps) | GiB per chip total (peak) "
    "| budget GiB | compiled / analytic FLOPs | compiler's estimate: s/step, tokens/s/chip, MFU "
    "| fit s |",
    "|---|---|---|---|---|---|---|---|---|",
  ]
  for r in rows:
    if r["fits"]:
      cells = (
        f"{r['micro_batch']} ({r['micro_batches']})",
        f"{r['total_gib']:.2f} ({r['peak_gib']:.2f})",
        f"{r['budget_gib']:.2f}",
        f"{r['flops_ratio']:.3f}",
        f"{r['estimated_step_s']:.1f}, {r['estimated_tokens_per_s_per_chip']:,.0f}, "
        f"{r['estimated_mfu']:.1%}",
      )
    else:
      cells = ("none fits", "", "", "", "")
    lines.append(
      f"| `{r['config']}` | {r['topology']} | {r['remat']} | "
      + " | ".join(cells)
      + f" | {r['fit_s']:.0f} |"
    )
  return "\n".join(lines)


def main(argv=None):
  parser = argparse.ArgumentParser()
  parser.add_argument("--configs", default="phi1,phi1_small")
  parser.add_argument("--topologies", default="v4:2x2x1,v5e:2x4,v5p:2x2x1")
  parser.add_argument("--remats", default="none,dots_no_batch,full")
  parser.add_argument("--out", default="aot_table.jsonl")
  args = parser.parse_args(argv)
  rows = []
  for config in args.configs.split(","):
    for topology in args.topologies.split(","):
      for remat in args.remats.split(","):
        rows.append(measure(config, topology, remat))
        with open(args.out, "a") as f:
          f.write(json.dumps(rows[-1]) + "\n")
  print(markdown(rows))


if __name__ == "__main__":
  main()
