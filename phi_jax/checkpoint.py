"""Orbax checkpoints of phi_jax runs: what a step saves, how it comes back, how damage is found.

Layout: `DIR/checkpoints/<step>/`, one orbax CheckpointManager directory (local or gs://):
  params     the model params (sharded arrays; any mesh or device count restores them)
  opt_state  the optimizer state (training checkpoints only)
  progress   JSON: the step, the data position and the settings that fix the data stream (seed
             included: with the step it is the whole RNG state), and a fingerprint per array
  config     JSON: the model config, the run's config and where its params started (init_from)
and beside it `DIR/run.json`, the run's record: its config, where its params came from, when it
started and each resume (with any damaged steps set aside).
Orbax writes a step as `<step>.orbax-checkpoint-tmp` and renames (on GCS: commits) it once every
item is complete, so only complete steps are listed; a half-written one left by a killed process
is deleted by the next training manager. Damage to a complete step (a truncated, missing or
changed file) is found when it is read: orbax's read says that a file is missing, cut short or
undecodable, or an array's fingerprint differs from the saved one, and CorruptCheckpointError
names the step. Readers of "the latest step" fall back to the newest intact one. Any other
failure (a permission, a request that does not fit the step, out of memory, a bug) is raised as
it is: it says nothing about the step, which stays where it is.

Weights move between stages in this form: a converted Hugging Face model (convert hf_to_orbax), a
pretraining workdir and a finetuning run's `train.init_from` are all read by `restore_params`.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import re
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from jax.experimental import multihost_utils

from phi_jax import files, hf_format
from phi_jax import model as model_lib

_ARRAY_ITEMS = ("params", "opt_state")
RUN_RECORD = "run.json"  # beside checkpoints/: the run's config, params source and resumes


class CorruptCheckpointError(RuntimeError):
  """A listed (complete) checkpoint step that cannot be read back as it was saved."""

  def __init__(self, step: int, directory: epath.Path, reason: str):
    self.step = step
    super().__init__(f"checkpoint step {step} ({directory / str(step)}) is damaged: {reason}")


def checkpoint_dir(workdir: str | epath.PathLike) -> epath.Path:
  """`workdir`'s checkpoints directory, made absolute: orbax refuses relative paths."""
  return epath.Path(files.absolute(workdir)) / "checkpoints"


def _item_handlers() -> dict:
  return {
    "params": ocp.StandardCheckpointHandler(),
    "opt_state": ocp.StandardCheckpointHandler(),
    "progress": ocp.JsonCheckpointHandler(),
    "config": ocp.JsonCheckpointHandler(),
  }


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
      checkpoint_dir(workdir),
      item_handlers=_item_handlers(),
      options=ocp.CheckpointManagerOptions(enable_async_checkpointing=False),
    )
  policies = ocp.checkpoint_managers
  save = [policies.PreemptionCheckpointingPolicy()]
  if options.every_steps:
    save.append(policies.FixedIntervalPolicy(int(options.every_steps)))
  if options.every_seconds:
    start = _Start(datetime.datetime.now(tz=datetime.UTC))
    save.append(_EveryInterval(minimum_interval_secs=int(options.every_seconds), start=start))
  keep = [policies.LatestN(int(options.keep) or None)]
  if options.keep_every:
    keep.append(policies.EveryNSteps(int(options.keep_every)))
  checkpoints = ocp.CheckpointManager(
    checkpoint_dir(workdir),
    item_handlers=_item_handlers(),
    options=ocp.CheckpointManagerOptions(
      save_decision_policy=policies.AnySavePolicy(save),
      preservation_policy=policies.AnyPreservationPolicy(keep),
      enable_async_checkpointing=bool(options.async_save),
      cleanup_tmp_directories=True,
    ),
  )
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
  return {
    jax.tree_util.keystr(path): int(value)
    for path, value in jax.tree_util.tree_leaves_with_path(values)
  }


def _verify(step: int, directory: epath.Path, item: str, tree: Any, saved: dict[str, int]) -> None:
  found = fingerprints(tree)
  differing = sorted(key for key in found.keys() | saved.keys() if found.get(key) != saved.get(key))
  if differing:
    raise CorruptCheckpointError(
      step,
      directory,
      (
        f"{len(differing)} array(s) of '{item}' differ from the fingerprints saved with them, "
        f"first {item}{differing[0]}"
      ),
    )


# --------------------------------------------------------------------------- saving


def config_item(
  model_config: model_lib.ModelConfig, run_config: Any = None, init_from: dict | None = None
) -> dict:
  """The `config` item: the model config, the run's whole config (a ConfigDict) and where its
  params started."""
  item = {"model": dataclasses.asdict(model_config), "init_from": init_from}
  if run_config is not None:
    item["run"] = json.loads(run_config.to_json_best_effort())  # placeholders, tuples
  return item


def save_state(
  checkpoints: ocp.CheckpointManager, state: Any, progress: dict, config: dict
) -> None:
  """Saves a TrainState as step `state.step` with `progress` (data position) and `config`.

  Returns once the arrays are copied off the devices (the rest is written in the background
  when the manager is async), so the caller may donate `state` to the next step.
  """
  step = int(state.step)
  progress = {
    **progress,
    "step": step,
    "fingerprints": {item: fingerprints(getattr(state, item)) for item in _ARRAY_ITEMS},
  }
  checkpoints.save(
    step,
    force=True,
    args=ocp.args.Composite(
      params=ocp.args.StandardSave(state.params),
      opt_state=ocp.args.StandardSave(state.opt_state),
      progress=ocp.args.JsonSave(progress),
      config=ocp.args.JsonSave(config),
    ),
  )


def save_params(
  workdir: str | epath.PathLike,
  model_config: model_lib.ModelConfig,
  params: Any,
  step: int = 0,
  init_from: dict | None = None,
) -> None:
  """Writes params and the model config as one complete step (no optimizer state)."""
  with manager(workdir) as checkpoints:
    checkpoints.save(
      step,
      force=True,
      args=ocp.args.Composite(
        params=ocp.args.StandardSave(params),
        progress=ocp.args.JsonSave(
          {"step": step, "fingerprints": {"params": fingerprints(params)}}
        ),
        config=ocp.args.JsonSave(config_item(model_config, init_from=init_from)),
      ),
    )
    checkpoints.wait_until_finished()


# --------------------------------------------------------------------------- restoring

# TensorStore raises its errors as ValueError, the status code first (none for INVALID_ARGUMENT).
# Damaged files read as NOT_FOUND (missing), OUT_OF_RANGE (truncated), DATA_LOSS (a checksum)
# or, for bytes that do not decode, INVALID_ARGUMENT or FAILED_PRECONDITION with the decoder's
# words ("Error decoding ...", "...; at byte 0"); without them those two codes mean a request that
# does not fit the files. PERMISSION_DENIED, RESOURCE_EXHAUSTED, UNAVAILABLE, ... say nothing of
# the files.
_STATUS_CODE = re.compile(r"([A-Z_]+): ")
_UNDECODABLE = re.compile(r"Error decoding|; at byte \d+")

# How reading a step went on one process; all processes act on the worst.
_INTACT, _DAMAGED, _FAILED = 0, 1, 2


def _missing_files(step_dir: epath.Path, items: dict[str, Any]) -> list[str]:
  """The files that orbax wrote for each of `items` (JSON: `metadata`, arrays: the tree's
  `_METADATA`) that `step_dir` lacks. Without _METADATA orbax infers the tree from the arrays and
  fails on the mismatch, not on the missing file."""
  expected = [
    f"{name}/metadata" if abstract is None else f"{name}/_METADATA"
    for name, abstract in items.items()
  ]
  return [path for path in expected if not (step_dir / path).exists()]


def _cause(error: BaseException) -> BaseException:
  """The exception that `error` was raised from, first in its chain (orbax wraps TensorStore's
  read errors in a plain Exception)."""
  while error.__cause__ is not None:
    error = error.__cause__
  return error


def _is_damage(error: Exception, step_dir: epath.Path) -> bool:
  """Whether `error`, raised reading `step_dir`, says that a file of it is missing, cut short or
  undecodable, rather than unreachable, mismatched to the request, or a bug."""
  cause = _cause(error)
  message = str(cause)
  if isinstance(cause, (json.JSONDecodeError, UnicodeDecodeError)):  # orbax's JSON files
    return True
  if isinstance(cause, FileNotFoundError):
    return str(step_dir) in message  # a file of this step, not some other path
  if type(cause) is not ValueError:  # TensorStore's are plain ValueErrors
    return False
  code = _STATUS_CODE.match(message)
  code = code.group(1) if code else "INVALID_ARGUMENT"
  if code == "NOT_FOUND":
    return str(step_dir) in message
  return code in ("OUT_OF_RANGE", "DATA_LOSS") or (
    code in ("INVALID_ARGUMENT", "FAILED_PRECONDITION") and bool(_UNDECODABLE.search(message))
  )


def _permission_error(step_dir: epath.Path) -> PermissionError | None:
  """The first PermissionError met opening every file of a local step, or None (orbax reports an
  unreadable item directory as missing; on object stores a denial reads as one)."""
  if files.is_remote(step_dir):
    return None
  walk_errors = []
  for root, _, names in os.walk(step_dir, onerror=walk_errors.append):
    for name in names:
      try:
        open(os.path.join(root, name), "rb").close()
      except PermissionError as e:
        return e
  return next((e for e in walk_errors if isinstance(e, PermissionError)), None)


def _failure(error: Exception, step_dir: epath.Path) -> tuple[int, Exception]:
  """(_DAMAGED or _FAILED, the error to report) for `error`, raised reading `step_dir`."""
  if not _is_damage(error, step_dir):
    return _FAILED, error
  denied = _permission_error(step_dir)
  if denied is None:
    return _DAMAGED, error
  denied.__cause__ = error
  return _FAILED, denied


def _worst_on_all_processes(outcome: int) -> int:
  if jax.process_count() == 1:
    return outcome
  return int(np.max(multihost_utils.process_allgather(np.int32(outcome))))


def _read(checkpoints: ocp.CheckpointManager, step: int, items: dict[str, Any]) -> Any:
  """Reads `items` ({name: abstract tree for arrays, None for JSON}) of `step`.

  Damage on any process, and nothing else failing on any, is a CorruptCheckpointError on all of
  them. Any other failure is raised as it is where it happened and as a RuntimeError on the other
  processes: none of them takes the step for damaged.
  """
  step_dir = checkpoints.directory / str(step)
  args = {
    name: ocp.args.JsonRestore() if abstract is None else ocp.args.StandardRestore(abstract)
    for name, abstract in items.items()
  }
  restored, error, outcome = None, None, _INTACT
  try:
    missing = _missing_files(step_dir, items)
    if missing:
      raise FileNotFoundError(f"{step_dir} lacks {', '.join(missing)}")
    restored = checkpoints.restore(step, args=ocp.args.Composite(**args))
  except Exception as e:  # noqa: BLE001 - classified, and raised as it is unless damage
    outcome, error = _failure(e, step_dir)
  worst = _worst_on_all_processes(outcome)
  if worst == _FAILED:
    if outcome == _FAILED:
      raise error
    raise RuntimeError(
      f"another process failed to read checkpoint step {step} ({step_dir}), "
      f"not for damage: see its log"
    ) from error
  if worst == _DAMAGED:
    # The cause's first line says what failed; the chain keeps the rest (TensorStore specs).
    cause = None if error is None else _cause(error)
    reason = (
      "another process could not read it"
      if cause is None
      else f"{type(cause).__name__}: {str(cause).splitlines()[0][:300]}"
    )
    raise CorruptCheckpointError(step, checkpoints.directory, reason) from error
  return restored


def _saved_model_config(checkpoints: ocp.CheckpointManager, step: int) -> model_lib.ModelConfig:
  config = _read(checkpoints, step, {"config": None}).config
  return model_lib.ModelConfig.from_dict(config["model"])


def check_fits(found: model_lib.ModelConfig, expected: model_lib.ModelConfig, where: str) -> None:
  """ValueError naming the differing fields when `found`'s params cannot stand for `expected`'s
  (a different architecture is a config error, not a damaged checkpoint)."""
  shapes = lambda config: jax.tree.map(
    lambda s: (s.shape, str(s.dtype)), model_lib.param_shapes(config)
  )
  if shapes(found) != shapes(expected):
    fields = [
      f.name
      for f in dataclasses.fields(found)
      if getattr(found, f.name) != getattr(expected, f.name)
    ]
    raise ValueError(
      f"{where} holds a model with {', '.join(f'{f}={getattr(found, f)!r}' for f in fields)}; "
      f"this config has {', '.join(f'{f}={getattr(expected, f)!r}' for f in fields)}: the "
      f"params do not fit"
    )


def _on_first_device(model_config: model_lib.ModelConfig) -> Any:
  """Param shardings that put each param whole on this process's first device."""
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  return jax.tree.map(lambda _: device, model_lib.param_shapes(model_config))


def _abstract_params(model_config: model_lib.ModelConfig, shardings: Any) -> Any:
  shardings = _on_first_device(model_config) if shardings is None else shardings
  return jax.tree.map(
    lambda shape, sharding: jax.ShapeDtypeStruct(shape.shape, shape.dtype, sharding=sharding),
    model_lib.param_shapes(model_config),
    shardings,
  )


def _restore_params(
  checkpoints: ocp.CheckpointManager,
  step: int,
  shardings: Any,
  expected: model_lib.ModelConfig | None,
) -> tuple[model_lib.ModelConfig, Any]:
  model_config = _saved_model_config(checkpoints, step)
  if expected is not None:
    check_fits(model_config, expected, str(checkpoints.directory / str(step)))
  restored = _read(
    checkpoints, step, {"params": _abstract_params(model_config, shardings), "progress": None}
  )
  _verify(
    step,
    checkpoints.directory,
    "params",
    restored.params,
    restored.progress["fingerprints"]["params"],
  )
  return model_config, restored.params


def _restore_state(
  checkpoints: ocp.CheckpointManager,
  step: int,
  abstract_state: Any,
  expected: model_lib.ModelConfig,
) -> tuple[Any, dict]:
  where = str(checkpoints.directory / str(step))
  check_fits(_saved_model_config(checkpoints, step), expected, where)
  progress = _read(checkpoints, step, {"progress": None}).progress
  if "opt_state" not in progress["fingerprints"]:
    raise ValueError(
      f"{where} holds params only (a conversion), no optimizer state to resume: "
      f"train from it in a new workdir with "
      f"--config.train.init_from={checkpoints.directory.parent}"
    )
  restored = _read(
    checkpoints, step, {item: getattr(abstract_state, item) for item in _ARRAY_ITEMS}
  )
  for item in _ARRAY_ITEMS:
    _verify(
      step, checkpoints.directory, item, getattr(restored, item), progress["fingerprints"][item]
    )
  state = abstract_state.replace(
    step=jax.device_put(np.int32(progress["step"]), abstract_state.step.sharding),
    params=restored.params,
    opt_state=restored.opt_state,
  )
  return state, progress


def _newest_intact(
  checkpoints: ocp.CheckpointManager, restore: Callable[[int], Any]
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
    damaged[0].step,
    checkpoints.directory,
    "no intact step to fall back to:\n" + "\n".join(str(e) for e in damaged),
  )


def restore_latest_state(
  checkpoints: ocp.CheckpointManager, abstract_state: Any, expected: model_lib.ModelConfig
) -> tuple[Any, dict, list[int]] | None:
  """(TrainState on `abstract_state`'s shardings, progress item, damaged steps set aside) of the
  newest intact training checkpoint, or None when there is none. Newer damaged steps are moved to
  DIR/checkpoints_corrupt/ (kept for inspection, out of the manager's way so that the run saves
  those steps again); when no step is intact, nothing is moved and the error lists them all."""
  if not checkpoints.all_steps():
    return None
  _, (state, progress), damaged = _newest_intact(
    checkpoints, lambda step: _restore_state(checkpoints, step, abstract_state, expected)
  )
  if damaged:
    aside = checkpoints.directory.parent / "checkpoints_corrupt"
    if jax.process_index() == 0:
      aside.mkdir(parents=True, exist_ok=True)
      for step in damaged:
        stamp = time.strftime("%Y%m%dT%H%M%S")
        (checkpoints.directory / str(step)).rename(aside / f"{step}.{stamp}")
    multihost_utils.sync_global_devices("phi_jax.checkpoint: damaged steps set aside")
    checkpoints.reload()
    logging.warning(
      "resuming from step %d; damaged steps %s moved to %s", progress["step"], damaged, aside
    )
  return state, progress, damaged


def _write_run_record(workdir: epath.Path, record: dict) -> None:
  if jax.process_index() == 0:
    files.write_atomic(epath.Path(workdir) / RUN_RECORD, json.dumps(record, indent=2) + "\n")


def record_start(
  workdir: str | epath.PathLike,
  run_config: dict,
  init_from: dict | None,
  memory_fit: dict | None = None,
) -> None:
  """Starts DIR/run.json for a run with no checkpoint yet: its config (as JSON), where its params
  came from, the micro-batch and remat compiled to fit memory (phi_jax.aot.fit) if the config
  asked for that, and when it started."""
  _write_run_record(
    epath.Path(workdir),
    {
      "config": run_config,
      "init_from": init_from,
      "memory_fit": memory_fit,
      "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
      "resumes": [],
    },
  )


def record_resume(workdir: str | epath.PathLike, step: int, set_aside: list[int]) -> dict | None:
  """Adds a resume at `step` (and the damaged steps set aside) to DIR/run.json; returns where
  the run's params first came from (its `init_from` record)."""
  path = epath.Path(workdir) / RUN_RECORD
  record = json.loads(path.read_text()) if path.exists() else {}
  record.setdefault("resumes", []).append(
    {
      "step": step,
      "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
      "damaged_steps_set_aside": set_aside,
    }
  )
  _write_run_record(epath.Path(workdir), record)
  return record.get("init_from")


def restore_params(
  workdir: str | epath.PathLike,
  step: int | None = None,
  shardings: Any = None,
  expected: model_lib.ModelConfig | None = None,
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
      raise FileNotFoundError(
        f"no complete checkpoint at step {step} in {directory}; steps "
        f"found: {list(checkpoints.all_steps())}"
      )
    return (step, *restore(step))


def load_init(init_from: str, expected: model_lib.ModelConfig, shardings: Any) -> tuple[Any, dict]:
  """(params on `shardings`, a record of the source) for `train.init_from`: a workdir (its newest
  intact step), a workdir's `checkpoints/<step>` directory, or a Hugging Face phi directory."""
  init_from = files.absolute(init_from)
  path = epath.Path(init_from)
  if (path / "config.json").exists():
    model_config, numpy_params = hf_format.load_hf(init_from, expected.param_dtype)
    check_fits(model_config, expected, f"train.init_from={init_from}")
    shardings = _on_first_device(model_config) if shardings is None else shardings
    params = jax.tree.map(  # each process puts only its own shards
      lambda x, sharding: jax.make_array_from_callback(x.shape, sharding, lambda i: x[i]),
      numpy_params,
      shardings,
    )
    return params, {"huggingface": init_from}
  step = None
  if path.parent.name == "checkpoints" and path.name.isdigit():
    path, step = path.parent.parent, int(path.name)
  if not (path / "checkpoints").exists():
    raise FileNotFoundError(
      f"train.init_from={init_from!r} is not a workdir with checkpoints/, a workdir's "
      f"checkpoints/<step> directory, or a Hugging Face directory with config.json"
    )
  step, _, params = _restore_params_at(path, step, shardings, expected)
  return params, {"workdir": str(path), "step": step}
