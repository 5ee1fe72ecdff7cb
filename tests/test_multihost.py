"""Multi-host training on CPU: two processes x 4 devices train like one process x 8 devices.

Each run is the real trainer CLI in its own subprocess: the two-process runs join through
`jax.distributed` on a loopback coordinator with gloo CPU collectives, each process feeding only
its own rows of the global batch. All runs start at once and share the 2-core budget; every
subprocess has a deadline and a failed or hung run takes its peers down with it.

Meshes: the default (fsdp over all 8 devices) shards params and optimizer state across the two
processes; data=2 x fsdp=2 x tensor=2 puts the process boundary on the data axis (params
replicated across processes, sharded over fsdp and tensor within each) and runs tensor
parallelism under it. That run stops after 2 steps and is resumed, both processes restoring
their shards of the checkpoint, for the other 2.

On seqio data (the tiny corpus of tests/conftest.py) runs resume elastically: two processes stop
after 2 steps and one process trains the other 2, and the reverse; both end like one process
that was never stopped (the batches themselves: tests/test_input_pipeline.py).

Loopback only: the coordinator binds 127.0.0.1 (JAX_COORDINATOR_BIND_ADDRESS). jax 0.10.2 offers
no setting for gloo's own sockets, which bind the address the machine's hostname resolves to.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
import xla_env

from phi_jax import checkpoint, configs, model, sharding, train_step

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
DEADLINE_S = 240  # for all runs together; they take ~1 min on 2 busy cores
RUN_ARGS = (
  f"--config={REPO / 'configs' / 'tiny.py'}",
  "--config.train.steps=4",
  "--config.train.global_batch=8",
  "--config.train.seq_len=64",
  "--config.train.log_every=1",
  "--config.logging.progress_bar=False",
  "--config.logging.tensorboard=False",
  # The full learning rate from step 0, so that 4 steps move every param by ~4e-2. Adam's eps
  # is raised from 1e-8 so that it does not blow rounding noise in (near-)zero gradients (the
  # key biases', which the softmax all but cancels) up to +-lr updates.
  "--config.optim.warmup_steps=0",
  "--config.optim.learning_rate=1e-2",
  "--config.optim.eps=1e-4",
)
MESH_2x2x2 = ("--config.mesh.data=2", "--config.mesh.fsdp=2", "--config.mesh.tensor=2")


def _free_loopback_port() -> int:
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _env(devices: int, port: int | None = None) -> dict:
  # No inherited JAX_* settings; no proxies (gRPC would send the loopback coordinator through).
  env = {
    k: v for k, v in os.environ.items() if "proxy" not in k.lower() and not k.startswith("JAX_")
  }
  env.update(
    JAX_PLATFORMS="cpu",
    PYTHONUNBUFFERED="1",
    XLA_FLAGS=xla_env.flags(devices),
  )
  if port is not None:
    env["JAX_COORDINATOR_BIND_ADDRESS"] = f"127.0.0.1:{port}"  # not jax's default [::]
  return env


def _jobs(workdir: Path, name: str, processes: int, extra: tuple = ()) -> list[tuple]:
  """(label, argv, env, log path) of one run: a single 8-device process or 2 x 4 devices."""
  argv = [sys.executable, "-m", "phi_jax.train", f"--workdir={workdir / name}", *RUN_ARGS, *extra]
  if processes == 1:
    return [(name, argv, _env(8), workdir / f"{name}.log")]
  port = _free_loopback_port()
  return [
    (
      f"{name}[process {i}]",
      argv
      + [
        "--config.distributed.enabled=True",
        f"--config.distributed.coordinator_address=127.0.0.1:{port}",
        f"--config.distributed.num_processes={processes}",
        f"--config.distributed.process_id={i}",
      ],
      _env(8 // processes, port),
      workdir / f"{name}.{i}.log",
    )
    for i in range(processes)
  ]


def _tail(path: Path, lines: int = 25) -> str:
  text = [l for l in path.read_text(errors="replace").splitlines() if not l.startswith("[Gloo]")]
  return "\n".join(text[-lines:])


def _run_all(jobs: list[tuple], deadline_s: float) -> None:
  """Runs the jobs concurrently; kills them all and fails once one fails or the deadline passes
  (a process whose peer died would otherwise wait on it for minutes)."""
  procs = []
  try:
    for label, argv, env, log in jobs:
      with log.open("a") as f:
        procs.append(
          (
            label,
            log,
            subprocess.Popen(argv, env=env, cwd=REPO, stdout=f, stderr=subprocess.STDOUT),
          )
        )
    end = time.monotonic() + deadline_s
    while True:
      codes = [p.poll() for _, _, p in procs]
      for (label, log, _), code in zip(procs, codes):
        if code:
          pytest.fail(f"{label} exited with {code}:\n{_tail(log)}")
      if None not in codes:
        return
      if time.monotonic() > end:
        hung = [label for (label, _, _), code in zip(procs, codes) if code is None]
        pytest.fail(
          f"still running after {deadline_s}s: {hung}\n"
          + "\n".join(f"--- {label}\n{_tail(log)}" for label, log, _ in procs)
        )
      time.sleep(0.2)
  finally:
    for _, _, p in procs:
      if p.poll() is None:
        p.kill()
        p.wait(timeout=30)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
  workdir = tmp_path_factory.mktemp("multihost")
  _run_all(
    _jobs(workdir, "one_process", 1)
    + _jobs(workdir, "two_processes", 2)
    + _jobs(workdir, "two_processes_2x2x2", 2, MESH_2x2x2 + ("--config.train.steps=2",)),
    DEADLINE_S,
  )
  _run_all(_jobs(workdir, "two_processes_2x2x2", 2, MESH_2x2x2), DEADLINE_S / 2)  # resumes at 2
  resumes = json.loads((workdir / "two_processes_2x2x2" / "run.json").read_text())["resumes"]
  assert [r["step"] for r in resumes] == [2]
  return workdir


@pytest.fixture(scope="module")
def seqio_runs(tmp_path_factory, tiny_corpus) -> Path:
  """On seqio data: one process for 4 steps; two processes for 2 steps, then one for 2 more;
  one process for 2 steps, then two for 2 more."""
  workdir = tmp_path_factory.mktemp("multihost_seqio")
  data = ("--config.data.source=seqio", f"--config.data.dir={tiny_corpus}")
  first = data + ("--config.train.steps=2",)
  _run_all(
    _jobs(workdir, "seqio_one_process", 1, data)
    + _jobs(workdir, "seqio_two_then_one", 2, first)
    + _jobs(workdir, "seqio_one_then_two", 1, first),
    DEADLINE_S,
  )
  _run_all(
    _jobs(workdir, "seqio_two_then_one", 1, data) + _jobs(workdir, "seqio_one_then_two", 2, data),
    DEADLINE_S,
  )
  for name in ("seqio_two_then_one", "seqio_one_then_two"):
    resumes = json.loads((workdir / name / "run.json").read_text())["resumes"]
    assert [r["step"] for r in resumes] == [2], name
  return workdir


def _losses(workdir: Path) -> list[tuple[int, float]]:
  lines = (workdir / "metrics.jsonl").read_text().splitlines()
  return [(r["step"], r["loss"]) for r in map(json.loads, lines)]


def _trained(workdir: Path):
  """A one-process run's (losses, model config, final params), checked to have trained."""
  config, params = checkpoint.restore_params(workdir)
  initial = jax.jit(model.init, static_argnums=0)(config, jax.random.key(0))  # train.seed=0
  moved = jax.tree.map(
    lambda a, b: float(np.abs(np.asarray(a) - np.asarray(b)).max()), params, initial
  )
  assert min(jax.tree.leaves(moved)) > 1e-3, moved  # the comparison below is not vacuous
  return _losses(workdir), config, params


@pytest.fixture(scope="module")
def reference(runs):
  return _trained(runs / "one_process")


@pytest.fixture(scope="module")
def seqio_reference(seqio_runs):
  return _trained(seqio_runs / "seqio_one_process")


@pytest.mark.parametrize("name", ["two_processes", "two_processes_2x2x2"])
def test_two_processes_train_like_one(runs, reference, name):
  _assert_trained_like(runs / name, reference)


@pytest.mark.parametrize("name", ["seqio_two_then_one", "seqio_one_then_two"])
def test_seqio_run_resumed_on_another_process_count_trains_like_one_process(
  seqio_runs, seqio_reference, name
):
  """A checkpoint of 2 processes resumes on 1 and one of 1 on 2, continuing at the next batch
  of the seqio stream: the losses and final params of an uninterrupted one-process run."""
  _assert_trained_like(seqio_runs / name, seqio_reference)


def _assert_trained_like(workdir: Path, reference) -> None:
  reference_losses, reference_config, reference_params = reference
  losses = _losses(workdir)
  assert [s for s, _ in losses] == [s for s, _ in reference_losses] == [1, 2, 3, 4]
  np.testing.assert_allclose([l for _, l in losses], [l for _, l in reference_losses], rtol=1e-5)

  config, params = checkpoint.restore_params(workdir)
  assert config == reference_config
  assert jax.tree.structure(params) == jax.tree.structure(reference_params)
  for (path, got), want in zip(
    jax.tree_util.tree_leaves_with_path(params), jax.tree.leaves(reference_params)
  ):
    # Measured: <= 6e-7 apart; a wrong row or a missed reduction would move them by ~lr = 1e-2.
    np.testing.assert_allclose(
      np.asarray(got), np.asarray(want), rtol=1e-5, atol=5e-6, err_msg=jax.tree_util.keystr(path)
    )


def test_multi_process_checkpoint_restores_sharded_here(runs):
  """What 2 processes x 4 devices saved restores onto this one process's own mesh."""
  cfg = configs.get("tiny")
  shardings = train_step.make_trainer(cfg, sharding.make_mesh(cfg.mesh)).state_sharding.params
  _, sharded = checkpoint.restore_params(runs / "two_processes", shardings=shardings)
  _, whole = checkpoint.restore_params(runs / "two_processes")
  for got, want, expected in zip(
    jax.tree.leaves(sharded), jax.tree.leaves(whole), jax.tree.leaves(shardings)
  ):
    assert got.sharding == expected
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
