"""Orbax checkpoints of phi_jax runs: what a step saves, how it comes back, how damage is found.

Layout: `DIR/checkpoints/<step>/`, one orbax CheckpointManager directory (local or gs://):
  params     the model params (sharded arrays; any mesh or device count restores them)
  opt_state  the optimizer state (training checkpoints only)
  progress   JSON: the step, the data position and the settings that fix the data stream (seed
             included: with the step it is the whole RNG state), and a fingerprint per array
  config     JSON: the model config, the run's config and where its params started (init_from)
Orbax writes a step as `<step>.orbax-checkpoint-tmp` and renames (on GCS: commits) it once every
item is complete, so only complete steps are listed; a half-written one left by a killed process
is deleted by the next training manager. Damage to a complete step (a truncated, missing or
changed file) is found when it is read: orbax's read fails or an array's fingerprint differs from
the saved one, and CorruptCheckpointError names the step. Readers of "the latest step" fall back
to the newest intact one.

Weights move between stages in this form: a converted Hugging Face model (convert hf_to_orbax), a
pretraining workdir and a finetuning run's `train.init_from` are all read by `restore_params`.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from jax.experimental import multihost_utils

from phi_jax import hf_format
from phi_jax import model as model_lib

_ARRAY_ITEMS = ("params", "opt_state")


class CorruptCheckpointError(RuntimeError):
  """A listed (complete) checkpoint step that cannot be read back as it was saved."""

  def __init__(self, step: int, directory: epath.Path, reason: str):
    self.step = step
    super().__init__(f"checkpoint step {step} ({directory / str(step)}) is damaged: {reason}")


def checkpoint_dir(workdir: str | epath.PathLike) -> epath.Path:
  return epath.Path(workdir) / "checkpoints"


def _item_handlers() -> dict:
  return {"params": ocp.StandardCheckpointHandler(), "opt_state": ocp.StandardCheckpointHandler(),
          "progress": ocp.JsonCheckpointHandler(), "config": ocp.JsonCheckpointHandler()}


@dataclasses.dataclass(frozen=True)
class _Start:
  """The run's start, standing in for the previous save so that the first save by time comes
  one interval after the start (orbax's policy would save at once with no previous step)."""

  time: datetime.datetime
  step: int = -1
  metrics: Any = None


@dataclasses.dataclass(kw_only=True)
class _EveryInterval(ocp.checkpoint_managers.ContinuousCheckpointingPolicy):
  """Saves once `minimum_interval_secs` passed since the last save or the start. The primary
  process decides and tells the others (orbax), so that all processes save the same steps."""

  start: _Start

  def should_save(self, step, previous_steps, *, context) -> bool:
    latest = max([self.start, *previous_steps[-1:]], key=lambda info: info.time)
    return super().should_save(step, [latest], context=context)


def manager(workdir: str | epath.PathLike, options: Any = None) -> ocp.CheckpointManager:
  """The CheckpointManager of `workdir`.

  With `options` (a config's `checkpoint` section) it saves on those policies and on a preemption
  notice, keeps what they say, and deletes half-written steps of killed processes; without, it
  saves synchronously where told (`force=True`) and keeps everything.
  """
  if options is None:
    return ocp.CheckpointManager(
        checkpoint_dir(workdir), item_handlers=_item_handlers(),
        options=ocp.CheckpointManagerOptions(enable_async_checkpointing=False))
  policies = ocp.checkpoint_managers
  save = [policies.PreemptionCheckpointingPolicy()]
  if options.every_steps:
    save.append(policies.FixedIntervalPolicy(int(options.every_steps)))
  if options.every_seconds:
    start = _Start(datetime.datetime.now(tz=datetime.timezone.utc))
    save.append(_EveryInterval(minimum_interval_secs=int(options.every_seconds), start=start))
  keep = [policies.LatestN(int(options.keep) or None)]
  if options.keep_every:
    keep.append(policies.EveryNSteps(int(options.keep_every)))
  checkpoints = ocp.CheckpointManager(
      checkpoint_dir(workdir), item_handlers=_item_handlers(),
      options=ocp.CheckpointManagerOptions(
          save_decision_policy=policies.AnySavePolicy(save),
          preservation_policy=policies.AnyPreservationPolicy(keep),
          enable_async_checkpointing=bool(options.async_save), cleanup_tmp_directories=True))
  # orbax deletes the half-written steps in a thread that only its next save waits for (not
  # close()); a run that stops before saving would leave it to die with the interpreter.
  getattr(checkpoints, "_maybe_await_cleanup_tmp_directory", lambda: None)()
  return checkpoints


# --------------------------------------------------------------------------- fingerprints

def _fingerprint(x: jax.Array) -> jax.Array:
  """sum(bits * (2 * flat_index + 1)) mod 2^32: integer arithmetic, so the same on any mesh, and
  any one changed element changes it (the weights are odd, hence invertible mod 2^32)."""
  unsigned = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32}[x.dtype.itemsize]
  bits = jax.lax.bitcast_convert_type(x, unsigned)
  index, stride = jnp.zeros(x.shape, jnp.uint32), 1
  for axis in reversed(range(x.ndim)):
    index = index + jax.lax.broadcasted_iota(jnp.uint32, x.shape, axis) * np.uint32(stride)
    stride = stride * x.shape[axis] % 2**32
  return jnp.sum(bits.astype(jnp.uint32) * (2 * index + 1), dtype=jnp.uint32)


_fingerprints = jax.jit(lambda tree: jax.tree.map(_fingerprint, tree))


def fingerprints(tree: Any) -> dict[str, int]:
  """{key path: uint32 fingerprint} of every array in `tree` (sharded or not)."""
  values = jax.device_get(_fingerprints(tree))
  return {jax.tree_util.keystr(path): int(value)
          for path, value in jax.tree_util.tree_leaves_with_path(values)}


def _verify(step: int, directory: epath.Path, item: str, tree: Any, saved: dict[str, int]
            ) -> None:
  found = fingerprints(tree)
  differing = sorted(key for key in found.keys() | saved.keys() if found.get(key) != saved.get(key))
  if differing:
    raise CorruptCheckpointError(step, directory, (
        f"{len(differing)} array(s) of '{item}' differ from the fingerprints saved with them, "
        f"first {item}{differing[0]}"))


# --------------------------------------------------------------------------- saving

def config_item(model_config: model_lib.ModelConfig, run_config: Any = None,
                init_from: dict | None = None) -> dict:
  """The `config` item: the model config, the run's whole config (a ConfigDict) and where its
  params started."""
  item = {"model": dataclasses.asdict(model_config), "init_from": init_from}
  if run_config is not None:
    item["run"] = json.loads(run_config.to_json_best_effort())  # placeholders, tuples
  return item


def save_state(checkpoints: ocp.CheckpointManager, state: Any, progress: dict,
               config: dict) -> None:
  """Saves a TrainState as step `state.step` with `progress` (data position) and `config`.

  Returns once the arrays are copied off the devices (the rest is written in the background
  when the manager is async), so the caller may donate `state` to the next step.
  """
  step = int(state.step)
  progress = {**progress, "step": step, "fingerprints": {
      item: fingerprints(getattr(state, item)) for item in _ARRAY_ITEMS}}
  checkpoints.save(step, force=True, args=ocp.args.Composite(
      params=ocp.args.StandardSave(state.params), opt_state=ocp.args.StandardSave(state.opt_state),
      progress=ocp.args.JsonSave(progress), config=ocp.args.JsonSave(config)))


def save_params(workdir: str | epath.PathLike, model_config: model_lib.ModelConfig, params: Any,
                step: int = 0, init_from: dict | None = None) -> None:
  """Writes params and the model config as one complete step (no optimizer state)."""
  with manager(workdir) as checkpoints:
    checkpoints.save(step, force=True, args=ocp.args.Composite(
        params=ocp.args.StandardSave(params),
        progress=ocp.args.JsonSave({"step": step,
                                    "fingerprints": {"params": fingerprints(params)}}),
        config=ocp.args.JsonSave(config_item(model_config, init_from=init_from))))
    checkpoints.wait_until_finished()


# --------------------------------------------------------------------------- restoring

def _all_processes_agree(ok: bool) -> bool:
  if jax.process_count() == 1:
    return ok
  return bool(np.all(multihost_utils.process_allgather(np.asarray(ok))))


def _read(checkpoints: ocp.CheckpointManager, step: int, items: dict[str, Any]) -> Any:
  """Reads `items` ({name: abstract tree for arrays, None for JSON}) of `step`; any failure on
  any process is a CorruptCheckpointError on all of them."""
  args = {name: ocp.args.JsonRestore() if abstract is None else ocp.args.StandardRestore(abstract)
          for name, abstract in items.items()}
  restored, error = None, None
  try:
    restored = checkpoints.restore(step, args=ocp.args.Composite(**args))
  except Exception as e:  # noqa: BLE001 - whatever the damage, orbax's message says what it is
    error = e
  if not _all_processes_agree(error is None):
    # orbax's first line says what failed; the chained exception keeps the rest (TensorStore specs)
    reason = (f"{type(error).__name__}: {str(error).splitlines()[0][:300]}" if error
              else "another process could not read it")
    raise CorruptCheckpointError(step, checkpoints.directory, reason) from error
  return restored


def _saved_model_config(checkpoints: ocp.CheckpointManager, step: int) -> model_lib.ModelConfig:
  config = _read(checkpoints, step, {"config": None}).config
  return model_lib.ModelConfig.from_dict(config["model"])


def check_fits(found: model_lib.ModelConfig, expected: model_lib.ModelConfig, where: str) -> None:
  """ValueError naming the differing fields when `found`'s params cannot stand for `expected`'s
  (a different architecture is a config error, not a damaged checkpoint)."""
  shapes = lambda config: jax.tree.map(lambda s: (s.shape, str(s.dtype)),
                                       model_lib.param_shapes(config))
  if shapes(found) != shapes(expected):
    fields = [f.name for f in dataclasses.fields(found)
              if getattr(found, f.name) != getattr(expected, f.name)]
    raise ValueError(
        f"{where} holds a model with {', '.join(f'{f}={getattr(found, f)!r}' for f in fields)}; "
        f"this config has {', '.join(f'{f}={getattr(expected, f)!r}' for f in fields)}: the "
        f"params do not fit")


def _on_first_device(model_config: model_lib.ModelConfig) -> Any:
  """Param shardings that put each param whole on this process's first device."""
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  return jax.tree.map(lambda _: device, model_lib.param_shapes(model_config))


def _abstract_params(model_config: model_lib.ModelConfig, shardings: Any) -> Any:
  shardings = _on_first_device(model_config) if shardings is None else shardings
  return jax.tree.map(
      lambda shape, sharding: jax.ShapeDtypeStruct(shape.shape, shape.dtype, sharding=sharding),
      model_lib.param_shapes(model_config), shardings)


def _restore_params(checkpoints: ocp.CheckpointManager, step: int, shardings: Any,
                    expected: model_lib.ModelConfig | None) -> tuple[model_lib.ModelConfig, Any]:
  model_config = _saved_model_config(checkpoints, step)
  if expected is not None:
    check_fits(model_config, expected, str(checkpoints.directory / str(step)))
  restored = _read(checkpoints, step, {"params": _abstract_params(model_config, shardings),
                                       "progress": None})
  _verify(step, checkpoints.directory, "params", restored.params,
          restored.progress["fingerprints"]["params"])
  return model_config, restored.params


def _restore_state(checkpoints: ocp.CheckpointManager, step: int, abstract_state: Any,
                   expected: model_lib.ModelConfig) -> tuple[Any, dict]:
  where = str(checkpoints.directory / str(step))
  check_fits(_saved_model_config(checkpoints, step), expected, where)
  progress = _read(checkpoints, step, {"progress": None}).progress
  if "opt_state" not in progress["fingerprints"]:
    raise ValueError(f"{where} holds params only (a conversion), no optimizer state to resume: "
                     f"train from it in a new workdir with "
                     f"--config.train.init_from={checkpoints.directory.parent}")
  restored = _read(checkpoints, step,
                   {item: getattr(abstract_state, item) for item in _ARRAY_ITEMS})
  for item in _ARRAY_ITEMS:
    _verify(step, checkpoints.directory, item, getattr(restored, item),
            progress["fingerprints"][item])
  state = abstract_state.replace(
      step=jax.device_put(np.int32(progress["step"]), abstract_state.step.sharding),
      params=restored.params, opt_state=restored.opt_state)
  return state, progress


def _newest_intact(checkpoints: ocp.CheckpointManager, restore: Callable[[int], Any]
                   ) -> tuple[int, Any, list[int]]:
  """(step, restore(step)) of the newest step that reads back intact, and the newer damaged steps
  (each logged). CorruptCheckpointError when none is intact."""
  damaged: list[CorruptCheckpointError] = []
  for step in sorted(checkpoints.all_steps(), reverse=True):
    try:
      return step, restore(step), [e.step for e in damaged]
    except CorruptCheckpointError as e:
      logging.error("%s; trying the previous step", e)
      damaged.append(e)
  raise CorruptCheckpointError(
      damaged[0].step, checkpoints.directory,
      "no intact step to fall back to:\n" + "\n".join(str(e) for e in damaged))


def restore_latest_state(checkpoints: ocp.CheckpointManager, abstract_state: Any,
                         expected: model_lib.ModelConfig) -> tuple[Any, dict, list[int]] | None:
  """(TrainState on `abstract_state`'s shardings, progress item, damaged steps set aside) of the
  newest intact training checkpoint, or None when there is none. Newer damaged steps are moved to
  DIR/checkpoints_corrupt/ (kept for inspection, out of the manager's way so that the run saves
  those steps again); when no step is intact, nothing is moved and the error lists them all."""
  if not checkpoints.all_steps():
    return None
  _, (state, progress), damaged = _newest_intact(
      checkpoints, lambda step: _restore_state(checkpoints, step, abstract_state, expected))
  if damaged:
    aside = checkpoints.directory.parent / "checkpoints_corrupt"
    if jax.process_index() == 0:
      aside.mkdir(parents=True, exist_ok=True)
      for step in damaged:
        stamp = time.strftime("%Y%m%dT%H%M%S")
        (checkpoints.directory / str(step)).rename(aside / f"{step}.{stamp}")
    multihost_utils.sync_global_devices("phi_jax.checkpoint: damaged steps set aside")
    checkpoints.reload()
    logging.warning("resuming from step %d; damaged steps %s moved to %s", progress["step"],
                    damaged, aside)
  return state, progress, damaged


def restore_params(workdir: str | epath.PathLike, step: int | None = None, shardings: Any = None,
                   expected: model_lib.ModelConfig | None = None
                   ) -> tuple[model_lib.ModelConfig, Any]:
  """(model config, params) of `step` under `workdir`; default: the newest intact step.

  The params land on `shardings` (a pytree of `jax.sharding.Sharding`s shaped like the params,
  e.g. a trainer's `state_sharding.params`), by default whole on this process's first device:
  a checkpoint restores onto any mesh, device and process count. `expected`: a model config the
  params must fit (ValueError naming the differing fields otherwise).
  """
  _, model_config, params = _restore_params_at(workdir, step, shardings, expected)
  return model_config, params


def _restore_params_at(workdir, step, shardings, expected):
  """(step, model config, params), the step resolved as in restore_params."""
  directory = checkpoint_dir(workdir)
  if not directory.exists():
    raise FileNotFoundError(f"no checkpoints in {workdir}: {directory} does not exist")
  with manager(workdir) as checkpoints:
    restore = lambda s: _restore_params(checkpoints, s, shardings, expected)
    if step is None:
      if not checkpoints.all_steps():
        raise FileNotFoundError(f"no complete checkpoint in {directory}")
      step, (model_config, params), _ = _newest_intact(checkpoints, restore)
      return step, model_config, params
    if step not in checkpoints.all_steps():
      raise FileNotFoundError(f"no complete checkpoint at step {step} in {directory}; steps "
                              f"found: {list(checkpoints.all_steps())}")
    return (step, *restore(step))


def load_init(init_from: str, expected: model_lib.ModelConfig, shardings: Any) -> tuple[Any, dict]:
  """(params on `shardings`, a record of the source) for `train.init_from`: a workdir (its newest
  intact step), a workdir's `checkpoints/<step>` directory, or a Hugging Face phi directory."""
  path = epath.Path(init_from)
  if (path / "config.json").exists():
    model_config, numpy_params = hf_format.load_hf(init_from, expected.param_dtype)
    check_fits(model_config, expected, f"train.init_from={init_from}")
    shardings = _on_first_device(model_config) if shardings is None else shardings
    params = jax.tree.map(  # each process puts only its own shards
        lambda x, sharding: jax.make_array_from_callback(x.shape, sharding, lambda i: x[i]),
        numpy_params, shardings)
    return params, {"huggingface": init_from}
  step = None
  if path.parent.name == "checkpoints" and path.name.isdigit():
    path, step = path.parent.parent, int(path.name)
  if not (path / "checkpoints").exists():
    raise FileNotFoundError(
        f"train.init_from={init_from!r} is not a workdir with checkpoints/, a workdir's "
        f"checkpoints/<step> directory, or a Hugging Face directory with config.json")
  step, _, params = _restore_params_at(path, step, shardings, expected)
  return params, {"workdir": str(path), "step": step}
