"""The command-line convention (phi_jax.cli): every config field is a flag, a wrong value is named
on the last line printed, and paths given relative to the current directory work and are
recorded absolute."""

import concurrent.futures
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import xla_env
from absl import flags
from ml_collections import config_dict, config_flags

from phi_jax import configs, train

REPO = Path(__file__).resolve().parents[1]
ENV = dict(
  os.environ,
  JAX_PLATFORMS="cpu",
  XLA_FLAGS=xla_env.flags(1),
  PYTHONPATH=str(REPO),
)
SMALL = [
  "--config.model.vocab_size=256",
  "--config.model.d_model=64",
  "--config.model.mlp_dim=128",
  "--config.train.global_batch=8",
  "--config.train.seq_len=32",
  "--config.train.log_every=2",
  "--config.optim.warmup_steps=2",
  "--config.checkpoint.every_steps=2",
  "--config.logging.progress_bar=false",
]


def _leaves(cfg, prefix=""):
  for key, value in cfg.items():
    if isinstance(value, config_dict.ConfigDict) and len(value):
      yield from _leaves(value, f"{prefix}{key}.")
    else:
      yield f"{prefix}{key}", value


def _another_value(field, value):
  """(command-line text, parsed value) differing from `value`."""
  if isinstance(value, bool):
    return str(not value).lower(), not value
  if isinstance(value, int):
    return str(value + 7), value + 7
  if isinstance(value, float):
    return repr(value * 2 + 0.5), value * 2 + 0.5
  if isinstance(value, str):
    return f"{field}-x", f"{field}-x"
  if isinstance(value, tuple):
    return '("a", "b/c")', ("a", "b/c")
  if isinstance(value, config_dict.ConfigDict):  # the mixture rates: task -> rate
    return '{"phi1_code_textbook": 0.75}', {"phi1_code_textbook": 0.75}
  raise AssertionError(f"{field}: no override written for a {type(value).__name__}")


def test_every_field_of_the_base_config_is_a_command_line_flag(tmp_path, monkeypatch):
  config_file = tmp_path / "base_config.py"
  config_file.write_text(
    "from phi_jax import configs\n\n\ndef get_config():\n  return configs.base()\n"
  )
  expected, argv = {}, ["prog", f"--config={config_file}"]
  for field, value in _leaves(configs.base()):
    text, expected[field] = _another_value(field, value)
    argv.append(f"--config.{field}={text}")
  monkeypatch.setattr(sys, "argv", argv)  # config_flags reads the overrides from sys.argv
  flag_values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", flag_values=flag_values, lock_config=True)
  flag_values(argv)
  cfg = flag_values.config
  for field, value in expected.items():
    found = cfg
    for key in field.split("."):
      found = found[key]
    found = found.to_dict() if isinstance(found, config_dict.ConfigDict) else found
    assert found == value, field
  assert len(expected) > 100  # every section, not a few


def _run(args, cwd, timeout=300):
  return subprocess.run(
    [sys.executable, "-m", *args], capture_output=True, text=True, cwd=cwd, env=ENV, timeout=timeout
  )


def _with_flags(cfg, overrides):
  """`cfg` with `--config.a.b=value` overrides applied as the command line would."""
  for override in overrides:
    field, text = override.removeprefix("--config.").split("=", 1)
    *sections, key = field.split(".")
    section = cfg
    for name in sections:
      section = section[name]
    section[key] = (
      {"true": True, "false": False}.get(text)
      if text in ("true", "false")
      else (type(section[key])(text))
    )
  return cfg


def _last_line(result):
  return (result.stderr or result.stdout).strip().splitlines()[-1]


def test_a_wrong_flag_value_is_named_on_the_last_line(tmp_path):
  result = _run(
    [
      "phi_jax.train",
      f"--config={REPO / 'configs' / 'tiny.py'}",
      "--workdir=w",
      "--config.optim.learning_rate=abc",
    ],
    cwd=tmp_path,
  )
  assert result.returncode == 2
  last = _last_line(result)
  assert "--config.optim.learning_rate=abc" in last and "Pass --helpshort" not in last
  assert not (tmp_path / "w").exists()

  result = _run(
    [
      "phi_jax.train",
      f"--config={REPO / 'configs' / 'tiny.py'}",
      "--workdir=w",
      "--config.train.stesp=5",
    ],
    cwd=tmp_path,
  )
  assert result.returncode == 2 and "steps" in _last_line(result)


def test_the_trainer_takes_relative_workdirs_and_records_them_absolute(tmp_path, monkeypatch):
  config = f"--config={REPO / 'configs' / 'tiny.py'}"
  first = _run(
    ["phi_jax.train", config, "--workdir=runs/first", "--config.train.steps=4", *SMALL],
    cwd=tmp_path,
  )
  assert first.returncode == 0, first.stderr[-3000:]
  workdir = tmp_path / "runs" / "first"
  assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["2", "4"]

  # resumed from its own checkpoint, by the same relative path
  resumed = _run(
    ["phi_jax.train", config, "--workdir=runs/first", "--config.train.steps=6", *SMALL],
    cwd=tmp_path,
  )
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  run_json = json.loads((workdir / "run.json").read_text())
  assert [r["step"] for r in run_json["resumes"]] == [4]
  assert (
    not list(workdir.rglob("*.orbax-checkpoint-tmp"))
    and not (workdir / "checkpoints_corrupt").exists()
  )

  # params from a relative workdir; the record names it absolute (in this process: the same
  # resolution as the command line's, without another interpreter start)
  monkeypatch.chdir(tmp_path)
  cfg = _with_flags(configs.get("tiny"), [*SMALL, "--config.train.steps=2"])
  cfg.train.init_from = "runs/first"
  train.run(cfg, "runs/second")
  run_json = json.loads((tmp_path / "runs" / "second" / "run.json").read_text())
  assert run_json["init_from"] == {"workdir": str(workdir), "step": 6}
  assert run_json["config"]["train"]["init_from"] == str(workdir)


def test_missing_paths_are_named_as_missing(tmp_path):
  commands = [
    ["phi_jax.generate", "--checkpoint=nothing/here", "--prompt=def f():"],
    ["phi_jax.evaluate", "--benchmark=humaneval", "--samples=no.jsonl"],
    [
      "phi_jax.train",
      f"--config={REPO / 'configs' / 'tiny.py'}",
      "--workdir=w",
      "--config.data.source=seqio",
      "--config.data.dir=built",
      *SMALL,
    ],
  ]
  # Concurrently: each spends its time importing, not waiting on the others.
  with concurrent.futures.ThreadPoolExecutor(len(commands)) as pool:
    generate, evaluate, train = pool.map(lambda args: _run(args, cwd=tmp_path), commands)
  assert generate.returncode == 1 and _last_line(generate).endswith(
    f"--checkpoint: {tmp_path / 'nothing' / 'here'} does not exist"
  )
  assert evaluate.returncode == 1 and _last_line(evaluate).endswith(
    f"samples file: {tmp_path / 'no.jsonl'} does not exist"
  )
  assert train.returncode == 1
  assert f"data.dir={tmp_path / 'built'} does not exist" in _last_line(train)


def test_config_paths_resolve_against_the_current_directory(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  cfg = configs.get("tiny")
  cfg.corpus.roots = ("stdlib", "site-packages", "src")
  cfg.corpus.jsonl = ("docs/*.jsonl", "gs://bucket/more.jsonl")
  cfg.data.dir, cfg.eval.tokenizer = "data", "~/spm.model"
  resolved = configs.resolve_paths(cfg)
  assert resolved.corpus.roots == ("stdlib", "site-packages", str(tmp_path / "src"))
  assert resolved.corpus.jsonl == (str(tmp_path / "docs" / "*.jsonl"), "gs://bucket/more.jsonl")
  assert resolved.data.dir == str(tmp_path / "data")
  assert resolved.eval.tokenizer == os.path.expanduser("~/spm.model")
  assert resolved.train.init_from == "" and resolved.eval.mbpp_path == ""  # defaults stay
  assert cfg.data.dir == "data"  # a copy: the caller's config is unchanged
  with pytest.raises(AttributeError):
    resolved.train.stesp = 1  # still locked
