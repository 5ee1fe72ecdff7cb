#!/usr/bin/env python3
"""Trains phi_jax on a Cloud TPU slice: create it, install, train on every worker, follow the
log, re-create it and resume after a preemption, tear it down.

    python3 launch/tpu_pod.py run --name=phi1 --zone=us-central2-b --accelerator-type=v4-32 \
        --spot --config=configs/phi1.py --workdir=gs://BUCKET/phi1 \
        --config.train.micro_batch=16 --config.model.remat=dots_no_batch

Subcommands, each one step of `run`:
  up       create the slice as a queued resource and wait until it is ACTIVE
  install  copy this checkout (or clone --repo-url) to every worker, pip-install it into a venv
  train    start `python -m phi_jax.train` on every worker, detached, logging to a file
  logs     follow one worker's training log
  down     delete the queued resource and its slice
  run      all of the above; after a preemption it deletes and re-creates the slice and reruns
           the same command, and the trainer resumes from its gs:// workdir

`--dry-run` prints every gcloud command, shell-quoted, instead of running it (queries are
assumed to answer "ACTIVE" and "finished"); `--dry-run-preemptions=N` makes `run` see N
preemptions. Standard library only: it runs wherever gcloud does.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# TPU software versions Cloud TPU recommends for JAX, per generation (accelerator type prefix).
RUNTIME_VERSIONS = {
  "v4": "tpu-ubuntu2204-base",
  "v5litepod": "v2-alpha-tpuv5-lite",  # v5e
  "v5p": "v2-alpha-tpuv5",
  "v6e": "v2-alpha-tpuv6e",
}
ACCELERATOR_TYPE = re.compile(rf"({'|'.join(RUNTIME_VERSIONS)})-([1-9][0-9]*)")
ZONE = re.compile(r"[a-z]+-[a-z]+[0-9]+-[a-z]")  # us-central2-b, europe-west4-a
NAME = re.compile(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?")  # Google Cloud resource ids
BUCKET_PATH = re.compile(r"gs://[a-z0-9][-a-z0-9_.]{1,220}[a-z0-9](/.*)?")
OVERRIDE = re.compile(r"--config\.[A-Za-z_][A-Za-z0-9_.]*=.*", re.DOTALL)
EXTRAS = re.compile(r"[a-z0-9_-]+(,[a-z0-9_-]+)*")

# Queued-resource states of a slice that is gone or going (a Spot preemption, maintenance).
LOST_STATES = ("SUSPENDING", "SUSPENDED")
# TPU node states of a preempted slice; ssh fails before the queued resource says so.
PREEMPTED_NODE_STATES = ("PREEMPTED", "TERMINATED")
DESCRIBE_ATTEMPTS = 5  # consecutive failed describes (network blips) before giving up
RETRY_S = 30

# On every worker, under the login's home directory.
REMOTE_ARCHIVE = "phi_jax-src.tar.gz"
REMOTE_SOURCE = "~/phi_jax"  # the code; the trainer runs from here, so configs/ resolves
REMOTE_VENV = "~/phi_jax_venv"
REMOTE_UV = "~/.local/bin/uv"
REMOTE_LOG = "~/phi_jax_train.log"
REMOTE_EXIT = "~/phi_jax_train.exit"  # the trainer's exit status, written once it has ended
STATUS_TAG = "phi_jax-train-status"
PREEMPTION_EXIT = "143"  # phi_jax.train's status after saving on SIGTERM / a preemption notice


class LaunchError(Exception):
  """A problem the user has to fix; main() prints it without a traceback."""


class CommandFailed(LaunchError):
  def __init__(self, argv: list[str], code: int, stderr: str = ""):
    super().__init__(
      "\n".join(filter(None, [f"exit status {code} from: {shlex.join(argv)}", stderr.strip()]))
    )


class Preempted(Exception):
  """The slice went away under the run."""


# --------------------------------------------------------------------------- gcloud commands


@dataclasses.dataclass(frozen=True)
class Slice:
  """One TPU slice: a queued resource and the TPU node it provisions, both named `name`."""

  name: str
  zone: str
  project: str | None

  def _where(self) -> list[str]:
    return [f"--zone={self.zone}"] + ([f"--project={self.project}"] if self.project else [])

  def launcher_flags(self) -> str:
    """This slice's options for another launch/tpu_pod.py subcommand, for messages."""
    return shlex.join([f"--name={self.name}", *self._where()])

  def create(
    self,
    accelerator_type: str,
    runtime_version: str,
    spot: bool,
    reserved: bool,
    valid_until_duration: str | None,
  ) -> list[str]:
    return [
      "gcloud",
      "compute",
      "tpus",
      "queued-resources",
      "create",
      self.name,
      f"--node-id={self.name}",
      f"--accelerator-type={accelerator_type}",
      f"--runtime-version={runtime_version}",
      *self._where(),
      *(["--spot"] if spot else []),
      *(["--reserved"] if reserved else []),
      *([f"--valid-until-duration={valid_until_duration}"] if valid_until_duration else []),
      "--quiet",
    ]

  def describe(self) -> list[str]:
    return [
      "gcloud",
      "compute",
      "tpus",
      "queued-resources",
      "describe",
      self.name,
      *self._where(),
      "--format=value(state.state)",
    ]

  def node_state(self) -> list[str]:
    return [
      "gcloud",
      "compute",
      "tpus",
      "tpu-vm",
      "describe",
      self.name,
      *self._where(),
      "--format=value(state)",
    ]

  def delete(self) -> list[str]:
    # --force deletes the TPU node with the request; gcloud waits until both are gone.
    return [
      "gcloud",
      "compute",
      "tpus",
      "queued-resources",
      "delete",
      self.name,
      *self._where(),
      "--force",
      "--quiet",
    ]

  def scp(self, local: Path, remote: str) -> list[str]:
    return [
      "gcloud",
      "compute",
      "tpus",
      "tpu-vm",
      "scp",
      str(local),
      f"{self.name}:{remote}",
      "--worker=all",
      *self._where(),
      "--quiet",
    ]

  def ssh(self, command: str, worker: str = "all") -> list[str]:
    return [
      "gcloud",
      "compute",
      "tpus",
      "tpu-vm",
      "ssh",
      self.name,
      f"--worker={worker}",
      *self._where(),
      f"--command={command}",
      "--quiet",
    ]


@dataclasses.dataclass(frozen=True)
class Source:
  """Where workers get phi_jax: this checkout (packed and copied) or a git repository."""

  repo_url: str | None
  ref: str | None
  python: str  # the venv's Python version (jax 0.10 needs >= 3.11; TPU images ship 3.10)
  extras: str  # setup.py extras: tpu = jax[tpu]; data = seqio & co. for data.source=seqio


@dataclasses.dataclass(frozen=True)
class Job:
  config: str  # path relative to the repository root, the same on every worker
  workdir: str
  overrides: tuple[str, ...]


# --------------------------------------------------------------------------- what runs on workers


def install_script(source: Source) -> str:
  """Fresh code and venv: uv brings its own Python, since the TPU images' is too old for jax."""
  if source.repo_url is None:
    fetch = f"mkdir -p {REMOTE_SOURCE} && tar -xzf ~/{REMOTE_ARCHIVE} -C {REMOTE_SOURCE}"
  else:
    fetch = f"git clone --quiet {shlex.quote(source.repo_url)} {REMOTE_SOURCE}"
    if source.ref:
      fetch += f" && git -C {REMOTE_SOURCE} checkout --quiet {shlex.quote(source.ref)}"
  return " && ".join(
    [
      f"rm -rf {REMOTE_SOURCE} {REMOTE_VENV}",
      fetch,
      "python3 -m pip install --user --quiet --upgrade uv",
      f"{REMOTE_UV} venv --quiet --python {shlex.quote(source.python)} {REMOTE_VENV}",
      f"cd {REMOTE_SOURCE}",
      f"{REMOTE_UV} pip install --quiet --python {REMOTE_VENV}/bin/python "
      f"-e {shlex.quote(f'.[{source.extras}]')}",
    ]
  )


def trainer_args(job: Job) -> list[str]:
  """The trainer's command line after the interpreter; the same on every worker and every rerun.

  distributed.enabled makes each worker call jax.distributed.initialize(), which finds its
  peers through the TPU metadata; user overrides come last so they win.
  """
  return [
    "-m",
    "phi_jax.train",
    f"--config={job.config}",
    f"--workdir={job.workdir}",
    "--config.distributed.enabled=True",
    *job.overrides,
  ]


def train_script(job: Job) -> str:
  """Starts the trainer detached (it outlives the ssh session); its exit status lands in a file
  written whole (temp + rename), so a half-written status is never read."""
  trainer = f"{REMOTE_VENV}/bin/python {shlex.join(trainer_args(job))}"
  detached = (
    f"{trainer} >> {REMOTE_LOG} 2>&1 ; "
    f"echo $? > {REMOTE_EXIT}.tmp && mv {REMOTE_EXIT}.tmp {REMOTE_EXIT}"
  )
  return (
    f"cd {REMOTE_SOURCE} && rm -f {REMOTE_EXIT} && "
    f"(setsid nohup bash -c {shlex.quote(detached)} > /dev/null 2>&1 < /dev/null &)"
  )


def status_script() -> str:
  """One line per worker: `TAG HOSTNAME STATUS`, STATUS = the exit status, running or missing.

  The pattern `phi_jax[.]train` matches the trainer but not this script's own command line.
  """
  return (
    f"if [ -f {REMOTE_EXIT} ]; then s=$(cat {REMOTE_EXIT}); "
    "elif pgrep -f 'phi_jax[.]train' > /dev/null; then s=running; else s=missing; fi; "
    f"echo {STATUS_TAG} $(hostname) $s"
  )


def follow_script(lines: str = "+1") -> str:
  """Prints the log (from line 1, or its last `lines`) and what is appended to it."""
  return f"tail -n {lines} -F {REMOTE_LOG}"


# --------------------------------------------------------------------------- running commands


@dataclasses.dataclass(frozen=True)
class Answer:
  code: int
  stdout: str
  stderr: str = ""

  @property
  def ok(self) -> bool:
    return self.code == 0


class Gcloud:
  """Every gcloud call goes through here: run (prints the command first), or in a dry run only
  print. Queries name the answer a dry run assumes, so the whole lifecycle prints. A real run
  does not echo its polling queries, which would interleave with the followed log."""

  def __init__(self, dry_run: bool):
    self.dry_run = dry_run
    if not dry_run and shutil.which("gcloud") is None:
      raise LaunchError(
        "gcloud is not on PATH: install the Google Cloud CLI "
        "(https://cloud.google.com/sdk/docs/install), or pass --dry-run"
      )

  @staticmethod
  def say(message: str) -> None:
    print(f"# {message}", flush=True)

  def run(self, argv: list[str]) -> None:
    print(shlex.join(argv), flush=True)
    if not self.dry_run:
      code = subprocess.run(argv, stdin=subprocess.DEVNULL).returncode
      if code:
        raise CommandFailed(argv, code)

  def query(self, argv: list[str], assume: str) -> Answer:
    if self.dry_run:
      print(shlex.join(argv), flush=True)
      return Answer(0, assume)
    result = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    return Answer(result.returncode, result.stdout, result.stderr)

  def start(self, argv: list[str]) -> subprocess.Popen | None:
    """Starts argv in the background, its output on ours."""
    print(shlex.join(argv) + " &", flush=True)
    return None if self.dry_run else subprocess.Popen(argv, stdin=subprocess.DEVNULL)

  def sleep(self, seconds: float) -> None:
    if not self.dry_run:
      time.sleep(seconds)


class LogFollower:
  """Shows worker 0's training log here while the run waits, restarting its ssh if it drops."""

  def __init__(self, g: Gcloud, tpu: Slice):
    self.g, self.tpu = g, tpu
    self.process = g.start(tpu.ssh(follow_script(), worker="0"))

  def keep_alive(self) -> None:
    if self.process is not None and self.process.poll() is not None:
      self.process = self.g.start(self.tpu.ssh(follow_script(lines="0"), worker="0"))

  def stop(self) -> None:
    if self.process is not None and self.process.poll() is None:
      self.process.terminate()
      try:
        self.process.wait(timeout=10)
      except subprocess.TimeoutExpired:
        self.process.kill()


# --------------------------------------------------------------------------- the lifecycle


def slice_state(g: Gcloud, tpu: Slice, assume: str = "ACTIVE") -> str:
  """The queued resource's state (ACTIVE, WAITING_FOR_RESOURCES, SUSPENDED, ...)."""
  for attempt in range(DESCRIBE_ATTEMPTS):
    answer = g.query(tpu.describe(), assume)
    if answer.ok:
      return answer.stdout.strip()
    if attempt + 1 < DESCRIBE_ATTEMPTS:
      g.sleep(RETRY_S)
  raise CommandFailed(tpu.describe(), answer.code, answer.stderr)


def create(g: Gcloud, tpu: Slice, args: argparse.Namespace) -> None:
  """Queues the request; the slice exists once wait_until_active returns."""
  g.say(
    f"create {tpu.name}: {args.accelerator_type}, {args.runtime_version}, "
    f"{'spot' if args.spot else 'reserved' if args.reserved else 'on-demand'}, {tpu.zone}"
  )
  g.run(
    tpu.create(
      args.accelerator_type,
      args.runtime_version,
      args.spot,
      args.reserved,
      args.valid_until_duration,
    )
  )


def wait_until_active(g: Gcloud, tpu: Slice, poll_s: float) -> None:
  shown = None
  while True:
    state = slice_state(g, tpu)
    if state != shown:
      g.say(f"{tpu.name} is {state}")
      shown = state
    if state == "ACTIVE":
      return
    if state in LOST_STATES:
      raise Preempted(f"{tpu.name} is {state} before training started")
    if state == "FAILED":
      raise LaunchError(
        f"queued resource {tpu.name} FAILED (no capacity before --valid-until-duration, quota, "
        f"or a bad request); the reason: {shlex.join(tpu.describe()[:-1])}"
      )
    g.sleep(poll_s)


def pack_checkout(repo: Path, archive: Path) -> int:
  """Writes the checkout's working tree (tracked files and untracked ones git does not ignore,
  uncommitted edits included) to `archive` (.tar.gz), whole or not at all.

  Returns the number of files.
  """
  listing = subprocess.run(
    ["git", "-C", str(repo), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
    capture_output=True,
  )
  if listing.returncode:
    raise LaunchError(
      f"cannot list the files of {repo} ({listing.stderr.decode().strip()}): "
      "install from a git checkout, or pass --repo-url"
    )
  files = [f for f in listing.stdout.decode().split("\0") if f and (repo / f).is_file()]
  partial = archive.with_name(archive.name + ".partial")
  with tarfile.open(partial, "w:gz") as tar:
    for f in files:
      tar.add(repo / f, arcname=f, recursive=False)
  os.replace(partial, archive)
  return len(files)


def local_archive(tpu: Slice) -> Path:
  return Path(tempfile.gettempdir()) / f"{tpu.name}-{REMOTE_ARCHIVE}"


def pack(g: Gcloud, tpu: Slice, source: Source) -> Path | None:
  """Packs the checkout once per launch, so a re-created slice gets the same code."""
  if source.repo_url is not None:
    return None
  archive = local_archive(tpu)
  if g.dry_run:
    g.say(f"pack {REPO} (git ls-files --cached --others --exclude-standard) into {archive}")
  else:
    count = pack_checkout(REPO, archive)
    size_mib = archive.stat().st_size / 2**20
    g.say(f"packed {count} files of {REPO} into {archive} ({size_mib:.1f} MiB)")
  return archive


def install(g: Gcloud, tpu: Slice, source: Source, archive: Path | None) -> None:
  if archive is not None:
    g.run(tpu.scp(archive, REMOTE_ARCHIVE))
  g.run(tpu.ssh(install_script(source)))


def worker_statuses(g: Gcloud, tpu: Slice) -> list[tuple[str, str]] | None:
  """(hostname, status) per worker, or None when some worker could not be reached."""
  answer = g.query(tpu.ssh(status_script()), assume=f"{STATUS_TAG} {tpu.name}-w-0 0")
  if not answer.ok:
    return None
  return [
    tuple(line.split()[1:3])
    for line in answer.stdout.splitlines()
    if line.startswith(STATUS_TAG + " ") and len(line.split()) == 3
  ]


def wait_for_training(g: Gcloud, tpu: Slice, poll_s: float, simulate_preemption: bool) -> None:
  """Follows the log until the trainer exited 0 on every worker; raises Preempted or LaunchError."""
  follower = LogFollower(g, tpu)
  try:
    while True:
      g.sleep(poll_s)
      follower.keep_alive()
      state = slice_state(g, tpu, assume="SUSPENDED" if simulate_preemption else "ACTIVE")
      if state in LOST_STATES:
        raise Preempted(f"{tpu.name} is {state}")
      if state != "ACTIVE":
        raise LaunchError(f"{tpu.name} is {state} while training")
      statuses = worker_statuses(g, tpu)
      if statuses is None:
        node = g.query(tpu.node_state(), assume="READY")
        if node.ok and node.stdout.strip() in PREEMPTED_NODE_STATES:
          raise Preempted(f"TPU node {tpu.name} is {node.stdout.strip()}")
        continue  # unreachable for another reason; ask again at the next poll
      saved = [host for host, status in statuses if status == PREEMPTION_EXIT]
      if saved:  # the trainer checkpointed on a preemption notice and stopped: resume elsewhere
        raise Preempted(
          f"the trainer saved and stopped on a preemption notice on {', '.join(saved)}"
        )
      failed = [(host, status) for host, status in statuses if status not in ("0", "running")]
      if failed:
        raise LaunchError(
          "the trainer failed on "
          + ", ".join(f"{h} (exit status {s})" for h, s in failed)
          + f"; its log is {REMOTE_LOG} on each worker: launch/tpu_pod.py logs "
          f"{tpu.launcher_flags()} --worker=N"
        )
      if statuses and all(status == "0" for _, status in statuses):
        g.say(f"training finished on every worker ({len(statuses)})")
        return
  finally:
    follower.stop()


def run(g: Gcloud, tpu: Slice, source: Source, job: Job, args: argparse.Namespace) -> None:
  """The whole lifecycle; the slice is deleted at the end, whatever the end, unless --keep."""
  archive = pack(g, tpu, source)
  preemptions, created = 0, False
  try:
    while True:
      try:
        try:
          create(g, tpu, args)
        except KeyboardInterrupt:
          created = True  # the request may have gone through before the interrupt
          raise
        created = True  # from here on the request is ours to delete, even while it waits
        wait_until_active(g, tpu, args.poll_s)
        install(g, tpu, source, archive)
        g.run(tpu.ssh(train_script(job)))
        wait_for_training(
          g, tpu, args.poll_s, simulate_preemption=preemptions < args.dry_run_preemptions
        )
        return
      except (Preempted, CommandFailed) as e:
        # A command that failed because the slice vanished under it is a preemption too.
        if isinstance(e, CommandFailed) and not (created and slice_state(g, tpu) in LOST_STATES):
          raise
        preemptions += 1
        if preemptions > args.max_preemptions:
          raise LaunchError(
            f"{tpu.name} was preempted {preemptions} times (--max-preemptions="
            f"{args.max_preemptions}); rerun to go on from {job.workdir}"
          ) from e
        g.say(
          f"preempted ({e}): re-creating {tpu.name} ({preemptions}/{args.max_preemptions}), "
          f"then the same command; the trainer resumes from {job.workdir}"
        )
        g.run(tpu.delete())
        created = False
  finally:
    if created and args.keep:
      g.say(
        f"keeping {tpu.name} (--keep); delete it with: "
        f"launch/tpu_pod.py down {tpu.launcher_flags()}"
      )
    elif created:
      g.say(f"tear down {tpu.name}")
      g.run(tpu.delete())


# --------------------------------------------------------------------------- checking the input


def check_name(name: str) -> str:
  if not NAME.fullmatch(name):
    raise LaunchError(
      f"--name={name!r}: use 1-63 lowercase letters, digits and hyphens, "
      "starting with a letter (it names the queued resource and the TPU node)"
    )
  return name


def check_zone(zone: str) -> str:
  if not ZONE.fullmatch(zone):
    raise LaunchError(
      f"--zone={zone!r} is not a zone name such as us-central2-b "
      "(gcloud compute tpus locations list shows where TPUs are)"
    )
  return zone


def runtime_version(accelerator_type: str, requested: str | None) -> str:
  """The TPU software version: the one asked for, else the recommended one for the generation."""
  match = ACCELERATOR_TYPE.fullmatch(accelerator_type)
  if not match:
    raise LaunchError(
      f"--accelerator-type={accelerator_type!r} is not GENERATION-SIZE with GENERATION one of "
      f"{', '.join(RUNTIME_VERSIONS)} (e.g. v4-8, v4-32, v5litepod-16, v5p-8, v6e-8)"
    )
  return requested or RUNTIME_VERSIONS[match.group(1)]


def check_workdir(workdir: str) -> str:
  if not BUCKET_PATH.fullmatch(workdir):
    raise LaunchError(
      f"--workdir={workdir!r} must be a gs://BUCKET/DIR path: the workers of a slice share no "
      "disk, the slice's disks vanish with a preemption or teardown, and a rerun resumes from "
      "the workdir's checkpoints"
    )
  return workdir


def repo_relative_config(config: str) -> str:
  """The config file's path inside the repository, which is where workers find it."""
  path = Path(config).resolve()
  if not path.is_file():
    raise LaunchError(f"--config={config}: no such file (configs/*.py lists the configs)")
  if path.suffix != ".py":
    raise LaunchError(f"--config={config}: a config is a .py file with get_config()")
  if not path.is_relative_to(REPO):
    raise LaunchError(
      f"--config={config} is outside {REPO}: workers only get the repository's "
      "files; move the config under configs/"
    )
  return path.relative_to(REPO).as_posix()


def check_overrides(overrides: list[str]) -> tuple[str, ...]:
  for override in overrides:
    if not OVERRIDE.fullmatch(override):
      raise LaunchError(
        f"unrecognized argument {override!r}: options after the launcher's own "
        "are trainer config overrides, --config.SECTION.FIELD=VALUE"
      )
  return tuple(overrides)


def check_source(args: argparse.Namespace) -> Source:
  if args.ref and not args.repo_url:
    raise LaunchError("--ref needs --repo-url (without it, workers get this checkout as it is)")
  if not EXTRAS.fullmatch(args.extras):
    raise LaunchError(
      f"--extras={args.extras!r}: a comma-separated list of setup.py extras, e.g. tpu,data"
    )
  return Source(args.repo_url, args.ref, args.python, args.extras)


# --------------------------------------------------------------------------- CLI


def parser() -> argparse.ArgumentParser:
  common = argparse.ArgumentParser(add_help=False)
  common.add_argument("--name", required=True, help="queued resource and TPU node id")
  common.add_argument("--zone", required=True, help="e.g. us-central2-b (v4), us-west4-a (v5e)")
  common.add_argument("--project", default=None, help="default: gcloud's core/project")
  common.add_argument(
    "--dry-run", action="store_true", help="print every gcloud command instead of running it"
  )

  hardware = argparse.ArgumentParser(add_help=False)
  hardware.add_argument("--accelerator-type", required=True, help="v4-8, v5litepod-16, v5p-8, ...")
  hardware.add_argument(
    "--runtime-version",
    default=None,
    help="default per generation: "
    + ", ".join(f"{gen}: {v}" for gen, v in RUNTIME_VERSIONS.items()),
  )
  tier = hardware.add_mutually_exclusive_group()
  tier.add_argument(
    "--spot",
    action="store_true",
    help="Spot VMs: cheaper, preemptible at any time (default: on-demand)",
  )
  tier.add_argument("--reserved", action="store_true", help="use the project's reservation")
  hardware.add_argument(
    "--valid-until-duration",
    default=None,
    help="give up waiting for capacity after this long, e.g. 6h",
  )
  hardware.add_argument("--poll-s", type=float, default=60.0, help="seconds between state checks")

  code = argparse.ArgumentParser(add_help=False)
  code.add_argument(
    "--repo-url",
    default=None,
    help="workers git clone this; default: copy this checkout's working tree",
  )
  code.add_argument(
    "--ref",
    default=None,
    help="branch, tag or commit of --repo-url (a commit keeps re-created slices on the same code)",
  )
  code.add_argument("--python", default="3.11", help="Python version of the workers' venv")
  code.add_argument("--extras", default="tpu,data", help="setup.py extras to install")

  job = argparse.ArgumentParser(add_help=False)
  job.add_argument("--config", required=True, help="configs/<name>.py")
  job.add_argument("--workdir", required=True, help="gs://BUCKET/DIR")

  lifecycle = argparse.ArgumentParser(add_help=False)
  lifecycle.add_argument("--keep", action="store_true", help="leave the slice up at the end")
  lifecycle.add_argument("--max-preemptions", type=int, default=50)
  lifecycle.add_argument(
    "--dry-run-preemptions",
    type=int,
    default=0,
    help="with --dry-run: the first N training attempts are preempted",
  )

  main_parser = argparse.ArgumentParser(
    prog="launch/tpu_pod.py",
    description=__doc__,
    formatter_class=argparse.RawDescriptionHelpFormatter,
    epilog="Trainer config overrides (--config.SECTION.FIELD=VALUE) follow the options of "
    "train and run.",
  )
  sub = main_parser.add_subparsers(dest="command", required=True)
  sub.add_parser("up", parents=[common, hardware], help="create the slice, wait until ACTIVE")
  sub.add_parser("install", parents=[common, code], help="install phi_jax on every worker")
  sub.add_parser("train", parents=[common, job], help="start training on every worker")
  logs = sub.add_parser("logs", parents=[common], help="follow a worker's training log")
  logs.add_argument("--worker", type=int, default=0)
  sub.add_parser("down", parents=[common], help="delete the slice")
  sub.add_parser(
    "run",
    parents=[common, hardware, code, job, lifecycle],
    help="up, install, train, follow; recover from preemptions; down",
  )
  return main_parser


def main(argv: list[str] | None = None) -> None:
  args, extra = parser().parse_known_args(argv)
  try:
    tpu = Slice(check_name(args.name), check_zone(args.zone), args.project)
    if args.command in ("up", "run"):
      args.runtime_version = runtime_version(args.accelerator_type, args.runtime_version)
    if args.command in ("install", "run"):
      source = check_source(args)
    if args.command in ("train", "run"):
      job = Job(
        repo_relative_config(args.config), check_workdir(args.workdir), check_overrides(extra)
      )
    elif extra:
      raise LaunchError(f"unrecognized arguments for {args.command}: {shlex.join(extra)}")
    if getattr(args, "dry_run_preemptions", 0) and not args.dry_run:
      raise LaunchError("--dry-run-preemptions simulates preemptions in a --dry-run only")
    g = Gcloud(args.dry_run)

    if args.command == "up":
      create(g, tpu, args)
      wait_until_active(g, tpu, args.poll_s)
    elif args.command == "install":
      install(g, tpu, source, pack(g, tpu, source))
    elif args.command == "train":
      g.run(tpu.ssh(train_script(job)))
      g.say(f"training started; follow it with: launch/tpu_pod.py logs {tpu.launcher_flags()}")
    elif args.command == "logs":
      g.run(tpu.ssh(follow_script(), worker=str(args.worker)))
    elif args.command == "down":
      g.run(tpu.delete())
    else:
      run(g, tpu, source, job, args)
  except (LaunchError, Preempted) as e:
    sys.exit(f"launch/tpu_pod.py: error: {e}")
  except KeyboardInterrupt:  # run() has torn the slice down unless --keep
    sys.exit("launch/tpu_pod.py: interrupted")


if __name__ == "__main__":
  main()
