"""Math instruction data (MAmmoTH's MathInstruct recipe): (instruction, output) pairs whose output
is a chain of thought (CoT) or a Python program that prints the answer (PoT).

Sources (`math.sources`), each read whole into documents `{"id", "kind", "instruction", "output",
"source"}`, kind `math_cot` or `math_pot`:

* `gsm8k`: GSM8K's train split. CoT: the rationale without its calculator annotations, then
  `The answer is <answer>`. PoT (`gsm8k_program`): the calculator annotations as a program, one
  statement per annotation, later uses of a result naming it, the last result printed; kept only
  when the program, run in the sandbox, prints the gold answer (`VerifyPrograms`).
* a MathInstruct JSON file (a list of `{"source", "instruction", "output"}`): PoT when the source
  path has a `PoT` directory (`data/PoT/...`), else CoT.
* a JSONL file of `{"instruction", "output", "kind"}` with kind `cot` or `pot`.
"""

from __future__ import annotations

import ast
import hashlib
import json
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

import apache_beam as beam

from data_pipeline import stages
from phi_jax.evaluation import math_answers, math_problems, sandbox

STAGE = "math_sources"  # its documents; the task built from them is math_instruct
KINDS = ("cot", "pot")
GSM8K = "gsm8k"
_NUMBER = re.compile(r"(?<![\w.])\d+(?:\.\d+)?(?![\w.])")


def document(instruction: str, output: str, kind: str, source: str, **extra) -> dict:
  if kind not in KINDS:
    raise ValueError(f"kind={kind!r} is not one of {KINDS}")
  digest = hashlib.sha256(f"{source}\0{instruction}\0{output}".encode()).hexdigest()[:16]
  return {
    "id": f"{source}/{digest}",
    "kind": f"math_{kind}",
    "instruction": instruction,
    "output": output,
    "source": source,
    # decontamination reads `text`: everything a model could memorise of the pair
    "text": f"{instruction}\n{output}",
    **extra,
  }


def gsm8k_cot(problem: math_problems.MathProblem) -> dict:
  output = f"{math_problems.plain_rationale(problem.rationale)}\nThe answer is {problem.answer}"
  return document(problem.question, output, "cot", GSM8K)


def gsm8k_program(rationale: str) -> str | None:
  """A program from a GSM8K rationale's calculator annotations (None when it has none): each
  `<<expr=result>>` becomes `step_i = expr`, a number in a later expression equal to an earlier
  result is replaced by that result's name (the latest), and the last step is printed."""
  lines, names = [], {}  # names: value -> the latest step holding it
  for expression, result in math_problems.ANNOTATION.findall(rationale):
    try:
      value = float(result.replace(",", ""))
      ast.parse(expression, mode="eval")
    except (ValueError, SyntaxError):
      return None

    def named(match: re.Match) -> str:
      return names.get(float(match.group()), match.group())

    name = f"step_{len(lines) + 1}"
    lines.append(f"{name} = {_NUMBER.sub(named, expression.strip())}")
    names[value] = name
  if not lines:
    return None
  return "\n".join(lines) + f"\nprint({name})\n"


def gsm8k_documents(problems: Iterable[math_problems.MathProblem]) -> Iterator[dict]:
  """Each problem's CoT document, and its PoT candidate (`gold` kept for verification) when its
  rationale has calculator annotations."""
  for problem in problems:
    yield gsm8k_cot(problem)
    program = gsm8k_program(problem.rationale)
    if program is not None:
      yield document(problem.question, program, "pot", GSM8K, gold=problem.answer)


def mathinstruct_kind(source: str) -> str:
  """MathInstruct tells CoT from PoT by the source path: data/PoT/... vs data/CoT/..."""
  return "pot" if "PoT" in Path(source).parts else "cot"


def read_file(path: str) -> list[dict]:
  """Documents of a MathInstruct JSON file or an {instruction, output, kind} JSONL file."""
  text = Path(path).read_text()
  if path.endswith(".jsonl"):
    rows, name = [json.loads(line) for line in text.splitlines() if line.strip()], Path(path).stem
    bad = [i for i, row in enumerate(rows, 1) if row.get("kind") not in KINDS]
    if bad:
      raise ValueError(f"{path}:{bad[0]}: 'kind' must be one of {KINDS} ({len(bad)} rows lack it)")
    return [document(r["instruction"], r["output"], r["kind"], name) for r in rows]
  rows = json.loads(text)
  if not isinstance(rows, list) or not all(
    {"source", "instruction", "output"} <= set(r) for r in rows
  ):
    raise ValueError(
      f"{path}: expected MathInstruct's JSON (a list of {{source, instruction, output}}) or a "
      ".jsonl file of {instruction, output, kind}"
    )
  return [
    document(r["instruction"], r["output"], mathinstruct_kind(r["source"]), r["source"])
    for r in rows
  ]


class VerifyPrograms(beam.DoFn):
  """Batches of documents -> the same documents, less the PoT programs carrying a `gold` answer
  that do not print it when run in the sandbox (counted by why)."""

  def __init__(self, timeout_s: float, isolation: str, limits: sandbox.Limits):
    self.timeout_s, self.isolation, self.limits = timeout_s, isolation, limits

  def process(self, batch):
    checked = [d for d in batch if "gold" in d]
    jobs = [sandbox.Job(d["output"], test="") for d in checked]
    results = sandbox.run_many(jobs, self.timeout_s, limits=self.limits, isolation=self.isolation)
    verdicts = {id(d): _verdict(d["gold"], r) for d, r in zip(checked, results)}
    for doc in batch:
      verdict = verdicts.get(id(doc), "")
      if verdict:
        stages.counter(f"programs_{verdict}").inc()
        if verdict != "verified":
          continue
        doc = {k: v for k, v in doc.items() if k != "gold"}
      stages.counter(f"{doc['kind']}_documents").inc()
      yield doc


def _verdict(gold: str, result: sandbox.Result) -> str:
  if result.status != "passed":
    return "timed_out" if result.status == "timeout" else "failed"
  printed = math_answers.answer_from_output(result.output)
  return "verified" if math_answers.same_answer(printed, gold) else "wrong_answer"
