"""Files and stage directories that appear whole or not at all, on local disk or an object store
(gs://, ...).

Object stores have no atomic directory rename, so a stage directory's completion is a marker: a
stage writes straight into `OUT/<name>/` and writes `stage.json` (its summary) last. A stage
directory with the marker is complete and never recomputed; one without it (a run killed
mid-write) is wiped and recomputed on the next run, or handed back to a body that resumes its own
work, and `completed` refuses to hand it to a reader. The corpus build's stages and the main
job's stages both run through `run_stage`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from typing import Any

from absl import logging
from etils import epath


def is_remote(path: str | os.PathLike) -> bool:
  """Whether `path` names an object store (gs://, s3://, ...) rather than a local file."""
  return "://" in os.fspath(path)


def absolute(path: str | os.PathLike) -> str:
  """`path` as an absolute path (`~` expanded, relative to the current directory); object-store
  URLs unchanged. Entry points resolve every path a user gives once, with this, so that what is
  recorded and what orbax (which refuses relative paths) sees do not depend on a later cwd."""
  path = os.fspath(path)
  if not path or is_remote(path):
    return path
  return os.path.abspath(os.path.expanduser(path))


def existing(path: str | os.PathLike, what: str) -> str:
  """`path` made absolute (see `absolute`); FileNotFoundError naming `what` when nothing is
  there."""
  path = absolute(path)
  if not epath.Path(path).exists():
    raise FileNotFoundError(f"{what}: {path} does not exist")
  return path


def write_atomic(path: epath.PathLike, data: bytes | str) -> None:
  """Writes `path` so that it appears only complete.

  Local: a temp file beside it (its directory made if missing), fsync, rename. Object stores
  publish an object only when its upload completes, so a plain write is already all-or-nothing
  there.
  """
  data = data.encode() if isinstance(data, str) else data
  if is_remote(path):
    epath.Path(path).write_bytes(data)
    return
  path = os.fspath(path)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fd, tmp = tempfile.mkstemp(
    dir=os.path.dirname(os.path.abspath(path)), prefix=f".{os.path.basename(path)}.", suffix=".tmp"
  )
  try:
    with os.fdopen(fd, "wb") as f:
      f.write(data)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise


MARKER = "stage.json"
_MAIN_JOB_MARKER = "stage_done.json"  # the main job's marker in workdirs made before 2026-12


class IncompleteStageError(RuntimeError):
  """A stage directory without its completion marker: a run died while writing it."""


def done(out: epath.PathLike, name: str) -> dict | None:
  """The summary of a completed stage, or None."""
  for marker in (MARKER, _MAIN_JOB_MARKER):
    path = epath.Path(out) / name / marker
    if path.exists():
      return json.loads(path.read_text())
  return None


def require_complete(stage: epath.PathLike) -> epath.Path:
  """`stage` if its completion marker is there; IncompleteStageError otherwise."""
  stage = epath.Path(stage)
  if not (stage / MARKER).exists():
    raise IncompleteStageError(
      f"{stage} has no {MARKER}: it was not finished (a build died while writing it, or is "
      "still running); rerun the command that makes it (e.g. `python -m data_pipeline.build` "
      "with the same --out)"
    )
  return stage


def completed(out: epath.PathLike, name: str) -> epath.Path:
  """The directory of stage `name` under `out`, for reading: only once it is complete."""
  return require_complete(epath.Path(out) / name)


def run_stage(
  out: epath.PathLike,
  name: str,
  body: Callable[[epath.Path], dict[str, Any]],
  *,
  resumes: bool = False,
  inputs: Sequence[str] = (),
) -> dict:
  """Runs `body(stage_dir) -> summary` unless the stage is complete; the marker goes last.

  Leftovers of an unfinished run are wiped first, so no stale shard joins the new output, and a
  body that raises takes its partial output with it (a killed one leaves it to the next run).
  With `resumes`, the body continues its own unfinished work instead (a trainer from its
  checkpoints, a build from its own stages), so nothing is wiped. `inputs` names the stages of
  `out` the body reads: the marker records a digest of theirs, and a complete stage made from
  other inputs (e.g. before synthetic data joined) is made again.
  """
  digest = _inputs_digest(out, inputs) if inputs else None
  previous = done(out, name)
  if previous is not None and digest is not None and previous.get("inputs") != digest:
    logging.warning("%s/%s was made from other inputs than %s now: redoing it", out, name, inputs)
    (epath.Path(out) / name).rmtree()
    previous = None
  if previous is not None:
    return previous
  stage = epath.Path(out) / name
  if stage.exists() and not resumes:
    stage.rmtree()
  stage.mkdir(parents=True, exist_ok=resumes)
  try:
    summary = body(stage)
  except BaseException:
    if stage.exists() and not resumes:
      stage.rmtree()
    raise
  if digest is not None:
    summary = {**summary, "inputs": digest}
  write_atomic(stage / MARKER, json.dumps(summary, indent=2, sort_keys=True).encode())
  return summary


def _inputs_digest(out: epath.PathLike, names: Sequence[str]) -> str:
  summaries = {name: done(out, name) for name in names}
  return hashlib.sha256(json.dumps(summaries, sort_keys=True).encode()).hexdigest()[:16]


def download_checked(url: str, sha256: str, target: str | os.PathLike) -> str:
  """`url` saved as `target` (atomically) once its content has the given sha256; a `target`
  already there with that digest is reused. A mismatch is refused and nothing is written."""
  # A function-level import: only the dataset loaders download.
  import urllib.request

  target = os.fspath(target)
  if os.path.isfile(target) and _file_sha256(target) == sha256:
    return target
  with urllib.request.urlopen(url, timeout=60) as response:
    data = response.read()
  digest = hashlib.sha256(data).hexdigest()
  if digest != sha256:
    raise ValueError(
      f"{url} has sha256 {digest}, expected {sha256}: refusing it; pass a local copy instead"
    )
  write_atomic(target, data)
  return target


def _file_sha256(path: str) -> str:
  with open(path, "rb") as f:
    return hashlib.file_digest(f, "sha256").hexdigest()


def copy_file(src: epath.PathLike, dst: epath.PathLike) -> None:
  """Copies one file between any two filesystems epath reaches (local <-> gs://, ...)."""
  dst = epath.Path(dst)
  dst.parent.mkdir(parents=True, exist_ok=True)
  with epath.Path(src).open("rb") as reader, dst.open("wb") as writer:
    shutil.copyfileobj(reader, writer, 16 << 20)


def copy_tree(src: epath.PathLike, dst: epath.PathLike) -> None:
  """Copies every file under `src` to the same relative path under `dst`, across filesystems:
  how local-only tools (trainers, orbax) hand their outputs to a remote stage and back."""
  src, dst = epath.Path(src), epath.Path(dst)
  if not src.is_dir():
    raise FileNotFoundError(f"no directory at {src}")
  for child in src.iterdir():  # (not epath's walk: its gcsfs backend drops the gs:// scheme)
    if child.is_dir():
      copy_tree(child, dst / child.name)
    else:
      copy_file(child, dst / child.name)
