"""Run configs are data: ml_collections ConfigDicts defined by the files under `configs/`.

    cfg = phi_jax.configs.get("phi1_small")   # or a path to a config file
    cfg.model.remat = "full"
"""

from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path

import ml_collections

from phi_jax.model import ModelConfig

# `configs/` ships inside the package as `phi_jax._configs` (see setup.py), so a non-editable
# install (Colab, TPU VMs) finds the same files a checkout does.
_CONFIG_DIR = Path(importlib.util.find_spec("phi_jax._configs").submodule_search_locations[0])


def base() -> ml_collections.ConfigDict:
  """Every section with its defaults; the files under configs/ override what differs."""
  cfg = ml_collections.ConfigDict()
  cfg.model = ml_collections.ConfigDict(dataclasses.asdict(ModelConfig()))
  return cfg


def names() -> list[str]:
  return sorted(p.stem for p in _CONFIG_DIR.glob("*.py") if not p.stem.startswith("_"))


def get(name_or_path: str) -> ml_collections.ConfigDict:
  """Loads `configs/<name>.py` (or any config file path) and returns its `get_config()`."""
  path = Path(name_or_path)
  if path.suffix != ".py":
    path = _CONFIG_DIR / f"{name_or_path}.py"
    if not path.exists():
      raise FileNotFoundError(f"no config named '{name_or_path}'; known configs: {names()}")
  spec = importlib.util.spec_from_file_location(f"phi_jax_config_{path.stem}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()
