"""The command-line convention of phi_jax's programs.

absl flags; `--config` is an ml_collections config file whose every field is a flag of its own
(`--config.train.steps=100`, tuples as `--config.corpus.roots=stdlib --config.corpus.roots=src`
or `--config.corpus.roots='("stdlib", "src")'`, dicts as `--config.data.pretrain_rates='{"t": 1}'`).
A mistake in the flags or a failure of the run ends with one line that says what went wrong,
the last one printed (the traceback, for a bug report, comes before it).
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable

from absl import app, flags, logging
from ml_collections import config_flags


def define_config(
  default: str | None = None, help_text: str = "Path to a configs/*.py file."
) -> None:
  """The `--config` flag (locked: a misspelt field is an error, never a new one)."""
  config_flags.DEFINE_config_file("config", default, help_text, lock_config=True)


def _program() -> str:
  main_module = sys.modules.get("__main__")
  spec = getattr(main_module, "__spec__", None)
  return f"python -m {spec.name}" if spec and spec.name else os.path.basename(sys.argv[0])


def fail(message: str, status: int = 1) -> None:
  """Exits with `message` as the last line printed (several lines joined by '; ')."""
  sys.stdout.flush()
  one_line = "; ".join(line.strip() for line in str(message).splitlines() if line.strip())
  print(f"{_program()}: error: {one_line}", file=sys.stderr, flush=True)
  sys.exit(status)


def _message(error: BaseException) -> str:
  """The innermost message (a locked ConfigDict wraps a KeyError in an AttributeError)."""
  while len(error.args) == 1 and isinstance(error.args[0], BaseException):
    error = error.args[0]
  return error.args[0] if len(error.args) == 1 and isinstance(error.args[0], str) else str(error)


def _parse_flags(argv: list[str]) -> list[str]:
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:  # absl would end with "Pass --helpshort or --helpfull ..."
    fail(f"{e} (see --helpfull for every flag)", status=2)
  except (AttributeError, KeyError, TypeError, ValueError) as e:  # a config field or its value
    fail(f"in the flags: {_message(e)}", status=2)


def run(main: Callable[[list[str]], None]) -> None:
  """app.run(main), with flag errors and exceptions reported as the last line printed."""

  def main_reporting_errors(argv: list[str]) -> None:
    try:
      main(argv)
    except (SystemExit, KeyboardInterrupt):
      raise
    except app.UsageError as e:
      fail(str(e), status=2)
    except Exception as e:  # noqa: BLE001 - every failure ends with its one-line summary
      traceback.print_exc()
      fail(f"{type(e).__name__}: {e}")

  app.run(main_reporting_errors, flags_parser=_parse_flags)


def run_in_workdir(job: Callable[[object, str], object], workdir_help: str) -> None:
  """The whole program of a job of `--config` and a required `--workdir`: job(config, workdir)."""
  define_config()
  flags.DEFINE_string(
    "workdir", None, f"{workdir_help} (relative to the current directory, or absolute)."
  )
  flags.mark_flags_as_required(["config", "workdir"])

  def main(argv: list[str]) -> None:
    del argv
    logging.set_verbosity(logging.WARNING)
    job(flags.FLAGS.config, flags.FLAGS.workdir)

  run(main)
