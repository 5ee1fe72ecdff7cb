"""Configs are data: overrides from Python and the command line, and early, named rejections."""

import os
import subprocess
import sys

import pytest

from phi_jax import configs


def test_every_config_loads_and_is_consistent_on_its_target_device_count():
  for name in configs.names():
    configs.check(configs.get(name), num_devices=8)


def test_misspelt_key_names_the_closest_valid_one():
  cfg = configs.get("tiny")
  with pytest.raises(AttributeError, match='Did you mean "steps"'):
    cfg.train.stesp = 100
  with pytest.raises(AttributeError, match='Did you mean "train"'):
    cfg.trian.steps = 100


def test_wrong_type_is_rejected():
  cfg = configs.get("tiny")
  with pytest.raises(TypeError, match="steps"):
    cfg.train.steps = "many"
  cfg.train.steps = 100  # a right-typed override sticks
  assert configs.get("tiny").train.steps != 100 and cfg.train.steps == 100


def test_inconsistent_configs_are_rejected_with_every_reason():
  cfg = configs.get("tiny")
  cfg.model.n_heads = 6
  cfg.train.seq_len = 4096
  cfg.mesh.update(data=2, fsdp=1, tensor=4)
  with pytest.raises(configs.ConfigError) as error:
    configs.check(cfg, num_devices=8)
  message = str(error.value)
  assert "model.n_heads=6 is not divisible by tensor parallelism mesh.tensor=4" in message
  assert "train.seq_len=4096 exceeds model.max_len=1024" in message
  cfg = configs.get("tiny")
  cfg.mesh.update(data=3, fsdp=-1, tensor=1)
  with pytest.raises(configs.ConfigError, match="not divisible by the fixed axes' product 3"):
    configs.check(cfg, num_devices=8)
  cfg = configs.get("tiny")
  cfg.model.update(n_layers=2, d_model=100)
  cfg.mesh.update(data=1, fsdp=8, tensor=1)
  with pytest.raises(configs.ConfigError, match="d_model=100 is not divisible by mesh.fsdp=8"):
    configs.check(cfg, num_devices=8)
  cfg = configs.get("tiny")
  cfg.train.on_nonfinite = "ignore"
  cfg.checkpoint.keep = -1
  with pytest.raises(configs.ConfigError) as error:
    configs.check(cfg, num_devices=8)
  assert "train.on_nonfinite='ignore' is not one of ['skip', 'stop']" in str(error.value)
  assert "checkpoint.keep=-1: checkpoint settings are counts" in str(error.value)


def test_unknown_model_key_is_named():
  cfg = configs.get("tiny")
  cfg.unlock()
  cfg.model.n_layer = 3  # an added (not overridden) key
  with pytest.raises(KeyError, match="did you mean 'n_layers'"):
    configs.check(cfg, num_devices=1)


def test_cli_override_typo_is_rejected_before_any_work(tmp_path):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  result = subprocess.run(
    [
      sys.executable,
      "-m",
      "phi_jax.train",
      "--config=configs/tiny.py",
      f"--workdir={tmp_path}",
      "--config.train.stesp=5",
    ],
    capture_output=True,
    text=True,
    env=env,
    timeout=300,
    cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
  )
  assert result.returncode != 0
  assert 'Did you mean "steps"' in result.stderr
  assert not list(tmp_path.iterdir())  # nothing was written


def test_trainer_checks_the_config_before_compiling(tmp_path):
  from phi_jax import train

  cfg = configs.get("tiny")
  cfg.train.global_batch = 12
  cfg.mesh.update(data=8, fsdp=1, tensor=1)
  with pytest.raises(configs.ConfigError, match="mesh.data\\*mesh.fsdp=8"):
    train.run(cfg, tmp_path / "run")
  assert not (tmp_path / "run").exists()
