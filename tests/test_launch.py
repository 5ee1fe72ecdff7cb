"""The TPU pod launcher, read through its dry run: the gcloud commands it would issue, in order.

Every CLI call is a subprocess with an empty PATH, so neither gcloud nor git is needed (or run).
The shell the launcher starts on workers is run here too, in a scratch HOME with a stand-in
Python, to check that training detaches and leaves its exit status where the launcher looks.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shlex
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "launch" / "tpu_pod.py"
SLICE = ["--name=phi1-v4", "--zone=us-central2-b", "--project=my-project"]
WHERE = ["--zone=us-central2-b", "--project=my-project"]
JOB = ["--config=configs/phi1.py", "--workdir=gs://my-bucket/phi1"]
# A value with a space: it has to survive two levels of shell quoting intact.
OVERRIDES = ["--config.train.micro_batch=16", "--config.data.dir=gs://my-bucket/corpus v1"]
RUN_V4 = ["run", *SLICE, "--accelerator-type=v4-8", "--spot", *JOB, *OVERRIDES]
TRAINER = [
  "~/phi_jax_venv/bin/python",
  "-m",
  "phi_jax.train",
  "--config=configs/phi1.py",
  "--workdir=gs://my-bucket/phi1",
  "--config.distributed.enabled=True",
  *OVERRIDES,
]


def launch(*args: str, dry_run: bool = True) -> subprocess.CompletedProcess:
  return subprocess.run(
    [sys.executable, str(SCRIPT), *args, *(["--dry-run"] if dry_run else [])],
    cwd=REPO,
    env={"PATH": ""},
    capture_output=True,
    text=True,
    timeout=60,
  )


def commands(result: subprocess.CompletedProcess) -> list[list[str]]:
  """The printed commands as argv lists; `#` lines are messages."""
  return [shlex.split(line) for line in result.stdout.splitlines() if not line.startswith("#")]


def flag(argv: list[str], name: str) -> str:
  values = [a.split("=", 1)[1] for a in argv if a.startswith(name + "=")]
  assert len(values) == 1, (name, argv)
  return values[0]


def step(argv: list[str]) -> str:
  """A short name for a command: create, describe, node (its state), scp, delete, or what an
  ssh runs."""
  assert argv[:3] == ["gcloud", "compute", "tpus"], argv
  if argv[3:5] == ["tpu-vm", "describe"]:
    return "node"
  if argv[4] != "ssh":
    return argv[4]
  command = flag(argv, "--command")
  for name, marker in (
    ("install", "uv pip install"),
    ("train", "nohup"),
    ("follow", "tail -n "),
    ("status", "phi_jax-train-status"),
  ):
    if marker in command:
      return name
  raise AssertionError(f"unknown remote command {command!r}")


def trainer_command(train_ssh: list[str]) -> list[str]:
  """The trainer's argv inside `... bash -c '<trainer> >> log ...'` of the train ssh."""
  outer = shlex.split(flag(train_ssh, "--command"))
  inner = shlex.split(outer[outer.index("-c") + 1])
  return inner[: inner.index(">>")]


def test_run_v4_8_lifecycle():
  result = launch(*RUN_V4)
  assert result.returncode == 0, result.stderr
  cmds = commands(result)
  assert [step(c) for c in cmds] == [
    "create",
    "describe",
    "scp",
    "install",
    "train",
    "follow",
    "describe",
    "status",
    "delete",
  ]
  create, describe, scp, install, train, follow, _, status, delete = cmds
  assert create == [
    "gcloud",
    "compute",
    "tpus",
    "queued-resources",
    "create",
    "phi1-v4",
    "--node-id=phi1-v4",
    "--accelerator-type=v4-8",
    "--runtime-version=tpu-ubuntu2204-base",
    *WHERE,
    "--spot",
    "--quiet",
  ]
  assert describe == [
    "gcloud",
    "compute",
    "tpus",
    "queued-resources",
    "describe",
    "phi1-v4",
    *WHERE,
    "--format=value(state.state)",
  ]
  assert scp[5:] == [
    "/tmp/phi1-v4-phi_jax-src.tar.gz",
    "phi1-v4:phi_jax-src.tar.gz",
    "--worker=all",
    *WHERE,
    "--quiet",
  ]
  for ssh in (install, train, status):
    assert ssh[5:7] == ["phi1-v4", "--worker=all"]
  assert "tar -xzf ~/phi_jax-src.tar.gz" in flag(install, "--command")
  assert "-e '.[tpu,data]'" in flag(install, "--command")
  assert trainer_command(train) == TRAINER
  assert follow[5:7] == ["phi1-v4", "--worker=0"] and follow[-1] == "&"
  assert delete == [
    "gcloud",
    "compute",
    "tpus",
    "queued-resources",
    "delete",
    "phi1-v4",
    *WHERE,
    "--force",
    "--quiet",
  ]


def test_preemption_recreates_the_slice_and_reruns_the_same_command():
  result = launch(*RUN_V4, "--dry-run-preemptions=1")
  assert result.returncode == 0, result.stderr
  cmds = commands(result)
  attempt = ["create", "describe", "scp", "install", "train", "follow", "describe"]
  assert [step(c) for c in cmds] == [*attempt, "delete", *attempt, "status", "delete"]
  first, second = cmds[:7], cmds[8:15]
  assert first == second  # the same slice, code and training command, word for word
  assert trainer_command(second[4]) == TRAINER
  assert "resumes from gs://my-bucket/phi1" in result.stdout


def test_teardown_after_too_many_preemptions_and_keep():
  result = launch(*RUN_V4, "--dry-run-preemptions=3", "--max-preemptions=2")
  assert result.returncode == 1
  assert "preempted 3 times" in result.stderr
  steps = [step(c) for c in commands(result)]
  assert steps.count("create") == 3 and steps[-1] == "delete"  # the third slice is torn down too

  kept = launch(*RUN_V4, "--keep")
  assert kept.returncode == 0, kept.stderr
  assert "delete" not in [step(c) for c in commands(kept)]
  assert "keeping phi1-v4" in kept.stdout


@pytest.mark.parametrize(
  "accelerator,runtime",
  [
    ("v4-32", "tpu-ubuntu2204-base"),
    ("v5litepod-16", "v2-alpha-tpuv5-lite"),
    ("v5p-8", "v2-alpha-tpuv5"),
    ("v6e-8", "v2-alpha-tpuv6e"),
  ],
)
def test_up_picks_the_runtime_per_generation(accelerator, runtime):
  result = launch("up", *SLICE, f"--accelerator-type={accelerator}")
  assert result.returncode == 0, result.stderr
  create, describe = commands(result)
  assert flag(create, "--accelerator-type") == accelerator
  assert flag(create, "--runtime-version") == runtime
  assert "--spot" not in create and "--reserved" not in create  # on-demand by default
  assert step(describe) == "describe"


def test_up_options():
  result = launch(
    "up",
    *SLICE,
    "--accelerator-type=v5p-8",
    "--reserved",
    "--runtime-version=v2-alpha-tpuv5-custom",
    "--valid-until-duration=6h",
  )
  (create, _) = commands(result)
  assert create[-4:] == [
    "--project=my-project",
    "--reserved",
    "--valid-until-duration=6h",
    "--quiet",
  ]
  assert flag(create, "--runtime-version") == "v2-alpha-tpuv5-custom"


def test_step_subcommands():
  (train,) = commands(launch("train", *SLICE, *JOB, *OVERRIDES))
  assert step(train) == "train" and train[6] == "--worker=all"
  assert trainer_command(train) == TRAINER

  (install,) = commands(
    launch(
      "install",
      *SLICE,
      "--repo-url=https://github.com/me/phi_jax.git",
      "--ref=0123abc",
      "--extras=tpu",
      "--python=3.12",
    )
  )  # no scp
  script = flag(install, "--command")
  assert (
    "git clone --quiet https://github.com/me/phi_jax.git ~/phi_jax && "
    "git -C ~/phi_jax checkout --quiet 0123abc"
  ) in script
  assert "uv venv --quiet --python 3.12 ~/phi_jax_venv" in script and "-e '.[tpu]'" in script

  (logs,) = commands(launch("logs", *SLICE, "--worker=3"))
  assert logs[5:7] == ["phi1-v4", "--worker=3"]
  assert flag(logs, "--command") == "tail -n +1 -F ~/phi_jax_train.log"

  (delete,) = commands(launch("down", "--name=phi1-v4", "--zone=us-central2-b"))
  assert delete == [
    "gcloud",
    "compute",
    "tpus",
    "queued-resources",
    "delete",
    "phi1-v4",
    "--zone=us-central2-b",
    "--force",
    "--quiet",
  ]


@pytest.mark.parametrize(
  "change,message",
  [
    ({"--workdir": "/tmp/phi1"}, "must be a gs://BUCKET/DIR path"),
    ({"--workdir": "runs/phi1"}, "must be a gs://BUCKET/DIR path"),
    ({"--accelerator-type": "v4_8"}, "is not GENERATION-SIZE"),
    ({"--accelerator-type": "v3-8"}, "is not GENERATION-SIZE"),
    ({"--config": "configs/nope.py"}, "no such file"),
    ({"--config": "/etc/hostname"}, "a config is a .py file"),
    ({"--config": os.__file__}, "is outside"),  # a .py file, but not in the repository
    ({"--name": "Phi1"}, "lowercase letters"),
    ({"--zone": "us-central2"}, "is not a zone name"),
    ({"--extras": "tpu data"}, "comma-separated list"),
  ],
)
def test_bad_input_is_refused_before_any_command(change, message):
  args = [a for a in RUN_V4 if a.split("=")[0] not in change]
  args += [f"{k}={v}" for k, v in change.items()]
  result = launch(*args)
  assert result.returncode != 0
  assert message in result.stderr
  assert commands(result) == []


@pytest.mark.parametrize(
  "args,message",
  [
    ([*RUN_V4, "--steps=3"], "unrecognized argument '--steps=3'"),
    (
      ["up", *SLICE, "--accelerator-type=v4-8", "--config.train.steps=3"],
      "unrecognized arguments for up",
    ),
    (["install", *SLICE, "--ref=main"], "--ref needs --repo-url"),
    ([*RUN_V4, "--reserved"], "not allowed with argument --spot"),
    (["up", "--name=phi1-v4", "--accelerator-type=v4-8"], "required: --zone"),
  ],
)
def test_bad_arguments(args, message):
  result = launch(*args)
  assert result.returncode != 0
  assert message in result.stderr
  assert commands(result) == []


def test_real_run_needs_gcloud_and_simulated_preemptions_need_dry_run():
  result = launch(*RUN_V4, dry_run=False)  # PATH is empty: no gcloud
  assert result.returncode == 1 and "gcloud is not on PATH" in result.stderr
  result = launch(*RUN_V4, "--dry-run-preemptions=1", dry_run=False)
  assert result.returncode == 1 and "in a --dry-run only" in result.stderr
  assert result.stdout == ""


@pytest.fixture(scope="module")
def tpu_pod():
  spec = importlib.util.spec_from_file_location("tpu_pod", SCRIPT)
  module = importlib.util.module_from_spec(spec)
  sys.modules["tpu_pod"] = module  # dataclasses look their module up
  spec.loader.exec_module(module)
  yield module
  del sys.modules["tpu_pod"]


def test_pack_checkout_ships_the_working_tree(tpu_pod, tmp_path):
  repo = tmp_path / "repo"
  repo.mkdir()
  git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
  (repo / ".gitignore").write_text("*.log\n")
  (repo / "kept.py").write_text("committed\n")
  (repo / "gone.py").write_text("deleted after the commit\n")
  subprocess.run(["git", "init", "-q", str(repo)], check=True)
  subprocess.run([*git, "add", "."], check=True)
  subprocess.run([*git, "commit", "-qm", "x"], check=True)
  (repo / "gone.py").unlink()
  (repo / "kept.py").write_text("edited, not committed\n")
  (repo / "new.py").write_text("untracked\n")
  (repo / "run.log").write_text("ignored\n")

  archive = tmp_path / "src.tar.gz"
  assert tpu_pod.pack_checkout(repo, archive) == 3
  with tarfile.open(archive) as tar:
    assert sorted(tar.getnames()) == [".gitignore", "kept.py", "new.py"]
    assert tar.extractfile("kept.py").read() == b"edited, not committed\n"
  assert not (tmp_path / "src.tar.gz.partial").exists()

  with pytest.raises(tpu_pod.LaunchError, match="cannot list the files"):
    tpu_pod.pack_checkout(tmp_path / "not_a_repo", tmp_path / "x.tar.gz")


def test_worker_scripts_detach_training_and_report_its_exit_status(tmp_path):
  """Runs the train and status commands a worker gets, with a stand-in for the venv's Python."""
  home = tmp_path / "home"
  (home / "phi_jax").mkdir(parents=True)
  python = home / "phi_jax_venv" / "bin" / "python"
  python.parent.mkdir(parents=True)
  # It runs until the test creates ~/go, then fails with status 3.
  python.write_text(
    '#!/bin/sh\necho "cwd=$(pwd) args=$*"\nwhile [ ! -f "$HOME/go" ]; do sleep 0.05; done\nexit 3\n'
  )
  python.chmod(0o755)
  cmds = commands(launch(*RUN_V4))
  train = flag(cmds[4], "--command")
  status = flag(cmds[7], "--command")
  env = {"HOME": str(home), "PATH": os.environ["PATH"]}

  exit_file = home / "phi_jax_train.exit"
  try:
    subprocess.run(["bash", "-c", train], env=env, check=True, timeout=30)  # returns: detached
    assert (
      subprocess.run(
        ["bash", "-c", status], env=env, capture_output=True, text=True, check=True
      ).stdout.split()[2]
      == "running"
    )
    assert not exit_file.exists()
  finally:
    (home / "go").touch()  # the stand-in trainer ends whatever happened
  deadline = time.monotonic() + 30
  while not exit_file.exists() and time.monotonic() < deadline:
    time.sleep(0.05)
  assert exit_file.read_text() == "3\n"
  log = (home / "phi_jax_train.log").read_text()
  assert log == f"cwd={home / 'phi_jax'} args={' '.join(TRAINER[1:])}\n"
  tag, host, code = subprocess.run(
    ["bash", "-c", status], env=env, capture_output=True, text=True, check=True
  ).stdout.split()
  assert (tag, code) == ("phi_jax-train-status", "3")


# A stand-in gcloud for real (not dry) runs: it logs each call and answers queries from scripted
# queues (the last answer repeats), so the launcher's parsing and recovery paths run for real.
FAKE_GCLOUD = """#!{python}
import json, os, sys
argv = sys.argv[1:]
with open(os.environ["FAKE_GCLOUD_LOG"], "a") as f:
  f.write(json.dumps(argv) + "\\n")
script_path = os.environ["FAKE_GCLOUD_SCRIPT"]
with open(script_path) as f:
  script = json.load(f)
command = " ".join(a for a in argv if a.startswith("--command=")) or " ".join(argv[:4])
kind = ("describe" if argv[:3] == ["compute", "tpus", "queued-resources"] and argv[3] == "describe"
        else "node" if argv[2:4] == ["tpu-vm", "describe"]
        else "scp" if argv[2:4] == ["tpu-vm", "scp"]
        else "status" if "phi_jax-train-status" in command else None)
if kind in script:
  answer = script[kind][0]
  if len(script[kind]) > 1:
    script[kind].pop(0)
    with open(script_path, "w") as f:
      json.dump(script, f)
  code, out = answer
  sys.stdout.write(out)
  sys.exit(code)
"""


def run_with_fake_gcloud(tmp_path, script: dict) -> tuple[subprocess.CompletedProcess, list[str]]:
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  gcloud = bin_dir / "gcloud"
  gcloud.write_text(FAKE_GCLOUD.format(python=sys.executable))
  gcloud.chmod(0o755)
  (tmp_path / "script.json").write_text(json.dumps(script))
  env = {
    "PATH": f"{bin_dir}:{os.environ['PATH']}",
    "TMPDIR": str(tmp_path),
    "FAKE_GCLOUD_LOG": str(tmp_path / "calls.jsonl"),
    "FAKE_GCLOUD_SCRIPT": str(tmp_path / "script.json"),
  }
  result = subprocess.run(
    [sys.executable, str(SCRIPT), *RUN_V4, "--poll-s=0"],
    cwd=REPO,
    env=env,
    capture_output=True,
    text=True,
    timeout=60,
  )
  calls = [
    ["gcloud", *json.loads(line)] for line in (tmp_path / "calls.jsonl").read_text().splitlines()
  ]
  # The log follower runs in the background: when (and whether) it gets to log is a race.
  return result, [step(c) for c in calls if step(c) != "follow"]


def test_real_run_recovers_when_workers_become_unreachable_on_a_preempted_node(tmp_path):
  tag = "phi_jax-train-status"
  result, steps = run_with_fake_gcloud(
    tmp_path,
    {
      "describe": [[0, "WAITING_FOR_RESOURCES\n"], [0, "ACTIVE\n"]],
      "status": [
        [0, f"{tag} w-0 running\n{tag} w-1 running\n"],
        [255, ""],
        [0, f"{tag} w-0 0\n{tag} w-1 0\n"],
      ],
      "node": [[0, "PREEMPTED\n"]],
    },
  )
  assert result.returncode == 0, result.stderr
  attempt = ["create", "describe", "describe", "scp", "install", "train"]
  assert steps == [
    *attempt,
    "describe",
    "status",
    "describe",
    "status",
    "node",
    "delete",
    "create",
    "describe",
    "scp",
    "install",
    "train",
    "describe",
    "status",
    "delete",
  ]
  assert "TPU node phi1-v4 is PREEMPTED" in result.stdout
  assert "training finished on every worker (2)" in result.stdout
  archive = tmp_path / "phi1-v4-phi_jax-src.tar.gz"  # packed once, shipped to both slices
  with tarfile.open(archive) as tar:
    assert "launch/tpu_pod.py" in tar.getnames()


def test_real_run_reports_a_failed_worker_and_tears_down(tmp_path):
  tag = "phi_jax-train-status"
  result, steps = run_with_fake_gcloud(
    tmp_path,
    {
      "describe": [[0, "ACTIVE\n"]],
      "status": [[0, f"{tag} w-0 running\n{tag} w-1 1\n"]],
      "node": [[0, "READY\n"]],
    },
  )
  assert result.returncode == 1
  assert "the trainer failed on w-1 (exit status 1)" in result.stderr
  assert steps[-3:] == ["describe", "status", "delete"]


def test_real_run_takes_a_command_failing_on_a_suspended_slice_for_a_preemption(tmp_path):
  result, steps = run_with_fake_gcloud(
    tmp_path,
    {
      "describe": [[0, "ACTIVE\n"], [0, "SUSPENDED\n"], [0, "ACTIVE\n"]],
      "scp": [[255, ""], [0, ""]],
      "status": [[0, "phi_jax-train-status w-0 0\n"]],
    },
  )
  assert result.returncode == 0, result.stderr
  assert steps == [
    "create",
    "describe",
    "scp",
    "describe",
    "delete",
    "create",
    "describe",
    "scp",
    "install",
    "train",
    "describe",
    "status",
    "delete",
  ]


def test_real_run_stops_on_a_failed_queued_resource(tmp_path):
  result, steps = run_with_fake_gcloud(tmp_path, {"describe": [[0, "FAILED\n"]]})
  assert result.returncode == 1
  assert "queued resource phi1-v4 FAILED" in result.stderr
  assert steps == ["create", "describe", "delete"]


def test_real_run_resumes_when_the_trainer_saved_on_a_preemption_notice(tmp_path):
  tag = "phi_jax-train-status"
  result, steps = run_with_fake_gcloud(
    tmp_path,
    {
      "describe": [[0, "ACTIVE\n"]],
      "status": [[0, f"{tag} w-0 143\n{tag} w-1 running\n"], [0, f"{tag} w-0 0\n{tag} w-1 0\n"]],
      "node": [[0, "READY\n"]],
    },
  )
  assert result.returncode == 0, result.stderr
  assert "saved and stopped on a preemption notice on w-0" in result.stdout
  assert steps == [
    "create",
    "describe",
    "scp",
    "install",
    "train",
    "describe",
    "status",
    "delete",
    "create",
    "describe",
    "scp",
    "install",
    "train",
    "describe",
    "status",
    "delete",
  ]
