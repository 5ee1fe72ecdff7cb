"""Math benchmarks (GSM8K's test split, DeepMind Mathematics) as MAmmoTH evaluates them: greedy
answers to Alpaca prompts (phi_jax.instructions), by chain of thought or by a program.

    # a checkpoint: writes OUT/results.jsonl and OUT/summary.json, returns the summary
    math_eval.evaluate_checkpoint(cfg, "gsm8k", "runs/phi1", "runs/phi1/eval/gsm8k")
    # any generator (prompts -> texts) and program runner (programs -> sandbox results)
    rows = math_eval.evaluate(problems, generate_fn, math_eval.program_runner(cfg.eval), "hybrid")
    summary = math_eval.summarize(rows, "gsm8k", "hybrid")

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
"""

from __future__ import annotations

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

GenerateFn = Callable[[Sequence[str]], list[str]]
RunProgramsFn = Callable[[Sequence[str]], list[sandbox.Result]]


def problems(cfg: Any, benchmark: str) -> list[math_problems.MathProblem]:
  """The problems of `benchmark` under a run config's `eval` section (the first
  `eval.max_problems` of them when that is set)."""
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
  if int(cfg.eval.max_problems):  # the first N only, for quick looks
    chosen = chosen[: int(cfg.eval.max_problems)]
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
  if mode not in MODES:
    raise ValueError(f"mode={mode!r} is not one of {tuple(MODES)}")
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
    texts = generate_fn(
      [instructions.prompt(p.question + instructions.POT_TRIGGER) for p in problems]
    )
    runnable = [i for i, text in enumerate(texts) if "print(" in text]
    results = dict(zip(runnable, run_programs_fn([texts[i] for i in runnable]) if runnable else []))
    for i, text in enumerate(texts):
      program, prediction = _attempt(text, results.get(i))
      rows[i].update(mode_used="pot", output=text, program=program, prediction=prediction)
  if mode != "pot":
    again = [i for i, row in enumerate(rows) if row["prediction"] is None]
    texts = generate_fn([instructions.prompt(problems[i].question) for i in again]) if again else []
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
  if mode not in MODES:
    raise ValueError(f"mode={mode!r} is not one of {tuple(MODES)}")
  checkpoint_dir, out = files.existing(checkpoint_dir, "checkpoint"), Path(files.absolute(out))
  chosen = problems(cfg, benchmark)
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
  scoring.write_jsonl(out / "results.jsonl", rows)
  files.write_atomic(out / "summary.json", json.dumps(summary, indent=2) + "\n")
  return summary
