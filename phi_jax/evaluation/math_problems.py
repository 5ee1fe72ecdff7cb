"""Math word problems with a final answer: GSM8K (Cobbe et al. 2021, MIT), read or downloaded
like MBPP (a path, else the project's copy `shared/data/gsm8k` beside the checkout, else the
pinned upstream file checked against its sha256).

GSM8K rows are `{"question", "answer"}`; the answer is a chain of thought whose lines may carry
calculator annotations (`<<48/2=24>>`) and whose last line is `#### <final answer>`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from pathlib import Path

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
