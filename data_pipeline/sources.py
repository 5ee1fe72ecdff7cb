"""The embedded default corpus: documents drawn from the Python sources already on the machine.

Three kinds, as in the paper's data, named for what they are:
  code      -- one Python file, one document (the analogue of The Stack's Python).
  textbook  -- prose that teaches with code: the interpreter's own topic help texts
               (`pydoc_data.topics`) and docstrings rich in doctest examples.
  exercise  -- a documented top-level function as `signature + docstring -> body`
               (the CodeExercises format): `prompt` and `solution`, `text` = both.

Every document is a dict: id, kind, source, text (and prompt/solution for exercises).
"""

from __future__ import annotations

import ast
import hashlib
import site
import sysconfig
from collections.abc import Iterator
from pathlib import Path

MIN_DOCTEST_PROMPTS = 2
EXERCISE_BODY_LINES = (2, 40)


def document(kind: str, source: str, text: str, **fields) -> dict:
  digest = hashlib.sha1(f"{kind}\0{source}\0{text}".encode()).hexdigest()[:16]
  return {"id": f"{kind}-{digest}", "kind": kind, "source": source, "text": text, **fields}


def python_roots(names: list[str]) -> dict[str, Path]:
  """Named source roots: 'stdlib', 'site-packages', or any directory path."""
  known = {"stdlib": Path(sysconfig.get_paths()["stdlib"])}
  site_dirs = [Path(p) for p in site.getsitepackages()]
  roots = {}
  for name in names:
    if name == "site-packages":
      roots.update({f"site-packages:{i}": p for i, p in enumerate(site_dirs)})
    elif name in known:
      roots[name] = known[name]
    else:
      path = Path(name)
      if not path.is_dir():
        raise FileNotFoundError(
          f"corpus root '{name}' is neither 'stdlib', 'site-packages' nor a directory"
        )
      roots[name] = path
  return roots


def python_files(
  roots: dict[str, Path], exclude_parts: tuple[str, ...] = ("site-packages",)
) -> Iterator[tuple[str, Path]]:
  """(source name, path) of every .py file under the roots, in a stable order.

  A root's own nested site-packages (stdlib contains it) is skipped so that files are counted once.
  """
  for name, root in sorted(roots.items()):
    for path in sorted(root.rglob("*.py")):
      relative = path.relative_to(root)
      if any(part in exclude_parts for part in relative.parts[:-1]):
        continue
      yield f"{name}:{relative.as_posix()}", path


def read_source(data: bytes, max_bytes: int) -> tuple[str | None, str]:
  """(text, 'ok') or (None, reason): 'empty', 'too_large', 'undecodable', 'syntax_error'."""
  if not data.strip():
    return None, "empty"
  if len(data) > max_bytes:
    return None, "too_large"
  try:
    text = data.decode("utf-8")
  except UnicodeDecodeError:
    return None, "undecodable"
  try:
    ast.parse(text)
  except (SyntaxError, ValueError):
    return None, "syntax_error"
  return text, "ok"


def documents_from_source(source: str, text: str) -> Iterator[dict]:
  """The code document of one parsed file, plus its doctest-rich docstrings and exercises."""
  yield document("code", source, text)
  tree = ast.parse(text)
  lines = text.splitlines(keepends=True)
  for node in ast.walk(tree):
    if not isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
      continue
    doc = ast.get_docstring(node, clean=True)
    if (
      doc
      and sum(line.lstrip().startswith(">>>") for line in doc.splitlines()) >= MIN_DOCTEST_PROMPTS
    ):
      title = getattr(node, "name", source.rsplit(":", 1)[-1])
      yield document("textbook", f"{source}:{title}", f"{title}\n\n{doc}\n")
  for node in tree.body:
    exercise = _exercise(node, lines)
    if exercise:
      yield document(
        "exercise",
        f"{source}:{node.name}",
        exercise[0] + exercise[1],
        prompt=exercise[0],
        solution=exercise[1],
      )


def _exercise(node: ast.stmt, lines: list[str]) -> tuple[str, str] | None:
  """(signature + docstring, body) of a documented top-level function with a real body."""
  if (
    not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) or ast.get_docstring(node) is None
  ):
    return None
  docstring, body = node.body[0], node.body[1:]
  if not body or _is_placeholder(body):
    return None
  start = min([node.lineno] + [d.lineno for d in node.decorator_list]) - 1
  prompt = "".join(lines[start : docstring.end_lineno])
  solution = "".join(lines[docstring.end_lineno : node.end_lineno])
  n_lines = sum(1 for line in solution.splitlines() if line.strip())
  if not EXERCISE_BODY_LINES[0] <= n_lines <= EXERCISE_BODY_LINES[1]:
    return None
  return prompt, solution


def _is_placeholder(body: list[ast.stmt]) -> bool:
  only = body[0] if len(body) == 1 else None
  return isinstance(only, (ast.Pass, ast.Raise)) or (
    isinstance(only, ast.Expr) and isinstance(only.value, ast.Constant)
  )


def topic_documents() -> Iterator[dict]:
  """The interpreter's help topics (`help('for')`, ...): the Python reference, as textbook text."""
  from pydoc_data.topics import topics  # 1 MB of text, read only when help_topics is on

  for name, text in sorted(topics.items()):
    yield document("textbook", f"pydoc_topics:{name}", text)
