"""The trusted side of a run: runs the benchmark's tests here, outside the sandbox.

The program under test lives in the sandbox (`executor.py`); the test code runs in this
process. Every name the test uses but does not define (the entry point, helpers such as
HumanEval's `poly`, MBPP's setup objects) is fetched from the sandbox: plain data comes back as
values, anything else as a `Handle` whose calls and attribute reads are forwarded. A test passes
only when the test code here runs to its end without an exception, before the deadline, with
every answer well formed. The program cannot reach this process: exiting early (`sys.exit(0)`,
`os._exit(0)`) only closes the channel, which fails the run; killing or patching things in the
sandbox cannot change code that runs here; and forged values (an object equal to everything)
cannot cross, since only plain data does.
"""

from __future__ import annotations

import ast
import builtins
import importlib
import json
import os
import select
import sys
import time

from phi_jax.evaluation import executor

# Builtin exceptions a remote error may be re-raised as (so that tests catching, say,
# ValueError behave as written); anything else, SystemExit included, becomes RemoteError.
_EXCEPTIONS = {
  name: value
  for name, value in vars(builtins).items()
  if isinstance(value, type) and issubclass(value, Exception)
}


class RemoteError(Exception):
  """The program raised an exception that is not a builtin one."""


class SandboxLost(BaseException):
  """The sandbox stopped answering properly (timeout, exit, malformed answer).

  A BaseException, so that a test's own `except Exception` cannot swallow it; the judge also
  records it, so even a swallowed one fails the run.
  """

  def __init__(self, status: str, detail: str):
    super().__init__(f"{status}: {detail}")
    self.status, self.detail = status, detail


class Channel:
  """Requests to the sandbox's fd 3 and answers from its fd 4, bounded in size and time."""

  def __init__(self, request_fd: int, answer_fd: int, deadline: float, max_message_bytes: int):
    self.request_fd, self.answer_fd = request_fd, answer_fd
    self.deadline, self.max_message_bytes = deadline, max_message_bytes
    self.lost: SandboxLost | None = None

  def ask(self, request: dict) -> dict:
    """Sends `request` and returns the sandbox's answer (a dict of untrusted data)."""
    if self.lost is not None:
      raise self.lost
    try:
      message = executor.pack(request)
      while message:
        self._wait(select.POLLOUT, self.request_fd)
        message = message[os.write(self.request_fd, message) :]
    except OSError as exc:  # the sandbox end is closed
      self.lost = SandboxLost("failed", f"the program exited before its tests finished ({exc})")
      raise self.lost from None
    return self.receive()

  def receive(self) -> dict:
    if self.lost is not None:
      raise self.lost
    try:
      (size,) = executor.HEADER.unpack(self._read(executor.HEADER.size))
      if size > self.max_message_bytes:
        raise SandboxLost("failed", f"an answer of {size} bytes (limit {self.max_message_bytes})")
      answer = json.loads(self._read(size))
      if type(answer) is not dict:
        raise SandboxLost("failed", "malformed answer")
      return answer
    except SandboxLost as lost:
      self.lost = lost
      raise
    except (OSError, ValueError, RecursionError) as exc:  # bad JSON, a broken pipe
      self.lost = SandboxLost("failed", f"the sandbox channel broke: {exc!r}"[:500])
      raise self.lost from None

  def _wait(self, event: int, fd: int) -> None:
    poller = select.poll()
    poller.register(fd, event)
    remaining = self.deadline - time.monotonic()
    if remaining <= 0 or not poller.poll(remaining * 1000):
      raise SandboxLost("timeout", "the program ran past its time limit")

  def _read(self, size: int) -> bytes:
    chunks, got = [], 0
    while got < size:
      self._wait(select.POLLIN, self.answer_fd)
      chunk = os.read(self.answer_fd, min(size - got, 1 << 20))
      if not chunk:
        raise SandboxLost("failed", "the program exited before its tests finished")
      chunks.append(chunk)
      got += len(chunk)
    return b"".join(chunks)


class Handle:
  """An object that stays in the sandbox. It cannot be compared or tested for truth (so no
  `assert candidate(x) == y`, `!= y` or `assert candidate(x)` holds for a forged object); calls
  and attribute reads go to the sandbox and come back as plain data or further handles."""

  __slots__ = ("_channel", "_number")

  def __init__(self, channel: Channel, number: int):
    self._channel, self._number = channel, number

  def __call__(self, *args, **kwargs):
    return _result(
      self._channel,
      {
        "op": "call",
        "target": self._number,
        "args": executor.encode(list(args), _encode_arg),
        "kwargs": executor.encode(kwargs, _encode_arg),
      },
    )

  def __getattr__(self, name: str):
    if name.startswith("__"):
      raise AttributeError(name)
    return _result(self._channel, {"op": "getattr", "target": self._number, "name": name})

  def _refuse(self, *args):
    raise TypeError(
      "an object of the sandboxed program cannot be compared or tested for truth "
      "here (plain data only)"
    )

  __bool__ = __eq__ = __ne__ = __lt__ = __le__ = __gt__ = __ge__ = _refuse
  __hash__ = object.__hash__

  def __repr__(self) -> str:
    return f"<sandboxed object #{self._number}>"


def _encode_arg(value):
  if isinstance(value, Handle):
    return {"t": "handle", "v": value._number}
  name = getattr(value, "__name__", None)
  if isinstance(name, str) and getattr(builtins, name, None) is value:  # int, str, len, ...
    return {"t": "builtin", "v": name}
  raise TypeError(f"a {type(value).__name__} cannot be passed into the sandbox (plain data only)")


def _result(channel: Channel, request: dict):
  """The value the sandbox answers `request` with; its exception re-raised here."""
  return _value(channel, channel.ask(request))


def _value(channel: Channel, answer: dict):
  if "ok" in answer:
    try:
      return executor.decode(answer["ok"], lambda n: Handle(channel, n))
    except (ValueError, TypeError, RecursionError) as exc:  # unhashable keys, bad tags
      channel.lost = SandboxLost("failed", f"malformed value from the sandbox: {exc!r}"[:500])
      raise channel.lost from None
  error = answer.get("raise")
  if type(error) is not dict:
    channel.lost = SandboxLost("failed", "malformed answer")
    raise channel.lost
  kind = _EXCEPTIONS.get(str(error.get("type")))
  if kind is None:
    raise RemoteError(f"{error.get('type')}: {error.get('message')}"[:2000])
  raise kind(str(error.get("message"))[:2000])


def free_names(source: str) -> list[str]:
  """Names the code reads but never binds, in first-use order."""
  tree = ast.parse(source)
  bound, loaded = set(), []
  for node in ast.walk(tree):
    if isinstance(node, ast.Name):
      (loaded.append(node.id) if isinstance(node.ctx, ast.Load) else bound.add(node.id))
    elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
      bound.add(node.name)
    elif isinstance(node, ast.arg):
      bound.add(node.arg)
    elif isinstance(node, (ast.Import, ast.ImportFrom)):
      bound.update((a.asname or a.name).split(".")[0] for a in node.names)
    elif isinstance(node, ast.ExceptHandler) and node.name:
      bound.add(node.name)
  return [n for n in dict.fromkeys(loaded) if n not in bound]


def judge(
  channel: Channel, program: str, test: str, *, prelude: str = "", entry_point: str = ""
) -> tuple[str, str]:
  """(status, detail): runs `program` in the sandbox, then `prelude` and `test` here; status is
  'passed', 'failed' or 'timeout'.

  Names resolve as follows: what `prelude` (trusted code, e.g. HumanEval's prompt with its
  helper functions) or `test` defines is the judge's own; `entry_point` always comes from the
  program, even when it shadows a builtin (MBPP has a `sum`); other free names are builtins and
  standard-library modules of the judge when they are such, else fetched from the program.
  So a program that redefines a helper, a builtin or `math` does not change what the test uses.
  """
  try:
    _result(channel, {"op": "exec", "source": program, "filename": "<program>"})
    namespace = {"__name__": "__judge__", "__builtins__": builtins}
    exec(compile(prelude, "<prelude>", "exec"), namespace)
    local = set(namespace) | set(dir(builtins)) | set(sys.stdlib_module_names)
    remote = [n for n in free_names(prelude + "\n" + test) if n not in local]
    for name in dict.fromkeys(([entry_point] if entry_point else []) + remote):
      answer = channel.ask({"op": "get", "name": name})
      if "missing" not in answer:  # else the test's NameError fails it
        namespace[name] = _value(channel, answer)
    for name in free_names(test):
      if name in sys.stdlib_module_names and name not in namespace:
        namespace[name] = importlib.import_module(name)
    exec(compile(test, "<test>", "exec"), namespace)
  except SandboxLost as lost:
    return lost.status, lost.detail
  except Exception as exc:  # noqa: BLE001 - any failure of the test is a verdict
    if channel.lost is not None:
      return channel.lost.status, channel.lost.detail
    return "failed", f"{type(exc).__name__}: {exc}"[:2000]
  if channel.lost is not None:  # a test that swallowed the loss still fails
    return channel.lost.status, channel.lost.detail
  return "passed", ""
