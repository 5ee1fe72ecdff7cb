"""Files that appear whole or not at all, on local disk or an object store (gs://, ...)."""

from __future__ import annotations

import os
import tempfile

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

  Local: a temp file beside it, fsync, rename. Object stores publish an object only when its
  upload completes, so a plain write is already all-or-nothing there.
  """
  data = data.encode() if isinstance(data, str) else data
  if is_remote(path):
    epath.Path(path).write_bytes(data)
    return
  path = os.fspath(path)
  fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)),
                             prefix=f".{os.path.basename(path)}.", suffix=".tmp")
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
