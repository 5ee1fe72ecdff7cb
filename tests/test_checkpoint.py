"""Checkpoints: killed runs resume bit for bit, damaged steps are named and skipped while other
failures to read a step leave it in place, checkpoints restore onto other meshes, and pretrained
params hand off to finetuning."""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
import xla_env
from orbax.checkpoint._src.serialization import serialization as orbax_serialization

from phi_jax import checkpoint, configs, convert, hf_format, model, sharding, train, train_step

REPO = Path(__file__).resolve().parents[1]
SMALL = dict(
  vocab_size=256,
  d_model=64,
  n_layers=2,
  n_heads=4,
  head_dim=16,
  mlp_dim=128,
  rotary_dim=8,
  max_len=64,
)


def small_config(name: str = "tiny", steps: int = 8, **checkpoint_options):
  cfg = configs.get(name)
  cfg.model.update(SMALL)
  cfg.train.update(global_batch=8, seq_len=32, steps=steps, log_every=2)
  # One optimizer for pretraining and finetuning configs: their steps compile to one program.
  cfg.optim.update(learning_rate=1e-3, weight_decay=0.1, warmup_steps=2, decay_steps=50)
  cfg.checkpoint.update({"every_steps": 2, "keep": 0, **checkpoint_options})
  cfg.logging.update(progress_bar=False, tensorboard=False)
  return cfg


def assert_trees_equal(got, want):
  """Bit for bit, leaf by leaf, naming the first leaf that differs."""
  assert jax.tree.structure(got) == jax.tree.structure(want)
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(got), jax.tree.leaves(want)):
    a, b = np.asarray(a), np.asarray(b)
    assert a.dtype == b.dtype and np.array_equal(a, b), jax.tree_util.keystr(path)


def steps_in(workdir: Path) -> list[int]:
  directory = workdir / "checkpoints"
  if not directory.exists():
    return []
  return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit())


def _largest_params_file(step_dir: Path) -> Path:
  return max((step_dir / "params").rglob("d/*"), key=lambda p: p.stat().st_size)


def _damage(step_dir: Path, how: str) -> None:
  if how == "missing_item":
    shutil.rmtree(step_dir / "opt_state")
  elif how == "missing_file":  # a chunk's: TensorStore finds no bytes to decode
    _largest_params_file(step_dir).unlink()
  elif how == "missing_manifest":  # TensorStore: NOT_FOUND
    (step_dir / "params" / "manifest.ocdbt").unlink()
  elif how == "missing_metadata":  # the tree's: orbax would infer another tree from the arrays
    (step_dir / "opt_state" / "_METADATA").unlink()
  elif how == "truncated_progress":
    path = step_dir / "progress" / "metadata"
    path.write_bytes(path.read_bytes()[:20])
  elif how == "undecodable_manifest":  # byte 14 starts its zstd frame
    path = step_dir / "params" / "manifest.ocdbt"
    data = bytearray(path.read_bytes())
    data[14] ^= 0xFF
    path.write_bytes(bytes(data))
  else:  # the largest params data file: truncated, or one byte changed (only fingerprints see that)
    path = _largest_params_file(step_dir)
    data = bytearray(path.read_bytes())
    if how == "truncated_params":
      data = data[: len(data) // 2]
    else:
      data[len(data) // 2] ^= 0x40
    path.write_bytes(bytes(data))


# --------------------------------------------------------------------------- the CLI, killed

CLI_STEPS = 48
CLI_ARGS = (
  "--config=configs/tiny.py",
  "--config.model.vocab_size=256",
  "--config.model.d_model=64",
  "--config.model.mlp_dim=128",
  "--config.train.global_batch=8",
  "--config.train.seq_len=64",
  f"--config.train.steps={CLI_STEPS}",
  "--config.train.log_every=4",
  "--config.checkpoint.every_steps=3",
  "--config.checkpoint.keep=2",
  "--config.logging.progress_bar=False",
  "--config.logging.tensorboard=False",
)


def _start(workdir: Path, log: Path, args: tuple[str, ...]) -> subprocess.Popen:
  # The session's persistent compilation cache (conftest) spares each restart the compile;
  # cached executables are the compiled ones, so the arithmetic is that of a fresh compile.
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=xla_env.flags(8))
  with log.open("a") as out:
    return subprocess.Popen(
      [sys.executable, "-m", "phi_jax.train", f"--workdir={workdir}", *args],
      env=env,
      cwd=REPO,
      stdout=out,
      stderr=subprocess.STDOUT,
    )


def _wait(proc: subprocess.Popen, until, timeout_s: float = 180) -> bool:
  """Polls until `until()` (True) or the process exits (False)."""
  end = time.monotonic() + timeout_s
  while proc.poll() is None:
    if until():
      return True
    if time.monotonic() > end:
      proc.kill()
      pytest.fail("a trainer run hung")
    time.sleep(0.005)
  return False


def _tmp_dirs(workdir: Path) -> set[str]:
  directory = workdir / "checkpoints"
  return {p.name for p in directory.iterdir() if "tmp" in p.name} if directory.exists() else set()


def _save_in_flight(workdir: Path):
  """A condition that holds once a save of this run is being written: the half-written steps
  that an earlier kill left behind must first be gone (the new run deletes them at start)."""
  stale = _tmp_dirs(workdir)

  def until() -> bool:
    nonlocal stale
    tmp = _tmp_dirs(workdir)
    if stale:
      stale &= tmp
      return False
    return bool(tmp)

  return until


@pytest.mark.slow
def test_cli_killed_at_random_moments_ends_bitwise_equal_to_an_uninterrupted_run(tmp_path):
  """SIGKILL mid-save, at random moments and after progress, SIGTERM, and finally a damaged
  newest step: rerunning the same command ends with the uninterrupted run's bits. (Resuming on
  the corpus's records, from the data position saved: tests/test_multihost.py.)"""
  args = CLI_ARGS
  log = tmp_path / "runs.log"
  started = time.monotonic()
  reference = _start(tmp_path / "reference", log, args)
  assert reference.wait(timeout=300) == 0, log.read_text()[-3000:]
  reference_s = time.monotonic() - started
  # Seconds per step, saves included: random moments "between steps" scale with the machine.
  step_s = float(
    np.median(
      [r["step_time_s"] for r in map(json.loads, (tmp_path / "reference" / "metrics.jsonl").open())]
    )
  )

  rng = random.Random(0)
  workdir = tmp_path / "killed"
  events = []
  # (signal, when): "save" = while a checkpoint is being written; "start" = a random moment
  # between launch and the time the last run took to start saving (imports, restore, steps);
  # "steps" = a random moment within 5 steps after the run saved a new step.
  plan = [
    (signal.SIGKILL, "save"),
    (signal.SIGKILL, "start"),
    (signal.SIGTERM, "steps"),
    (signal.SIGKILL, "steps"),
  ]
  first_save_s = None
  for sig, when in plan:
    before = steps_in(workdir)
    launched = time.monotonic()
    proc = _start(workdir, log, args)
    if when == "start":
      deadline = launched + rng.uniform(0, first_save_s)
      landed = _wait(proc, lambda: time.monotonic() > deadline)
    elif when == "save":
      landed = _wait(proc, _save_in_flight(workdir))
      first_save_s = time.monotonic() - launched
    else:
      landed = _wait(proc, lambda: steps_in(workdir)[-1:] > before[-1:])
      deadline = time.monotonic() + rng.uniform(0, 5 * step_s)
      landed = landed and _wait(proc, lambda: time.monotonic() > deadline)
    if landed:
      proc.send_signal(sig)
    code = proc.wait(timeout=120)
    events.append(
      {
        "signal": sig.name,
        "when": when,
        "landed": landed,
        "exit": code,
        "steps_before": before[-1:],
        "steps_after": steps_in(workdir)[-1:],
        "tmp_left": sorted(_tmp_dirs(workdir)),
      }
    )
    if not landed:
      break  # the run finished first
    if sig == signal.SIGTERM:  # saved at the next step boundary, exited with 128 + SIGTERM
      assert code == 143 and steps_in(workdir)[-1:] > before[-1:], (events, log.read_text()[-3000:])
    else:
      assert code == -signal.SIGKILL, (events, log.read_text()[-3000:])
  # And the newest step is damaged: the last run falls back to the one before it.
  *_, previous, newest = steps_in(workdir)
  _damage(workdir / "checkpoints" / str(newest), "changed_byte")
  final = _start(workdir, log, args)
  assert final.wait(timeout=300) == 0, log.read_text()[-3000:]
  print(
    f"\nreference run {reference_s:.1f} s ({step_s:.3f} s/step; a restart saves after "
    f"{first_save_s} s); "
    f"interruptions: {json.dumps(events)}; total {time.monotonic() - started:.1f} s"
  )

  landed = [e for e in events if e["landed"]]
  assert len(landed) == len(plan), events
  assert any(e["when"] == "save" and e["tmp_left"] for e in landed), events  # killed mid-save
  assert not _tmp_dirs(workdir)  # half-written steps are cleaned up by the next run
  _, want = checkpoint.restore_params(tmp_path / "reference", CLI_STEPS)
  _, got = checkpoint.restore_params(workdir, CLI_STEPS)
  assert_trees_equal(got, want)
  progress = [
    json.loads((w / "checkpoints" / str(CLI_STEPS) / "progress" / "metadata").read_text())
    for w in (workdir, tmp_path / "reference")
  ]
  assert progress[0]["fingerprints"] == progress[1]["fingerprints"]  # optimizer state too
  # The resumed run's log reads like the uninterrupted one: each step once, the same losses.
  records = [
    [(r["step"], r["loss"]) for r in map(json.loads, (w / "metrics.jsonl").open())]
    for w in (workdir, tmp_path / "reference")
  ]
  assert records[0] == records[1]
  resumes = json.loads((workdir / "run.json").read_text())["resumes"]
  assert resumes[-1]["step"] == previous and resumes[-1]["damaged_steps_set_aside"] == [newest]


# --------------------------------------------------------------------------- in-process runs


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A run of 8 steps on the default mesh (fsdp over 8 devices) with every even step kept."""
  workdir = tmp_path_factory.mktemp("trained")
  train.run(small_config(), workdir)
  assert steps_in(workdir) == [2, 4, 6, 8]
  return workdir


@pytest.mark.parametrize(
  "how",
  [
    "truncated_params",
    "changed_byte",
    "missing_item",
    "missing_file",
    "missing_manifest",
    "missing_metadata",
    "truncated_progress",
    "undecodable_manifest",
  ],
)
def test_damaged_step_is_named_and_resume_falls_back(trained, tmp_path, how):
  workdir = tmp_path / "run"
  shutil.copytree(trained, workdir)
  _damage(workdir / "checkpoints" / "8", how)
  cfg = small_config()
  model_config = model.as_model_config(cfg)
  if how not in ("missing_item", "missing_metadata"):  # params and fingerprints: every reader
    with pytest.raises(checkpoint.CorruptCheckpointError, match=r"checkpoint step 8 \(.*/8\)"):
      checkpoint.restore_params(workdir, step=8)
    _, latest = checkpoint.restore_params(workdir)  # "latest" = the newest intact step
    assert_trees_equal(latest, checkpoint.restore_params(workdir, step=6)[1])
  trainer = train_step.make_trainer(cfg, sharding.make_mesh(cfg.mesh))
  with checkpoint.manager(workdir, cfg.checkpoint) as checkpoints:
    state, progress, set_aside = checkpoint.restore_latest_state(
      checkpoints, trainer.abstract_state, model_config
    )
    assert progress["step"] == int(state.step) == 6 and set_aside == [8]
    assert checkpoints.all_steps() == [2, 4, 6]
  assert [p.name.split(".")[0] for p in (workdir / "checkpoints_corrupt").iterdir()] == ["8"]


def test_no_intact_step_is_an_error_that_moves_nothing(trained, tmp_path):
  workdir = tmp_path / "run"
  shutil.copytree(trained, workdir)
  for step in (2, 4, 6, 8):
    _damage(workdir / "checkpoints" / str(step), "truncated_params")
  with pytest.raises(checkpoint.CorruptCheckpointError, match="no intact step to fall back to"):
    train.run(small_config(), workdir)
  assert steps_in(workdir) == [2, 4, 6, 8] and not (workdir / "checkpoints_corrupt").exists()


@pytest.mark.parametrize("mesh_shape,devices", [((2, 2, 2), 8), ((1, 2, 2), 4), ((1, 1, 1), 1)])
def test_train_state_restores_onto_other_meshes_and_device_counts(trained, mesh_shape, devices):
  cfg = small_config()
  cfg.mesh.update(dict(zip(sharding.MESH_AXES, mesh_shape)))
  trainer = train_step.make_trainer(cfg, sharding.make_mesh(cfg.mesh, jax.devices()[:devices]))
  with checkpoint.manager(trained) as checkpoints:
    state, _, _ = checkpoint.restore_latest_state(
      checkpoints, trainer.abstract_state, model.as_model_config(cfg)
    )
    saved = checkpoints.restore(8).params  # as saved, in host memory
  assert int(state.step) == 8
  assert_trees_equal(state.params, saved)
  for array, expected in zip(jax.tree.leaves(state), jax.tree.leaves(trainer.state_sharding)):
    assert array.sharding == expected


def test_resuming_on_another_stream_is_refused(trained, tmp_path):
  workdir = tmp_path / "run"
  shutil.copytree(trained, workdir)
  cfg = small_config(steps=10)
  cfg.train.global_batch = 16
  with pytest.raises(ValueError, match=r"another data stream \(global_batch: 8 then, 16 now\)"):
    train.run(cfg, workdir)


# --------------------------------------------------------------------------- not damage


def test_relative_workdir_trains_resumes_and_restores(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  train.run(small_config(steps=2), "run")
  train.run(small_config(steps=4), "run")  # resumes at 2
  workdir = tmp_path / "run"
  assert steps_in(workdir) == [2, 4] and not _tmp_dirs(workdir)
  assert [r["step"] for r in json.loads((workdir / "run.json").read_text())["resumes"]] == [2]
  _, params = checkpoint.restore_params("run")
  assert_trees_equal(params, checkpoint.restore_params(workdir, 4)[1])
  _, source = checkpoint.load_init("run", model.as_model_config(small_config()), None)
  assert source == {"workdir": str(workdir), "step": 4}


NOBODY = 65534


@contextlib.contextmanager
def _unprivileged():
  """Runs the block as nobody when the tests run as root, whom file modes do not stop."""
  if os.geteuid() != 0:
    yield
    return
  os.setegid(NOBODY)
  os.seteuid(NOBODY)
  try:
    yield
  finally:
    os.seteuid(0)
    os.setegid(0)


@pytest.fixture
def own_copy(trained, tmp_path):
  """A copy of `trained` owned by the user that `_unprivileged` runs as, where that user can reach
  it (pytest's tmp_path is root's alone)."""
  if os.geteuid() != 0:
    shutil.copytree(trained, tmp_path / "run")
    yield tmp_path / "run"
    return
  parent = Path(tempfile.mkdtemp())
  parent.chmod(0o755)
  workdir = parent / "run"
  shutil.copytree(trained, workdir)
  for path in [workdir, *workdir.rglob("*")]:
    os.chown(path, NOBODY, NOBODY)
  yield workdir
  shutil.rmtree(parent)


def _chain(error: BaseException) -> list[BaseException]:
  chain = [error]
  while chain[-1].__cause__ is not None:
    chain.append(chain[-1].__cause__)
  return chain


def _raise(error: BaseException):
  def raising(*args, **kwargs):
    raise error

  return raising


async def _out_of_host_memory(*args, **kwargs):
  raise MemoryError()


# What is done to a good run (step 8 or every step), and the error (or a cause of it) that must
# come out: type and message pattern.
OTHER_FAILURES = {
  # A manager on a relative path (the workdir functions make theirs absolute).
  "relative_path": (ValueError, "Checkpoint path should be absolute"),
  # Step 8's largest params file, its params directory, its progress JSON: mode 000.
  "unreadable_file": (ValueError, "PERMISSION_DENIED"),
  "unreadable_item": (PermissionError, "Permission denied"),
  "unreadable_json": (PermissionError, "Permission denied"),
  # A config whose optimizer state has another structure (no gradient clipping).
  "other_optimizer": (ValueError, "tree structures do not match"),
  # Out of device memory putting the read arrays on devices; out of host memory reading them.
  "device_oom": (jax.errors.JaxRuntimeError, "RESOURCE_EXHAUSTED: Out of memory"),
  "host_oom": (MemoryError, ""),
  # A bug in the restore.
  "bug": (TypeError, "unexpected keyword argument"),
}


@pytest.mark.parametrize("how", list(OTHER_FAILURES))
def test_other_failures_set_nothing_aside_and_name_their_cause(own_copy, monkeypatch, how):
  workdir, step_8 = own_copy, own_copy / "checkpoints" / "8"
  cfg = small_config()
  if how == "other_optimizer":
    cfg.optim.grad_clip_norm = 0.0
  trainer = train_step.make_trainer(cfg, sharding.make_mesh(cfg.mesh))
  if how == "relative_path":
    monkeypatch.chdir(workdir.parent)
    checkpoints = ocp.CheckpointManager("run/checkpoints")
  else:
    checkpoints = checkpoint.manager(workdir, cfg.checkpoint)
  unreadable = {
    "unreadable_file": _largest_params_file(step_8),
    "unreadable_item": step_8 / "params",
    "unreadable_json": step_8 / "progress" / "metadata",
  }.get(how)
  if unreadable:
    unreadable.chmod(0)
  injected = {
    "device_oom": (
      jax,
      "device_put",
      _raise(
        jax.errors.JaxRuntimeError(
          "RESOURCE_EXHAUSTED: Out of memory while trying to allocate 16384 bytes."
        )
      ),
    ),
    "host_oom": (orbax_serialization, "_read_shard", _out_of_host_memory),
    "bug": (
      ocp.StandardCheckpointHandler,
      "restore",
      _raise(TypeError("restore() got an unexpected keyword argument 'strict'")),
    ),
  }.get(how)
  if injected:
    monkeypatch.setattr(*injected)
  expected, pattern = OTHER_FAILURES[how]
  with checkpoints, pytest.raises(Exception) as raised, _unprivileged():
    checkpoint.restore_latest_state(checkpoints, trainer.abstract_state, model.as_model_config(cfg))
  error = raised.value
  assert not isinstance(error, checkpoint.CorruptCheckpointError), error
  assert any(isinstance(e, expected) and re.search(pattern, str(e)) for e in _chain(error)), error
  assert steps_in(workdir) == [2, 4, 6, 8] and not (workdir / "checkpoints_corrupt").exists()


# One process of a two-process job restoring step 8 of a workdir: argv = port, process id,
# workdir, file for the outcome. Process 1's restore has a bug.
_RESTORE_ON_TWO_PROCESSES = """
import sys
import jax
port, process, workdir, out = sys.argv[1:]
jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=2, process_id=int(process))
import orbax.checkpoint as ocp
from phi_jax import checkpoint
if process == "1":
  def bug(*args, **kwargs):
    raise TypeError("a bug on process 1")
  ocp.StandardCheckpointHandler.restore = bug
try:
  checkpoint.restore_params(workdir, step=8)
  outcome = "restored"
except Exception as e:
  outcome = f"{type(e).__name__}: {e}"
open(out, "w").write(outcome)
"""


def test_a_failure_on_one_process_that_is_not_damage_is_not_damage_on_any(trained, tmp_path):
  """Process 0 finds step 8 damaged (its copy), process 1 fails on a bug: the bug is raised on
  process 1 and, on process 0, an error that is no CorruptCheckpointError."""
  shutil.copytree(trained, tmp_path / "damaged")
  _damage(tmp_path / "damaged" / "checkpoints" / "8", "truncated_params")
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  # No inherited JAX_* settings; no proxies (gRPC would send the loopback coordinator through).
  env = {
    k: v for k, v in os.environ.items() if "proxy" not in k.lower() and not k.startswith("JAX_")
  }
  env.update(
    JAX_PLATFORMS="cpu",
    XLA_FLAGS=xla_env.flags(1),
    JAX_COORDINATOR_BIND_ADDRESS=f"127.0.0.1:{port}",
  )
  outs = [tmp_path / f"outcome{i}" for i in range(2)]
  with (tmp_path / "log").open("w") as log:
    procs = [
      subprocess.Popen(
        [
          sys.executable,
          "-c",
          _RESTORE_ON_TWO_PROCESSES,
          str(port),
          str(i),
          str(workdir),
          str(out),
        ],
        env=env,
        cwd=REPO,
        stdout=log,
        stderr=subprocess.STDOUT,
      )
      for i, (workdir, out) in enumerate(zip([tmp_path / "damaged", trained], outs))
    ]
    try:
      for proc in procs:
        proc.wait(timeout=180)
    finally:
      for proc in procs:
        proc.kill()
  outcomes = [out.read_text() if out.exists() else None for out in outs]
  assert outcomes[0] is not None and outcomes[0].startswith(
    "RuntimeError: another process failed to read checkpoint step 8"
  ), (outcomes, (tmp_path / "log").read_text()[-3000:])
  assert outcomes[1] == "TypeError: a bug on process 1", outcomes


# --------------------------------------------------------------------------- the handoff


def test_pretraining_to_finetuning_handoff(trained, tmp_path):
  cfg = small_config("tiny_finetune", steps=1)
  with pytest.raises(ValueError, match="set --config.train.init_from"):
    train.run(cfg, tmp_path / "no_source")

  cfg.train.init_from = str(trained)
  train.run(cfg, tmp_path / "finetune")
  _, pretrained = checkpoint.restore_params(trained)
  # Warmup starts the fresh schedule at LR 0: the first step leaves the params as handed over.
  _, finetuned = checkpoint.restore_params(tmp_path / "finetune", 1)
  assert_trees_equal(finetuned, pretrained)
  with checkpoint.manager(tmp_path / "finetune") as checkpoints:
    restored = checkpoints.restore(1)
  counts = [
    int(value)
    for path, value in jax.tree_util.tree_leaves_with_path(restored.opt_state)
    if "count" in jax.tree_util.keystr(path)
  ]
  assert counts and set(counts) == {1}  # a fresh optimizer: one step counted, not nine
  source = {"workdir": str(trained), "step": 8}
  assert restored.config["init_from"] == source
  assert json.loads((tmp_path / "finetune" / "run.json").read_text())["init_from"] == source

  # A rerun resumes from the run's own checkpoints; init_from is not read again.
  cfg.train.init_from = str(tmp_path / "gone")
  train.run(cfg, tmp_path / "finetune")
  resumes = json.loads((tmp_path / "finetune" / "run.json").read_text())["resumes"]
  assert [r["step"] for r in resumes] == [1]

  # Any checkpoint exports to Hugging Face, and a Hugging Face directory is a source too.
  convert.orbax_to_hf(str(tmp_path / "finetune"), str(tmp_path / "hf"))
  model_config, exported = hf_format.load_hf(tmp_path / "hf")
  assert_trees_equal(exported, finetuned)
  trainer = train_step.make_trainer(cfg, sharding.make_mesh(cfg.mesh))
  params, source = checkpoint.load_init(
    str(tmp_path / "hf"), model_config, trainer.state_sharding.params
  )
  assert source == {"huggingface": str(tmp_path / "hf")}
  assert_trees_equal(params, exported)
  params, source = checkpoint.load_init(
    str(trained / "checkpoints" / "4"), model_config, trainer.state_sharding.params
  )
  assert source == {"workdir": str(trained), "step": 4}
  assert_trees_equal(params, checkpoint.restore_params(trained, 4)[1])

  wider = small_config("tiny_finetune")
  wider.model.d_model = 128
  with pytest.raises(ValueError, match="d_model=64; this config has d_model=128"):
    checkpoint.load_init(str(trained), model.as_model_config(wider), None)


# --------------------------------------------------------------------------- non-finite steps


def _diverging(trained: Path, workdir: Path, on_nonfinite: str, steps: int):
  """A copy of `trained` (8 steps) that goes on with LR 1e30: step 9's update is ~1e30 per weight
  and step 10's LayerNorm statistics overflow."""
  shutil.copytree(trained, workdir)
  cfg = small_config(steps=steps, every_steps=1)
  cfg.optim.learning_rate = 1e30
  cfg.train.on_nonfinite = on_nonfinite
  return cfg


def test_nonfinite_loss_stops_the_run_and_keeps_the_last_good_checkpoint(trained, tmp_path):
  workdir = tmp_path / "run"
  with pytest.raises(train.NonFiniteError, match=r"step 10: loss=nan.*latest: step 9"):
    train.run(_diverging(trained, workdir, "stop", steps=12), workdir)
  assert steps_in(workdir) == [2, 4, 6, 8, 9]
  _, params = checkpoint.restore_params(workdir)
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(params))


def test_nonfinite_steps_are_skipped_when_asked(trained, tmp_path):
  workdir = tmp_path / "run"
  train.run(_diverging(trained, workdir, "skip", steps=12), workdir)
  assert steps_in(workdir) == [2, 4, 6, 8, 9, 10, 11, 12]
  records = [json.loads(line) for line in (workdir / "metrics.jsonl").open()]
  assert [(r["step"], r["nonfinite_steps"]) for r in records[-2:]] == [(10, 1), (12, 2)]
  assert_trees_equal(
    checkpoint.restore_params(workdir, 12)[1],  # steps 10-12 changed nothing
    checkpoint.restore_params(workdir, 9)[1],
  )
