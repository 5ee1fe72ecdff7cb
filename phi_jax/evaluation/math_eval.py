"""Math benchmarks (GSM8K's test split, DeepMind Mathematics) as MAmmoTH evaluates them: greedy
answers to Alpaca prompts (phi_jax.instructions), by chain of thought or by a program.

    # a checkpoint: writes OUT/results.jsonl and OUT/summary.json, returns the summary
    math_eval.evaluate_checkpoint(cfg, "gsm8k", "runs/phi1", "runs/phi1/eval/gsm8k")
    # any generator (prompts -> texts) and program runner (programs -> sandbox results)
    rows = math_eval.evaluate(problems, generate_fn, math_eval.program_runner(cfg.eval), "hybrid")
    summary = math_eval.summarize(rows, "gsm8k", "hybrid")
    # texts written elsewhere, one JSON line each: {"task_id", "pot" and/or "cot"}
    math_eval.score_file(cfg, "gsm8k", "answers.jsonl", mode="hybrid")

Modes:

* `cot`: the prompt is the question; the answer is read from the text (`math_answers`:
  after the last "The answer is" or "####", else the last number).
* `pot`: the prompt is the question + POT_TRIGGER ("Let's write a program."). A text with
  `print(` in it runs in the sandbox (`eval.program_timeout_s` each, the `eval` section's
  isolation and limits); the last line it printed is the answer. A program that raises, times
  out, prints nothing or prints a non-number gives no answer, nor does a text without `print(`.
* `hybrid` (MAmmoTH's default): PoT, then CoT for exactly the problems PoT gave no answer.

Generation is greedy whatever the config's sampling says, and stops at end-of-text or where the
model begins another Alpaca turn (instructions.STOP).

Each row of results.jsonl: `task_id`, `question`, `gold`, `mode_used` ("pot" or "cot": the
mode whose answer is the prediction), `output` (that mode's text), `program` (the PoT attempt,
null in cot mode: `source`, the model's text; `status`, one of PROGRAM_STATUSES; `detail`, why
it failed; `printed`, what it wrote to stdout and stderr), `prediction` (null when none) and
`correct`. summary.json: benchmark, mode, problems, accuracy, and per mode used its problems,
answered (those with a prediction), correct and accuracy.

Given texts (`score_file`): each line of a JSONL file names a problem (`task_id`, e.g.
"gsm8k/test/0") and gives what a model wrote for it: `pot` for the question + POT_TRIGGER, `cot`
for the question alone; a mode reads the fields of the modes its answers come from (MODES), and
scores them as a model's texts would be (programs in the same sandbox). Each problem at most
once; the rows follow the file's order. FILE_results.jsonl and FILE_summary.json go beside FILE.
"""

from __future__ import annotations

import collections
import dataclasses
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from absl import logging

from phi_jax import decode, files, instructions, vocabularies
from phi_jax.evaluation import math_answers, math_problems, sandbox, scoring

BENCHMARKS = ("gsm8k", "deepmind_math")
# Each mode and the modes its answers come from.
MODES = {"cot": ("cot",), "pot": ("pot",), "hybrid": ("pot", "cot")}
# "answered" is the only status that gives a prediction; "no program": the text has no `print(`.
PROGRAM_STATUSES = (
  "answered",
  "no program",
  "failed",
  "timeout",
  "printed nothing",
  "not a number",
)

# What a file of given texts (`score_file`) holds in each mode's field.
TEXT_FIELDS = {
  "pot": f"'pot', the answer to the question followed by {instructions.POT_TRIGGER.strip()!r}",
  "cot": "'cot', the answer to the question alone",
}

GenerateFn = Callable[[Sequence[str]], list[str]]
# (kind, indices) -> the texts answering problems[i] for each index, kind "pot" or "cot".
TextsFn = Callable[[str, Sequence[int]], list[str]]
RunProgramsFn = Callable[[Sequence[str]], list[sandbox.Result]]


def _check_mode(mode: str) -> None:
  if mode not in MODES:
    raise ValueError(f"mode={mode!r} is not one of {tuple(MODES)}")


def problems(cfg: Any, benchmark: str) -> list[math_problems.MathProblem]:
  """All the problems of `benchmark` under a run config's `eval` section."""
  if benchmark == "gsm8k":
    chosen = math_problems.gsm8k(cfg.eval.gsm8k_path or None, split="test")
  elif benchmark == "deepmind_math":
    chosen = math_problems.deepmind_math(
      tuple(cfg.eval.deepmind_modules),
      per_module=int(cfg.eval.deepmind_per_module),
      seed=int(cfg.eval.deepmind_seed),
    )
  else:
    raise ValueError(f"benchmark={benchmark!r} is not a math benchmark: one of {BENCHMARKS}")
  return chosen


def program_runner(eval_cfg: Any) -> RunProgramsFn:
  """Runs programs in the sandbox with a run config's `eval` settings: isolation, workers,
  limits, and `program_timeout_s` for each program."""

  def run(programs: Sequence[str]) -> list[sandbox.Result]:
    return sandbox.run_many(
      [sandbox.Job(program=program, test="") for program in programs],
      float(eval_cfg.program_timeout_s),
      workers=int(eval_cfg.workers),
      limits=scoring.sandbox_limits(eval_cfg),
      isolation=eval_cfg.isolation,
    )

  return run


def _attempt(text: str, result: sandbox.Result | None) -> tuple[dict, str | None]:
  """(the `program` field, the prediction) of a PoT text and its run (None: not run)."""
  program = {"source": text, "status": "no program", "detail": "", "printed": ""}
  if result is None:
    return program, None
  answer = math_answers.answer_from_output(result.output)
  program.update(detail=result.detail, printed=result.output)
  if not result.passed:
    program["status"] = result.status
  elif answer is None:
    program["status"] = "printed nothing"
  elif math_answers.number(answer) is None:
    program["status"] = "not a number"
  else:
    program["status"] = "answered"
    return program, answer
  return program, None


def evaluate(
  problems: Sequence[math_problems.MathProblem],
  generate_fn: GenerateFn,
  run_programs_fn: RunProgramsFn,
  mode: str = "hybrid",
) -> list[dict]:
  """One row per problem (module docstring), in problem order. `generate_fn` continues each of a
  list of prompts; `run_programs_fn` runs each of a list of programs (`program_runner`)."""

  def texts(kind: str, indices: Sequence[int]) -> list[str]:
    trigger = instructions.POT_TRIGGER if kind == "pot" else ""
    return generate_fn([instructions.prompt(problems[i].question + trigger) for i in indices])

  return score(problems, texts, run_programs_fn, mode)


def score(
  problems: Sequence[math_problems.MathProblem],
  texts_fn: TextsFn,
  run_programs_fn: RunProgramsFn,
  mode: str = "hybrid",
) -> list[dict]:
  """`evaluate` with the texts from `texts_fn` (TextsFn), asked only for those `mode` reads: in
  hybrid, the CoT texts of the problems whose PoT text gave no answer."""
  _check_mode(mode)
  rows = [
    {
      "task_id": p.task_id,
      "question": p.question,
      "gold": p.answer,
      "mode_used": None,
      "output": None,
      "program": None,
      "prediction": None,
    }
    for p in problems
  ]
  if mode != "cot":
    texts = texts_fn("pot", range(len(problems)))
    runnable = [i for i, text in enumerate(texts) if "print(" in text]
    results = dict(zip(runnable, run_programs_fn([texts[i] for i in runnable]) if runnable else []))
    for i, text in enumerate(texts):
      program, prediction = _attempt(text, results.get(i))
      rows[i].update(mode_used="pot", output=text, program=program, prediction=prediction)
  if mode != "pot":
    again = [i for i, row in enumerate(rows) if row["prediction"] is None]
    texts = texts_fn("cot", again) if again else []
    for i, text in zip(again, texts):
      rows[i].update(mode_used="cot", output=text, prediction=math_answers.extract_answer(text))
  for row in rows:
    row["correct"] = math_answers.same_answer(row["prediction"], row["gold"])
  return rows


def summarize(rows: Sequence[dict], benchmark: str, mode: str) -> dict:
  """Accuracy over all rows, and per mode answers came from: problems, answered, correct,
  accuracy."""
  by_mode = {}
  for used in MODES[mode]:
    chosen = [row for row in rows if row["mode_used"] == used]
    correct = sum(row["correct"] for row in chosen)
    by_mode[used] = {
      "problems": len(chosen),
      "answered": sum(row["prediction"] is not None for row in chosen),
      "correct": correct,
      "accuracy": correct / len(chosen) if chosen else 0.0,
    }
  return {
    "benchmark": benchmark,
    "mode": mode,
    "problems": len(rows),
    "accuracy": sum(row["correct"] for row in rows) / len(rows) if rows else 0.0,
    "by_mode": by_mode,
  }


def evaluate_checkpoint(
  cfg: Any,
  benchmark: str,
  checkpoint_dir: str,
  out: str | Path,
  *,
  tokenizer: str = "",
  mode: str = "hybrid",
  step: int | None = None,
) -> dict:
  """Answers `benchmark` with a checkpoint's greedy decoding, in batches of
  `eval.batch_size`; writes OUT/results.jsonl and OUT/summary.json; returns the summary. `cfg`:
  a run config, its paths already resolved by the entry point (configs.resolve_paths)."""
  _check_mode(mode)
  checkpoint_dir, out = files.existing(checkpoint_dir, "checkpoint"), Path(files.absolute(out))
  chosen = problems(cfg, benchmark)
  if int(cfg.eval.max_problems):  # the first N only, for quick looks
    chosen = chosen[: int(cfg.eval.max_problems)]
  if mode != "cot":
    sandbox.check_available(cfg.eval.isolation)  # before minutes of decoding, not after
  vocab = vocabularies.for_config(cfg, tokenizer)
  # Greedy, as MAmmoTH evaluates, whatever the config samples with elsewhere.
  sampling = dataclasses.replace(
    decode.sampling_config(cfg, vocabularies.eot_id(vocab)), temperature=0.0
  )
  decoder = decode.load_decoder(checkpoint_dir, sampling, step)
  batch_size = int(cfg.eval.batch_size)
  if batch_size < 1:
    raise ValueError(f"eval.batch_size={batch_size} must be >= 1")

  def generate(prompts: Sequence[str]) -> list[str]:
    texts = []
    for first in range(0, len(prompts), batch_size):
      batch = prompts[first : first + batch_size]
      texts += decode.generate_text(decoder, vocab, batch, stop=instructions.STOP)
      logging.info("%s: decoded %d of %d prompts", benchmark, len(texts), len(prompts))
    return texts

  rows = evaluate(chosen, generate, program_runner(cfg.eval), mode)
  summary = {**summarize(rows, benchmark, mode), "checkpoint": str(checkpoint_dir)}
  _write(rows, summary, out / "results.jsonl", out / "summary.json")
  return summary


def score_file(cfg: Any, benchmark: str, samples_path: str | Path, *, mode: str = "hybrid") -> dict:
  """Scores the texts of a JSONL file (module docstring: its fields) on `benchmark`; writes
  FILE_results.jsonl and FILE_summary.json beside FILE; returns the summary. `cfg`: a run
  config, its paths already resolved by the entry point (configs.resolve_paths)."""
  _check_mode(mode)
  samples_path = files.existing(samples_path, "samples file")
  kinds = MODES[mode]
  samples = scoring.read_samples(
    samples_path,
    ("task_id", *kinds),
    hint=f" (eval.math_mode={mode} reads {' and '.join(TEXT_FIELDS[k] for k in kinds)})",
  )
  by_id = {p.task_id: p for p in problems(cfg, benchmark)}
  scoring.check_task_ids(samples, list(by_id))
  repeated = [i for i, n in collections.Counter(s["task_id"] for s in samples).items() if n > 1]
  if repeated:
    raise ValueError(
      f"{samples_path}: {len(repeated)} task ids appear more than once, e.g. {repeated[:3]}; "
      f"give each problem one line, with the texts of all the modes it needs"
    )

  def texts(kind: str, indices: Sequence[int]) -> list[str]:
    return [samples[i][kind] for i in indices]

  chosen = [by_id[s["task_id"]] for s in samples]
  rows = score(chosen, texts, program_runner(cfg.eval), mode)
  summary = {**summarize(rows, benchmark, mode), "samples": samples_path}
  _write(rows, summary, f"{samples_path}_results.jsonl", f"{samples_path}_summary.json")
  return summary


def _write(
  rows: Sequence[dict], summary: dict, results: str | Path, summary_path: str | Path
) -> None:
  scoring.write_jsonl(results, rows)
  files.write_atomic(summary_path, json.dumps(summary, indent=2) + "\n")
