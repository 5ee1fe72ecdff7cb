"""The house rules that keep the code readable: imports point one way (the contracts in
.importlinter, drawn in docs/architecture.md), an import inside a function says why, and ruff's
lint and format pass."""

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("phi_jax", "data_pipeline", "configs")


def test_import_contracts_hold():
  from importlinter import cli

  # import-linter analyses the importable packages, so this checkout's must come first
  sys.path.insert(0, str(REPO))
  try:
    status = cli.lint_imports(config_filename=str(REPO / ".importlinter"), no_cache=True)
  finally:
    sys.path.remove(str(REPO))
  assert status == 0, "an import breaks a contract of .importlinter (see the output above)"


def _function_level_imports(path: Path):
  source = path.read_text()
  lines = source.splitlines()
  for node in ast.walk(ast.parse(source)):
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
      for inner in ast.walk(node):
        if isinstance(inner, (ast.Import, ast.ImportFrom)):
          # a comment on the line, or above the block of imports (isort's groups) it belongs to
          above = inner.lineno - 2
          while (
            not lines[above].strip() or lines[above].lstrip().startswith(("import ", "from "))
          ) and "#" not in lines[above]:
            above -= 1
          line = lines[inner.lineno - 1]
          yield inner.lineno, line, "#" in line or "#" in lines[above]


def test_imports_inside_functions_say_why():
  unexplained = [
    f"{path.relative_to(REPO)}:{lineno}: {line.strip()}"
    for package in PACKAGES
    for path in sorted((REPO / package).rglob("*.py"))
    if path.name != "executor.py"  # runs inside the sandbox: imports as it starts
    for lineno, line, explained in _function_level_imports(path)
    if not explained
  ]
  assert not unexplained, (
    "imports inside functions need a comment saying why (or belong at "
    "the top of the module):\n" + "\n".join(unexplained)
  )


@pytest.mark.parametrize("command", [["check"], ["format", "--check"]])
def test_ruff_passes(command):
  ruff = shutil.which("ruff", path=os.path.dirname(sys.executable)) or shutil.which("ruff")
  assert ruff, "ruff is missing: pip install -e '.[test]'"
  result = subprocess.run([ruff, *command, "."], cwd=REPO, capture_output=True, text=True)
  assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
