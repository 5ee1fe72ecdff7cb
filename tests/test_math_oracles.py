"""Oracles of math evaluation on GSM8K's test split: texts whose verdicts are known without the
scorer, scored through math_eval's own path (its answer extraction, the real sandbox).

* GSM8K's gold rationales, written as the build's CoT training outputs (what a model tuned on
  them writes) and as GSM8K writes them (annotations and `#### answer`), are all right in cot
  mode; the same with the final answer changed are all wrong.
* The programs the build derives from the calculator annotations (math_instruct.gsm8k_program)
  each print the result of the last annotation: in pot mode they are right exactly where that
  result is the gold answer, which the test reads from the data without running anything.
* Garbage (nothing, random letters, a program that raises after printing the answer, one that
  prints nothing, one that prints words) is wrong in every mode.
* Hybrid over texts of every kind at once takes PoT where the program answers and CoT where it
  does not, and asks for no other CoT text.
* Hostile programs (test_sandbox's probes, bounded by construction) print the answer only if the
  sandbox fails to stop them: contained, and wrong.
* The command line scores a file of such texts (`--samples`) and names a bad file's fault.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import math
import random
import string

import pytest
import test_cli  # its way of running a program of the project and reading its last line
import test_sandbox  # its hostile probes and its census of sandbox processes

from data_pipeline import math_instruct
from phi_jax import configs
from phi_jax.evaluation import math_eval, math_problems, sandbox

STYLES = ("mathinstruct", "gsm8k")


@pytest.fixture(scope="module")
def gsm8k_test(shared_data):
  problems = math_problems.gsm8k(shared_data / "gsm8k", split="test")
  assert len(problems) == 1319
  return problems


class Given:
  """A math_eval.TextsFn over fixed texts per kind; records the indices each kind was asked for."""

  def __init__(self, **texts: list[str]):
    self.texts, self.asked = texts, {}

  def __call__(self, kind, indices):
    self.asked[kind] = list(indices)
    return [self.texts[kind][i] for i in indices]


def rationale(problem: math_problems.MathProblem, answer: str, style: str) -> str:
  """The problem's gold rationale ending in `answer`: as the build trains a model to write it,
  or as GSM8K writes it."""
  if style == "mathinstruct":
    return math_instruct.gsm8k_cot(dataclasses.replace(problem, answer=answer))["output"]
  return f"{problem.rationale}\n#### {answer}"


def changed(answer: str) -> str:
  """Another answer (GSM8K's are integers, some with thousands separators)."""
  return str(int(answer.replace(",", "")) + 1)


def value(text: str) -> float:
  """A GSM8K number, read without math_answers (the oracle must not share the scorer's code)."""
  return float(text.replace(",", ""))


def last_result(problem: math_problems.MathProblem) -> float:
  """The result of the problem's last calculator annotation: what its derived program prints."""
  return value(math_problems.ANNOTATION.findall(problem.rationale)[-1][1])


@pytest.mark.parametrize("style", STYLES)
def test_gold_rationales_are_all_right_in_cot_and_all_wrong_with_the_answer_changed(
  gsm8k_test, math_runner, style
):
  right = Given(cot=[rationale(p, p.answer, style) for p in gsm8k_test])
  rows = math_eval.score(gsm8k_test, right, math_runner, "cot")
  assert [r["task_id"] for r in rows if not r["correct"]] == []
  assert math_eval.summarize(rows, "gsm8k", "cot")["by_mode"]["cot"] == {
    "problems": 1319,
    "answered": 1319,
    "correct": 1319,
    "accuracy": 1.0,
  }
  wrong = Given(cot=[rationale(p, changed(p.answer), style) for p in gsm8k_test])
  rows = math_eval.score(gsm8k_test, wrong, math_runner, "cot")
  assert [r["task_id"] for r in rows if r["correct"]] == []
  assert all(value(r["prediction"]) == value(r["gold"]) + 1 for r in rows)


@pytest.mark.slow
def test_derived_programs_are_right_in_pot_exactly_where_their_last_step_is_the_answer(
  gsm8k_test, math_runner
):
  programs = [math_instruct.gsm8k_program(p.rationale) for p in gsm8k_test]
  derived = [(p, text) for p, text in zip(gsm8k_test, programs) if text is not None]
  last = [last_result(p) for p, _ in derived]
  expected = [result == value(p.answer) for result, (p, _) in zip(last, derived)]
  assert (len(derived), sum(expected)) == (1300, 1207)
  # Every 4th program runs in the sandbox, to keep the suite within its time budget
  # (docs/evaluation.md has the run of all of them).
  derived, last, expected = derived[::4], last[::4], expected[::4]
  rows = math_eval.score(
    [p for p, _ in derived], Given(pot=[text for _, text in derived]), math_runner, "pot"
  )
  # Each program ran and printed what its last annotation says...
  assert [r["task_id"] for r in rows if r["program"]["status"] != "answered"] == []
  assert [
    r["task_id"]
    for r, result in zip(rows, last)
    if not math.isclose(float(r["prediction"]), result, rel_tol=1e-6)
  ] == []
  # ...so it is right where that is the gold answer, and nowhere else.
  assert [r["correct"] for r in rows] == expected
  assert False in expected


def test_garbage_is_wrong_in_every_mode(gsm8k_test, math_runner):
  rng = random.Random(0)

  def letters(gold: str) -> str:
    return "".join(rng.choice(string.ascii_letters + " .,\n") for _ in range(300))

  # name -> (the text for a problem of that gold answer, the status of its PoT attempt)
  garbage = {
    "nothing": (lambda gold: "", "no program"),
    "random letters": (letters, "no program"),
    "raises after printing the answer": (
      lambda gold: f"print({gold!r})\nraise ValueError('no')\n",
      "failed",
    ),
    "prints nothing": (
      lambda gold: f"answer = {gold!r}\nif answer is None:\n  print(answer)\n",
      "printed nothing",
    ),
    "prints words": (lambda gold: f"print('It is {gold}, I think')\n", "not a number"),
  }
  chosen = gsm8k_test[:30]
  for name, (text, status) in garbage.items():
    texts = [text(p.answer) for p in chosen]
    for mode in ("pot", "hybrid"):
      rows = math_eval.score(
        chosen, Given(pot=texts, cot=[letters(p.answer) for p in chosen]), math_runner, mode
      )
      assert {r["program"]["status"] for r in rows} == {status}, name
      assert math_eval.summarize(rows, "gsm8k", mode)["accuracy"] == 0.0, (name, mode)
      assert {r["mode_used"] for r in rows} == {mode.replace("hybrid", "cot")}
    if status == "no program":  # a text a chain of thought could be
      rows = math_eval.score(chosen, Given(cot=texts), math_runner, "cot")
      assert [r["prediction"] for r in rows] == [None] * len(chosen), name


def test_hybrid_takes_the_program_where_it_answers_and_the_chain_of_thought_elsewhere(
  gsm8k_test, math_runner
):
  verified = [
    (p, program)
    for p in gsm8k_test
    if (program := math_instruct.gsm8k_program(p.rationale)) and last_result(p) == value(p.answer)
  ]

  def raises(program: str) -> str:
    return program + "raise RuntimeError('after the answer')\n"

  def hangs(program: str) -> str:
    return "while True:\n  pass\n" + program

  def off_by_one(program: str) -> str:
    return program.replace("\nprint(", "\nprint(1 + ")

  # case -> (its PoT text, its CoT text is right, the mode used, right)
  cases = {
    "program answers": (lambda program: program, False, "pot", True),
    "program answers wrongly": (off_by_one, True, "pot", False),
    "program raises": (raises, True, "cot", True),
    "program times out": (hangs, True, "cot", True),
    "program raises and CoT is wrong": (raises, False, "cot", False),
  }
  chosen, pot, cot, expected = [], [], [], []
  for (problem, program), (make, cot_right, mode, right) in zip(
    verified, [case for case in cases.values() for _ in range(4)]
  ):
    chosen.append(problem)
    pot.append(make(program))
    answer = problem.answer if cot_right else changed(problem.answer)
    cot.append(rationale(problem, answer, "mathinstruct"))
    expected.append((mode, right))
  given = Given(pot=pot, cot=cot)
  rows = math_eval.score(chosen, given, math_runner, "hybrid")
  assert [(r["mode_used"], r["correct"]) for r in rows] == expected
  assert given.asked["cot"] == [i for i, (mode, _) in enumerate(expected) if mode == "cot"]
  statuses = [r["program"]["status"] for r in rows]
  assert statuses == ["answered"] * 8 + ["failed"] * 4 + ["timeout"] * 4 + ["failed"] * 4
  assert math_eval.summarize(rows, "gsm8k", "hybrid")["by_mode"] == {
    "pot": {"problems": 8, "answered": 8, "correct": 4, "accuracy": 0.5},
    "cot": {"problems": 12, "answered": 12, "correct": 8, "accuracy": 8 / 12},
  }


def test_hostile_programs_are_contained_and_wrong(gsm8k_test, math_runner):
  # name -> a program that prints the answer (GOLD) only if the sandbox did not stop it
  hostile = {
    "fork_loop": test_sandbox.PROBES["fork_loop"] + "if made == 300:\n  print(GOLD)\n",
    "memory_grab": test_sandbox.PROBES["memory_grab"] + "if 'block' in globals():\n  print(GOLD)\n",
    "infinite_output": "print(GOLD)\n" + test_sandbox.PROBES["infinite_output"],
  }
  chosen = gsm8k_test[: len(hostile)]
  texts = [program.replace("GOLD", repr(p.answer)) for program, p in zip(hostile.values(), chosen)]
  rows = dict(zip(hostile, math_eval.score(chosen, Given(pot=texts), math_runner, "pot")))
  assert {name: r["correct"] for name, r in rows.items()} == dict.fromkeys(hostile, False)
  assert test_sandbox._sandbox_processes() == []
  printed = {name: r["program"]["printed"] for name, r in rows.items()}
  assert "fork refused after" in printed["fork_loop"]
  assert "memory refused" in printed["memory_grab"]
  # The flood printed the answer first, but a run that times out answers nothing.
  flood = rows["infinite_output"]["program"]
  assert flood["status"] == "timeout" and flood["printed"].startswith(chosen[2].answer)
  assert len(flood["printed"]) <= sandbox.Limits().output_bytes


def test_the_command_line_scores_a_file_of_texts(gsm8k_test, tmp_path):
  first, second, third = gsm8k_test[:3]
  program = math_instruct.gsm8k_program(first.rationale)
  samples = [
    {"task_id": first.task_id, "pot": program, "cot": "no idea"},
    {
      "task_id": second.task_id,
      "pot": "print(1 / 0)",
      "cot": rationale(second, second.answer, "gsm8k"),
    },
    {"task_id": third.task_id, "pot": "", "cot": rationale(third, changed(third.answer), "gsm8k")},
  ]
  good, unknown = tmp_path / "answers.jsonl", tmp_path / "unknown.jsonl"
  good.write_text("".join(json.dumps(s) + "\n" for s in samples))
  unknown.write_text(json.dumps({**samples[0], "task_id": "gsm8k/test/1319"}) + "\n")
  flags = ["phi_jax.evaluate", "--benchmark=gsm8k", "--config.eval.program_timeout_s=2"]
  # Concurrently: each spends its time importing, not waiting on the other.
  with concurrent.futures.ThreadPoolExecutor(2) as pool:
    scored, refused = pool.map(
      lambda path: test_cli._run([*flags, f"--samples={path}"], cwd=tmp_path), (good, unknown)
    )
  assert scored.returncode == 0, scored.stderr[-3000:]
  summary = json.loads(scored.stdout[scored.stdout.index("{") :])
  assert json.loads((tmp_path / "answers.jsonl_summary.json").read_text()) == summary
  assert (summary["mode"], summary["problems"], summary["samples"]) == ("hybrid", 3, str(good))
  rows = [
    json.loads(line) for line in (tmp_path / "answers.jsonl_results.jsonl").read_text().splitlines()
  ]
  assert [(r["task_id"], r["mode_used"], r["correct"]) for r in rows] == [
    (first.task_id, "pot", True),
    (second.task_id, "cot", True),
    (third.task_id, "cot", False),
  ]
  assert rows[1]["program"]["status"] == "failed" and rows[2]["program"]["status"] == "no program"
  assert refused.returncode == 1 and test_cli._last_line(refused).endswith(
    "ValueError: samples name 1 unknown task ids, e.g. ['gsm8k/test/1319']; "
    "known: gsm8k/test/0 ... gsm8k/test/1318 (1319 problems)"
  )


@pytest.mark.parametrize(
  ("lines", "mode", "error"),
  [
    (['{"task_id": "gsm8k/test/0", "cot": "4"}', "{not json"], "cot", r"bad.jsonl:2: not JSON"),
    (
      ['{"task_id": "gsm8k/test/0", "cot": "4"}'],
      "hybrid",
      r"bad.jsonl:1: a sample needs string 'task_id' and 'pot' and 'cot' \(eval.math_mode=hybrid",
    ),
    (
      ['{"task_id": 0, "completion": "4"}'],
      "cot",
      r"bad.jsonl:1: a sample needs string 'task_id' and 'cot'",
    ),
    (
      ['{"task_id": "gsm8k/test/0", "pot": "print(4)"}'] * 2,
      "pot",
      r"1 task ids appear more than once, e.g. \['gsm8k/test/0'\]; give each problem one line",
    ),
    ([""], "cot", r"bad.jsonl holds no samples"),
    (['{"task_id": "gsm8k/test/0", "cot": "4"}'], "both", r"mode='both' is not one of"),
  ],
)
def test_a_bad_file_of_texts_is_named_with_its_fault(tmp_path, lines, mode, error):
  bad = tmp_path / "bad.jsonl"
  bad.write_text("\n".join(lines) + "\n")
  with pytest.raises(ValueError, match=error):
    math_eval.score_file(configs.get("tiny"), "gsm8k", bad, mode=mode)
  assert not (tmp_path / "bad.jsonl_results.jsonl").exists()
