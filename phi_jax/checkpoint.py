"""Params-only orbax checkpoints: the form in which weights move between stages.

Layout: `DIR/checkpoints/<step>/{params,config}`, an orbax CheckpointManager directory, so a
converted Hugging Face model and a training workdir are read the same way (`init_from`).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

from phi_jax import model as model_lib


def _manager(workdir: str | Path) -> ocp.CheckpointManager:
  return ocp.CheckpointManager(Path(workdir) / "checkpoints")


def save_params(workdir: str | Path, model_config: model_lib.ModelConfig, params: Any,
                step: int = 0) -> None:
  """Writes params and the model config as one complete step (orbax commits it atomically)."""
  with _manager(workdir) as manager:
    manager.save(step, args=ocp.args.Composite(
        params=ocp.args.StandardSave(params),
        config=ocp.args.JsonSave({"model": dataclasses.asdict(model_config)})))
    manager.wait_until_finished()


def restore_params(workdir: str | Path, step: int | None = None, shardings: Any = None
                   ) -> tuple[model_lib.ModelConfig, Any]:
  """(model config, params) of `step` (default: the latest complete one) under `workdir`.

  The params land on `shardings` (a pytree of `jax.sharding.Sharding`s shaped like the params,
  e.g. a trainer's `state_sharding.params`), by default whole on this process's first device:
  a checkpoint restores whatever device and process count it was saved with.
  """
  directory = Path(workdir) / "checkpoints"
  with _manager(workdir) as manager:
    step = manager.latest_step() if step is None else step
    if step is None or step not in manager.all_steps():
      raise FileNotFoundError(
          f"no complete checkpoint{'' if step is None else f' at step {step}'} in {directory}; "
          f"steps found: {list(manager.all_steps())}")
    saved = manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))
    model_config = model_lib.ModelConfig.from_dict(saved.config["model"])
    if shardings is None:
      device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
      shardings = jax.tree.map(lambda _: device, model_lib.param_shapes(model_config))
    abstract = jax.tree.map(
        lambda shape, sharding: jax.ShapeDtypeStruct(shape.shape, shape.dtype, sharding=sharding),
        model_lib.param_shapes(model_config), shardings)
    restored = manager.restore(step, args=ocp.args.Composite(
        params=ocp.args.StandardRestore(abstract)))
  return model_config, restored.params
