"""Math problems with a final answer: GSM8K (Cobbe et al. 2021, MIT), read or downloaded
like MBPP (a path, else the project's copy `shared/data/gsm8k` beside the checkout, else the
pinned upstream file checked against its sha256); and DeepMind Mathematics (Saxton et al. 2019,
Apache-2.0), generated on the spot by the `mathematics-dataset` package, so nothing is
downloaded.

    gsm8k(split="test")                                          # 1319 problems
    deepmind_math(("arithmetic__mul", "algebra__linear_1d"), per_module=50, seed=0)

GSM8K rows are `{"question", "answer"}`; the answer is a chain of thought whose lines may carry
calculator annotations (`<<48/2=24>>`) and whose last line is `#### <final answer>`.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import json
import os
import random
import re
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from phi_jax import files

GSM8K_COMMIT = "3101c7d5072418e28b9008a6636bde82a006892c"
GSM8K_URL = (
  "https://raw.githubusercontent.com/openai/grade-school-math/{commit}/grade_school_math/data/"
  "{split}.jsonl"
)
GSM8K_SHA256 = {
  "train": "17f347dc51477c50d4efb83959dbb7c56297aba886e5544ee2aaed3024813465",
  "test": "3730d312f6e3440559ace48831e51066acaca737f6eabec99bccb9e4b3c39d14",
}
ANNOTATION = re.compile(r"<<([^<>=]*)=([^<>]*)>>")
# DeepMind Mathematics modules (`<area>__<module>`, the dataset's file names) whose answers are
# single numbers (integers, decimals or fractions), so that a program's printed value can
# answer them.
DEEPMIND_MODULES = (
  "arithmetic__add_or_sub",
  "arithmetic__add_sub_multiple",
  "arithmetic__mixed",
  "arithmetic__mul",
  "arithmetic__div",
  "arithmetic__mul_div_multiple",
  "algebra__linear_1d",
  "algebra__linear_2d",
  "algebra__sequence_next_term",
  "numbers__gcd",
  "numbers__lcm",
  "numbers__div_remainder",
)


@dataclasses.dataclass(frozen=True)
class MathProblem:
  task_id: str
  question: str
  answer: str  # the gold final answer as written (e.g. "1,000", "14/9", "-8*sqrt(5)")
  rationale: str = ""  # the reference chain of thought, calculator annotations kept


def default_gsm8k_dir() -> Path:
  """The project's GSM8K copy: `shared/data/gsm8k` beside the repository checkout."""
  return Path(__file__).resolve().parents[2].parent / "shared" / "data" / "gsm8k"


def gsm8k_file(
  path: str | os.PathLike | None = None,
  split: str = "test",
  cache_dir: str | os.PathLike | None = None,
) -> Path:
  """The GSM8K file of `split` ("train" or "test"): `path` (the file, or a directory holding
  `<split>.jsonl`), else the project's copy, else a checked download into `cache_dir`
  (default ~/.cache/phi_jax/gsm8k)."""
  if split not in GSM8K_SHA256:
    raise ValueError(f"GSM8K split={split!r} is not one of {sorted(GSM8K_SHA256)}")
  name = f"{split}.jsonl"
  if path:
    path = Path(path)
    path = path / name if path.is_dir() else path
    other = {f"{s}.jsonl" for s in GSM8K_SHA256} - {name}
    if path.name in other:  # training on the test split, or the reverse, is never intended
      raise ValueError(f"{path} is not GSM8K's {split} split; pass the directory holding both")
    if not path.is_file():
      raise FileNotFoundError(f"GSM8K file {path} does not exist; pass {name} or its directory")
    return path
  local = default_gsm8k_dir() / name
  if local.is_file():
    return local
  cache = Path(cache_dir or Path.home() / ".cache" / "phi_jax" / "gsm8k")
  url = GSM8K_URL.format(commit=GSM8K_COMMIT, split=split)
  return Path(files.download_checked(url, GSM8K_SHA256[split], cache / name))


def read_gsm8k(path: str | os.PathLike, split: str = "test") -> list[MathProblem]:
  """The problems of a GSM8K JSONL file, task ids `gsm8k/<split>/<line index>`."""
  problems = []
  with open(path) as f:
    for number, line in enumerate(f, 1):
      if not line.strip():
        continue
      row = json.loads(line)
      rationale, marker, answer = row["answer"].rpartition("####")
      if not marker:
        raise ValueError(f"{path}:{number}: a GSM8K answer ends with '#### <answer>'")
      problems.append(
        MathProblem(
          task_id=f"gsm8k/{split}/{len(problems)}",
          question=row["question"].strip(),
          answer=answer.strip(),
          rationale=rationale.strip(),
        )
      )
  return problems


def gsm8k(path: str | os.PathLike | None = None, split: str = "test") -> list[MathProblem]:
  return read_gsm8k(gsm8k_file(path, split), split)


def plain_rationale(rationale: str) -> str:
  """A GSM8K rationale without its calculator annotations."""
  return ANNOTATION.sub("", rationale)


@functools.cache
def _deepmind_generators() -> dict[str, Callable]:
  """`<area>__<module>` -> a function drawing one problem, at the dataset's training difficulty."""
  # mathematics_dataset 1.0.1 imports `base_solution_linear` from `sympy.solvers.diophantine`,
  # which newer sympy moved into `sympy.solvers.diophantine.diophantine`: put it back first.
  package = importlib.import_module("sympy.solvers.diophantine")
  from sympy.solvers.diophantine.diophantine import base_solution_linear  # for the shim only

  package.base_solution_linear = base_solution_linear
  # Imported here: only this benchmark needs the package (and sympy, slow to import).
  from mathematics_dataset.modules import modules
  from mathematics_dataset.util import composition

  # Context.pop draws a variable name from a set's order, which string hashing changes from one
  # process to the next: draw from the sorted names, so a seed names the same variables.
  def pop(context: composition.Context) -> str:
    used = context._relation_symbols | context._self_symbols | context._child_symbols
    allowed = sorted(composition._ALLOWED_SYMBOLS - used)
    if not allowed:
      raise ValueError("Ran out of symbols")
    symbol = random.choice(allowed)
    context._self_symbols.add(symbol)
    return symbol

  composition.Context.pop = pop
  return {
    f"{area}__{name}": generate
    for area, generators in modules.train(lambda entropy: entropy).items()
    for name, generate in generators.items()
  }


def deepmind_math(
  modules: Sequence[str] = DEEPMIND_MODULES, per_module: int = 100, seed: int = 0
) -> list[MathProblem]:
  """`per_module` problems of each DeepMind Mathematics module, in the order given, task ids
  `deepmind_math/<module>/<index>`. The same (seed, module) draws the same problems, whatever
  the other modules are; the generator's `random` and `numpy.random` states are restored."""
  generators = _deepmind_generators()
  unknown = [m for m in modules if m not in generators]
  if unknown:
    raise ValueError(f"unknown DeepMind Mathematics modules {unknown}; known: {sorted(generators)}")
  if per_module < 1:
    raise ValueError(f"per_module={per_module} must be >= 1")
  states = random.getstate(), np.random.get_state()
  problems = []
  try:
    for module in modules:
      random.seed(f"{seed}/{module}")
      np.random.seed(zlib.crc32(f"{seed}/{module}".encode()))
      for index in range(per_module):
        problem = generators[module]()
        problems.append(
          MathProblem(
            task_id=f"deepmind_math/{module}/{index}",
            question=str(problem.question),
            answer=str(problem.answer),
          )
        )
  finally:
    random.setstate(states[0])
    np.random.set_state(states[1])
  return problems
