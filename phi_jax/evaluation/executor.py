"""The sandbox side of a run, and the plain-data wire format both sides speak.

Inside the sandbox this file runs as `python -I -S -c <this source> LIMITS_JSON IN_FD OUT_FD
SITE_DIRS_JSON`: it lowers its rlimits, puts the site-packages directories on sys.path (without
the `site` module's .pth processing, which would triple the start-up time), says it is ready,
then serves requests from the judge on IN_FD and answers on OUT_FD (each message: 4-byte
big-endian length + JSON). Requests: `exec` a source into the program's namespace, `get` a
global, `call` a held object, `getattr` of a held object. Answers carry only plain data (None, bool, int, float,
complex, str, bytes, list, tuple, dict, set, frozenset); anything else stays in the sandbox and
crosses as an opaque handle number. The judge compares values with its own `==`, so an object
whose `__eq__` always says True never reaches it.

Nothing here is trusted once the program runs: the program owns this process and may answer
anything. The judge (`phi_jax.evaluation.judge`) treats every answer as hostile data.
Standard library only: this source is all the sandbox gets of the project.
"""

from __future__ import annotations

import json
import numbers
import struct

HEADER = struct.Struct(">I")
SMALL_INT = 1 << 62  # larger ints travel as hex strings (json's int parsing is digit-capped)


def encode(value, other):
  """Plain data -> JSON-able tagged form; any other object -> `other(object)` (a handle's tagged
  form, or an exception)."""
  if value is None or type(value) in (bool, str, float):  # bool cannot be subclassed
    return value
  if isinstance(value, numbers.Integral):  # int, its subclasses, numpy integers
    value = int(value)
    return value if -SMALL_INT < value < SMALL_INT else {"t": "int", "v": hex(value)}
  if isinstance(value, numbers.Real) and not isinstance(value, numbers.Rational):
    return float(value)  # float subclasses, numpy floats
  if isinstance(value, str):
    return str(value)
  if isinstance(value, complex):
    return {"t": "complex", "v": [value.real, value.imag]}
  if isinstance(value, (bytes, bytearray)):
    return {"t": "bytes", "v": bytes(value).hex()}
  for kind in (list, tuple, set, frozenset):
    if isinstance(value, kind):
      return {"t": kind.__name__, "v": [encode(item, other) for item in value]}
  if isinstance(value, dict):
    return {"t": "dict", "v": [[encode(k, other), encode(v, other)] for k, v in value.items()]}
  return other(value)


_CONTAINERS = {"list": list, "tuple": tuple, "set": set, "frozenset": frozenset}
_HASHED = ("set", "frozenset", "dict")


def _check_hashes(keys: list) -> None:
  """Refuses many keys with few distinct hashes: ints with equal hashes (n * (2**61 - 1)) would
  make building the set or dict quadratic, stalling the judge."""
  if len(keys) > 1000 and 2 * len({hash(k) for k in keys}) < len(keys):
    raise ValueError(f"{len(keys)} keys with colliding hashes")


def decode(data, handle, builtin=None):
  """The inverse of `encode`; `handle(number)` turns a handle number into an object, and
  `builtin(name)`, where given, a builtin's name into it (the judge passes e.g. `int` so)."""
  if data is None or type(data) in (bool, int, float, str):
    return data
  if type(data) is not dict:
    raise ValueError(f"malformed value of type {type(data).__name__}")
  tag, payload = data.get("t"), data.get("v")
  if tag in _CONTAINERS and type(payload) is list:
    items = [decode(item, handle, builtin) for item in payload]
    if tag in _HASHED:
      _check_hashes(items)
    return _CONTAINERS[tag](items)
  if tag == "dict" and type(payload) is list:
    pairs = [(decode(k, handle, builtin), decode(v, handle, builtin)) for k, v in payload]
    _check_hashes([k for k, _ in pairs])
    return dict(pairs)
  if tag == "int" and type(payload) is str:
    return int(payload, 16)
  if tag == "complex" and type(payload) is list and len(payload) == 2:
    return complex(float(payload[0]), float(payload[1]))
  if tag == "bytes" and type(payload) is str:
    return bytes.fromhex(payload)
  if tag == "handle" and type(payload) is int:
    return handle(payload)
  if tag == "builtin" and type(payload) is str and builtin is not None:
    return builtin(payload)
  raise ValueError(f"malformed value tagged {tag!r}")


def pack(message) -> bytes:
  body = json.dumps(message, allow_nan=True).encode()
  return HEADER.pack(len(body)) + body


def _read_exactly(fd: int, size: int) -> bytes:
  import os

  chunks, got = [], 0
  while got < size:
    chunk = os.read(fd, size - got)
    if not chunk:
      raise EOFError("the judge closed the channel")
    chunks.append(chunk)
    got += len(chunk)
  return b"".join(chunks)


def _write_all(fd: int, data: bytes) -> None:
  import os

  while data:
    data = data[os.write(fd, data) :]


def _error(exc: BaseException) -> dict:
  return {"raise": {"type": type(exc).__name__, "message": str(exc)[:2000]}}


def main() -> None:
  import builtins
  import os
  import resource
  import sys

  limits = json.loads(sys.argv[1])
  for name, value in limits.items():  # hard limits: an unprivileged process cannot raise them
    resource.setrlimit(getattr(resource, name), (int(value), int(value)))
  requests, answers = int(sys.argv[2]), int(sys.argv[3])
  sys.path.extend(json.loads(sys.argv[4]))
  sys.stdin = open(os.devnull)
  sys.stdout.reconfigure(line_buffering=True)  # what a killed program printed still shows
  namespace = {"__name__": "__main__", "__builtins__": builtins}
  handles: list = []

  def hold(value) -> dict:
    handles.append(value)
    return {"t": "handle", "v": len(handles) - 1}

  def serve(request: dict) -> dict:
    op = request["op"]
    if op == "exec":
      exec(compile(request["source"], request.get("filename", "<program>"), "exec"), namespace)
      return {"ok": None}
    if op == "get":
      if request["name"] not in namespace:
        return {"missing": True}
      return {"ok": encode(namespace[request["name"]], hold)}
    target = handles[request["target"]]
    if op == "getattr":
      return {"ok": encode(getattr(target, request["name"]), hold)}
    if op == "call":
      args = decode(request["args"], handles.__getitem__, lambda name: getattr(builtins, name))
      kwargs = decode(request["kwargs"], handles.__getitem__, lambda name: getattr(builtins, name))
      return {"ok": encode(target(*args, **kwargs), hold)}
    raise ValueError(f"unknown request {op!r}")

  _write_all(answers, pack({"ready": True}))  # sent before any program text arrives
  while True:
    try:
      (size,) = HEADER.unpack(_read_exactly(requests, HEADER.size))
      request = json.loads(_read_exactly(requests, size))
    except EOFError:
      return
    try:
      answer = serve(request)
    except BaseException as exc:  # noqa: B902 - SystemExit and friends are answers too
      answer = _error(exc)
    try:
      message = pack(answer)
    except BaseException as exc:  # noqa: B902 - e.g. a cycle, or a value too deep to encode
      message = pack(_error(exc))
    _write_all(answers, message)


if __name__ == "__main__":
  main()
