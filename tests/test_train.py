"""The sharded train step on 8 simulated CPU devices: meshes, accumulation, learning, recipe."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
import xla_env

from phi_jax import configs, input_pipeline, optimizer, sharding, train, train_step

STEPS = 3


def small_config(**train):
  cfg = configs.get("tiny")
  cfg.model.update(
    vocab_size=256,
    d_model=64,
    n_layers=2,
    n_heads=4,
    head_dim=16,
    mlp_dim=128,
    rotary_dim=8,
    max_len=64,
  )
  cfg.train.update({"global_batch": 8, "seq_len": 32, "steps": STEPS, "log_every": 1, **train})
  cfg.optim.update(warmup_steps=2, decay_steps=50)
  return cfg


def run_steps(cfg, mesh_shape, devices=None):
  """Losses of each step and the final params (on the host)."""
  cfg.mesh.update(dict(zip(sharding.MESH_AXES, mesh_shape)))
  mesh = sharding.make_mesh(cfg.mesh, devices)
  trainer = train_step.make_trainer(cfg, mesh)
  state = trainer.init_state(jax.random.key(cfg.train.seed))
  batches = input_pipeline.batches(cfg, trainer.batch_sharding, start_step=0)
  losses = []
  for _ in range(cfg.train.steps):
    state, metrics = trainer.step(state, next(batches))
    losses.append(float(metrics["loss"]))
  return np.asarray(losses), jax.device_get(state.params)


@pytest.fixture(scope="module")
def one_device_run():
  return run_steps(small_config(), (1, 1, 1), devices=jax.devices()[:1])


@pytest.mark.parametrize("mesh_shape", [(8, 1, 1), (1, 8, 1), (2, 2, 2), (1, 4, 2)])
def test_meshes_match_one_device(one_device_run, mesh_shape):
  assert jax.device_count() == 8
  losses, params = run_steps(small_config(), mesh_shape)
  ref_losses, ref_params = one_device_run
  np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=2e-6), params, ref_params)


def test_params_and_optimizer_state_are_sharded():
  cfg = small_config()
  cfg.mesh.update(data=1, fsdp=4, tensor=2)
  trainer = train_step.make_trainer(cfg, sharding.make_mesh(cfg.mesh))
  fc1 = trainer.state_sharding.params["layers"]["mlp"]["fc1"]["kernel"]
  assert fc1.spec == jax.sharding.PartitionSpec(None, "fsdp", "tensor")
  mu = trainer.state_sharding.opt_state[1][0].mu["layers"]["mlp"]["fc1"]["kernel"]
  assert mu.spec == fc1.spec
  state = trainer.init_state(jax.random.key(0))
  kernel = state.params["layers"]["mlp"]["fc1"]["kernel"]
  assert kernel.addressable_shards[0].data.shape == (2, 64 // 4, 128 // 2)


def test_accumulating_4_micro_batches_of_2_equals_one_batch_of_8(one_device_run):
  losses, params = run_steps(small_config(micro_batch=2), (1, 1, 1), devices=jax.devices()[:1])
  ref_losses, ref_params = one_device_run
  np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=2e-6), params, ref_params)


def test_loss_goes_down_on_a_learnable_stream():
  cfg = small_config()
  cfg.train.steps = 60
  cfg.optim.update(learning_rate=3e-3, warmup_steps=5, decay_steps=60)
  losses, _ = run_steps(cfg, (1, 8, 1))
  assert losses[0] > 5.0  # ~ln(256) at init
  assert losses[-5:].mean() < 0.6 * losses[0]


def test_dropout_is_a_function_of_seed_and_step():
  cfg = small_config()
  cfg.model.update(resid_dropout=0.1, attn_dropout=0.1, embed_dropout=0.1)
  a, _ = run_steps(cfg, (2, 2, 2))
  b, _ = run_steps(cfg, (8, 1, 1))
  np.testing.assert_allclose(a, b, rtol=1e-5)
  cfg.train.seed = 1
  c, _ = run_steps(cfg, (8, 1, 1))
  assert not np.allclose(a, c)


def test_schedule_is_linear_warmup_then_linear_decay():
  cfg = configs.get("phi1")
  schedule = optimizer.learning_rate_schedule(cfg.optim)
  assert float(schedule(0)) == 0.0
  assert float(schedule(375)) == pytest.approx(5e-4)
  assert float(schedule(750)) == pytest.approx(1e-3)
  assert float(schedule(750 + (36_000 - 750) // 2)) == pytest.approx(5e-4, rel=1e-3)
  assert float(schedule(36_000)) == pytest.approx(0.0, abs=1e-9)


def test_no_weight_decay_on_biases_and_layernorm():
  from phi_jax import model

  mask = optimizer.weight_decay_mask(model.param_shapes(small_config()))
  assert mask["layers"]["mlp"]["fc1"]["kernel"] and mask["embed_tokens"]["embedding"]
  assert not mask["layers"]["mlp"]["fc1"]["bias"]  # [layers, mlp]: 2-D, still a bias
  assert not mask["layers"]["input_layernorm"]["scale"] and not mask["final_layernorm"]["bias"]


def test_inconsistent_batch_and_mesh_are_rejected_before_compiling(tmp_path):
  from phi_jax import train

  workdir = tmp_path / "run"
  cfg = small_config(global_batch=12)
  cfg.mesh.update(data=8, fsdp=1, tensor=1)
  with pytest.raises(
    ValueError, match="divisible by the data-parallel devices mesh.data\\*mesh.fsdp=8"
  ):
    train.run(cfg, workdir)
  cfg = small_config(micro_batch=3)
  with pytest.raises(ValueError, match="global_batch=8 is not divisible by train.micro_batch=3"):
    train.run(cfg, workdir)
  cfg = small_config()
  cfg.mesh.update(data=1, fsdp=1, tensor=8)
  with pytest.raises(
    ValueError, match="n_heads=4 is not divisible by tensor parallelism mesh.tensor=8"
  ):
    train.run(cfg, workdir)
  assert not workdir.exists()  # nothing written
  with pytest.raises(ValueError, match="needs 16 devices, 8 are available"):
    sharding.make_mesh({"data": 4, "fsdp": 4, "tensor": 1})


def _cli(workdir, devices, *overrides):
  env = dict(os.environ, XLA_FLAGS=xla_env.flags(devices), JAX_PLATFORMS="cpu")
  args = [
    sys.executable,
    "-m",
    "phi_jax.train",
    "--config=configs/tiny.py",
    f"--workdir={workdir}",
    "--config.model.vocab_size=256",
    "--config.model.d_model=64",
    "--config.model.mlp_dim=128",
    "--config.train.global_batch=8",
    "--config.train.seq_len=32",
    "--config.train.steps=4",
    "--config.train.log_every=2",
    "--config.optim.warmup_steps=2",
    *overrides,
  ]
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  subprocess.run(args, env=env, cwd=root, check=True, timeout=300, capture_output=True)
  return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def test_cli_on_1_and_8_devices_agree_and_write_metrics(tmp_path):
  one = _cli(tmp_path / "one", 1)
  eight = _cli(tmp_path / "eight", 8, "--config.mesh.data=2", "--config.mesh.tensor=2")
  assert [r["step"] for r in one] == [2, 4]
  for record in one:
    assert {
      "step",
      "loss",
      "learning_rate",
      "grad_norm",
      "tokens_per_second",
      "mfu",
      "step_time_s",
    } <= record.keys()
    assert record["tokens_per_second"] > 0 and 0 < record["mfu"] < 1
  np.testing.assert_allclose([r["loss"] for r in eight], [r["loss"] for r in one], rtol=1e-5)
  assert any((tmp_path / "one" / "tensorboard").iterdir())
  assert (tmp_path / "one" / "checkpoints" / "4").is_dir()


def test_profiler_trace_on_request(tmp_path):
  from phi_jax import train

  cfg = small_config(steps=4)
  cfg.logging.update(profile_steps=2, profile_start_step=1, progress_bar=False, tensorboard=False)
  cfg.mesh.update(data=8, fsdp=1, tensor=1)
  train.run(cfg, tmp_path)
  traces = list((tmp_path / "profile").rglob("*.xplane.pb"))
  assert len(traces) == 1 and traces[0].stat().st_size > 0
  assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 4


def test_a_seqio_run_from_before_random_access_reading_is_not_resumed(tmp_path):
  """Its stream (each process read its own shard, recorded with the process count) cannot be
  continued: the error says how to start from its params instead."""
  saved = {"source": "seqio", "seed": 0, "process_count": 1, "use_cached": False}
  with pytest.raises(ValueError, match=f"before 2026-12.*train.init_from={tmp_path}"):
    train._check_same_stream(saved, dict(saved), tmp_path)


def test_auto_micro_batch_is_fitted_recorded_and_kept_on_resume(tmp_path, monkeypatch):
  cfg = small_config(micro_batch="auto", steps=2)
  cfg.mesh.update(data=2, fsdp=1, tensor=4)
  cfg.logging.update(progress_bar=False, tensorboard=False)
  train.run(cfg, tmp_path)
  fit = json.loads((tmp_path / "run.json").read_text())["memory_fit"]
  # A few MB per device against the host's RAM: the whole batch at once, the remat as given.
  assert (fit["micro_batch"], fit["remat"]) == (8, cfg.model.remat)
  assert [t["micro_batch"] for t in fit["trials"]] == [8]
  assert fit["total_bytes"] <= fit["budget_bytes"]

  def no_second_fit(*args, **kwargs):
    raise AssertionError("a resumed run fits again")

  monkeypatch.setattr(train.aot, "fit", no_second_fit)
  cfg.train.steps = 3
  train.run(cfg, tmp_path)
  record = json.loads((tmp_path / "run.json").read_text())
  assert record["memory_fit"] == fit and [r["step"] for r in record["resumes"]] == [2]
