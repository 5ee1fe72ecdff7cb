"""The trainer: `python -m phi_jax.train --config=configs/tiny.py --workdir=DIR [--config.x=y]`.

From Python: `phi_jax.train.run(phi_jax.configs.get("tiny"), "runs/tiny")`.
Writes DIR/metrics.jsonl (one JSON object per logged step), DIR/tensorboard/, DIR/run.json (the
config, where the params started, every resume) and orbax checkpoints under DIR/checkpoints/
(phi_jax.checkpoint). DIR may be local or gs://.

With train.micro_batch or model.remat "auto", the step is first compiled to find the largest
micro-batch and cheapest remat that fit the devices' memory (phi_jax.aot.fit; recorded in run.json).

Rerunning the same command on the same DIR resumes from the newest intact checkpoint and ends
with the params, bit for bit, of a run that was never interrupted: the state, the step (which
with train.seed fixes the dropout keys) and the data position all come from the checkpoint, and
the input pipeline continues at the next batch. On SIGTERM (or a TPU preemption notice) the run
saves at the next step boundary and exits with status 143, so that schedulers restart it.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
import time
from typing import Any

import jax
from absl import flags, logging
from etils import epath
from tqdm import tqdm

from phi_jax import (
  aot,
  checkpoint,
  cli,
  configs,
  distributed,
  files,
  input_pipeline,
  sharding,
  train_eval,
  train_step,
)
from phi_jax import metrics as metrics_lib
from phi_jax import model as model_lib


class Preempted(Exception):
  """The run saved its state on a preemption notice and stopped; rerun it to continue."""


class NonFiniteError(FloatingPointError):
  """A step's loss or gradients were not finite and train.on_nonfinite='stop'."""


class _Profiler:
  """A JAX profiler trace of steps [start, start + count) into `directory` (count 0 = off)."""

  def __init__(self, directory: epath.Path, start: int, count: int):
    self.directory, self.start, self.stop_at, self.active = directory, start, start + count, False
    self.enabled = count > 0

  def before(self, step: int) -> None:
    if self.enabled and step == self.start and not self.active:
      jax.profiler.start_trace(str(self.directory))
      self.active = True

  def after(self, step: int, step_metrics: dict) -> None:
    if self.active and step + 1 == self.stop_at:
      jax.block_until_ready(step_metrics)  # the traced steps' device work, not just dispatch
      self.stop()

  def stop(self) -> None:
    if self.active:
      jax.profiler.stop_trace()
      self.active = False
      logging.warning(
        "profiler trace of steps %d-%d in %s (tensorboard --logdir %s)",
        self.start,
        self.stop_at - 1,
        self.directory,
        self.directory,
      )


class _Sigterm:
  """Notes SIGTERM (most schedulers' preemption notice) for the next step boundary.

  Under jax.distributed, jax's preemption sync manager owns SIGTERM instead, and orbax's
  `reached_preemption` agrees on the step at which every process saves.
  """

  def __init__(self):
    self.received = False
    self._installed = False

  def __enter__(self) -> _Sigterm:
    main_thread = threading.current_thread() is threading.main_thread()
    if main_thread and not jax.distributed.is_initialized():
      self._previous = signal.signal(signal.SIGTERM, self._note)
      self._installed = True
    return self

  def _note(self, signum, frame) -> None:
    del signum, frame
    self.received = True

  def __exit__(self, *exc) -> None:
    if self._installed:
      signal.signal(signal.SIGTERM, self._previous)


def _check_same_stream(saved: dict, now: dict, workdir: epath.Path) -> None:
  if saved.get("source") == "seqio" and "process_count" in saved:
    raise ValueError(
      f"{workdir} was trained on seqio data before 2026-12, when each process read its own "
      "shard: its data position does not carry over to the random-access rows read now. Start "
      f"a new workdir with --config.train.init_from={workdir} (params only)"
    )
  changed = configs.differences(saved, now)
  if changed:
    raise ValueError(
      f"{workdir} was trained on another data stream ("
      + ", ".join(f"{field}: {a!r} then, {b!r} now" for field, a, b in changed)
      + "): resuming would not continue at the next example. Rerun with the original "
      f"settings, or start a new workdir with --config.train.init_from={workdir} (params only)"
    )


def _initial_state(
  cfg: Any,
  workdir: epath.Path,
  model_config: model_lib.ModelConfig,
  trainer: train_step.Trainer,
  checkpoints,
  memory_fit: dict | None,
) -> tuple[Any, int, dict | None]:
  """(state, next batch, init_from record): resumed from the workdir's own checkpoints when it
  has any, else fresh from train.init_from or from train.seed. A fresh run starts run.json with
  its config and `memory_fit` (aot.fit's choice, if it made one)."""
  resumed = checkpoint.restore_latest_state(checkpoints, trainer.abstract_state, model_config)
  if resumed is not None:
    state, progress, set_aside = resumed
    saved_stream = dict(progress["stream"])
    if saved_stream.get("dir"):  # recorded before paths were resolved at the entry points
      saved_stream["dir"] = files.absolute(saved_stream["dir"])
    _check_same_stream(saved_stream, input_pipeline.stream_signature(cfg), workdir)
    logging.warning("resuming %s from step %d", workdir, progress["step"])
    init_from = checkpoint.record_resume(workdir, progress["step"], set_aside)
    return state, progress["next_batch"], init_from
  init_from = cfg.train.init_from
  if init_from is None:
    raise ValueError(
      "this config finetunes pretrained params: set --config.train.init_from to a "
      "pretraining workdir (its latest step), a workdir's checkpoints/<step>, or a "
      "Hugging Face phi directory"
    )
  if init_from:
    params, record = checkpoint.load_init(init_from, model_config, trainer.state_sharding.params)
    state = trainer.state_from_params(params)
  else:
    state, record = trainer.init_state(jax.random.key(int(cfg.train.seed))), None
  checkpoint.record_start(workdir, json.loads(cfg.to_json_best_effort()), record, memory_fit)
  return state, 0, record


def _nonfinite_steps(pending: list[tuple[int, dict]]) -> list[tuple[int, dict]]:
  """The (step, metrics) of `pending` whose loss or gradients were not finite (syncs)."""
  values = jax.device_get([m for _, m in pending])
  return [(step, m) for (step, _), m in zip(pending, values) if m["nonfinite"]]


def run(cfg: Any, workdir: str | epath.PathLike) -> dict:
  """Trains up to `cfg.train.steps` steps, resuming from `workdir`'s checkpoints; returns the
  last logged metrics. Raises Preempted after saving on SIGTERM / a preemption notice."""
  cfg = configs.resolve_paths(cfg)
  workdir = epath.Path(files.absolute(workdir))
  distributed.initialize(cfg.distributed)
  configs.check(cfg, jax.device_count())  # before anything is compiled or written
  memory_fit = None
  if configs.memory_fit_needed(cfg):
    cfg, memory_fit = _fit_memory(cfg, workdir)
  model_config = model_lib.as_model_config(cfg)
  mesh = sharding.make_mesh(cfg.mesh)
  trainer = train_step.make_trainer(cfg, mesh)
  checkpoints = checkpoint.manager(workdir, cfg.checkpoint)
  try:
    with _Sigterm() as sigterm:
      return _train(cfg, workdir, model_config, trainer, checkpoints, sigterm, memory_fit)
  finally:
    checkpoints.wait_until_finished()  # an in-flight save was checked: let it complete
    checkpoints.close()


def _fit_memory(cfg: Any, workdir: epath.Path) -> tuple[Any, dict]:
  """Fills in train.micro_batch / model.remat "auto": the choice this workdir's run already made
  (so a resumed run takes the same steps), else phi_jax.aot.fit's."""
  record_path = workdir / checkpoint.RUN_RECORD
  if record_path.exists():
    recorded = json.loads(record_path.read_text()).get("memory_fit")
    if recorded:
      logging.warning(
        "memory fit: train.micro_batch=%d, model.remat=%s, as chosen when %s started",
        recorded["micro_batch"],
        recorded["remat"],
        workdir,
      )
      return aot.fitted(cfg, recorded["micro_batch"], recorded["remat"]), recorded
  chosen = aot.fit(cfg, cfg.train.fit_topology or None)
  return chosen["config"], chosen["record"]


def _train(cfg, workdir, model_config, trainer, checkpoints, sigterm, memory_fit) -> dict:
  state, next_batch, init_from = _initial_state(
    cfg, workdir, model_config, trainer, checkpoints, memory_fit
  )
  start_step, steps, log_every = int(state.step), int(cfg.train.steps), int(cfg.train.log_every)
  if start_step > steps:
    raise ValueError(
      f"{workdir} holds a checkpoint at step {start_step}, past "
      f"train.steps={steps}; raise train.steps or use another workdir"
    )
  batches = input_pipeline.batches(cfg, trainer.batch_sharding, next_batch)
  config = checkpoint.config_item(model_config, cfg, init_from)
  stream = input_pipeline.stream_signature(cfg)
  mixture_shares = input_pipeline.mixture_shares(cfg)
  evaluator = train_eval.make_evaluator(cfg, trainer)  # None unless eval.every_steps > 0

  tokens_per_step = int(cfg.train.global_batch) * int(cfg.train.seq_len)
  flops_per_step = (
    metrics_lib.flops_per_token(model_config, int(cfg.train.seq_len)) * tokens_per_step
  )
  peak = metrics_lib.peak_flops_per_device(model_config.dtype) * jax.device_count()
  writer = metrics_lib.Writer(workdir, tensorboard=cfg.logging.tensorboard, start_step=start_step)
  progress = tqdm(
    total=steps,
    initial=start_step,
    desc="train",
    unit="step",
    disable=not cfg.logging.progress_bar or jax.process_index() != 0,
  )
  last = (metrics_lib.records(workdir) or [{}])[-1]
  pending: list[tuple[int, dict]] = []  # steps not yet checked for non-finite values
  skipped = 0  # non-finite steps skipped in this logging window
  window_start, window_steps = time.perf_counter(), 0
  profiler = _Profiler(
    workdir / "profile", int(cfg.logging.profile_start_step), int(cfg.logging.profile_steps)
  )
  try:
    for step in range(start_step, steps):
      profiler.before(step)
      state, step_metrics = trainer.step(state, next(batches))
      profiler.after(step, step_metrics)
      done = step + 1
      pending.append((done, step_metrics))
      window_steps += 1
      progress.update(1)
      # Every process asks every step: the preemption sync point needs all of them.
      preempted = checkpoints.reached_preemption(done) or sigterm.received
      log = done % log_every == 0 or done == steps
      save = done == steps or preempted or checkpoints.should_save(done)
      if log or save:  # nothing unchecked is ever logged as good or saved
        for bad_step, bad in _nonfinite_steps(pending):
          message = (
            f"step {bad_step}: loss={float(bad['loss'])}, "
            f"grad_norm={float(bad['grad_norm'])} are not finite"
          )
          if cfg.train.on_nonfinite == "stop":
            raise NonFiniteError(
              f"{message}; stopping (train.on_nonfinite='stop'). The checkpoints kept are "
              f"all from before it (latest: step {checkpoints.latest_step()} in "
              f"{checkpoints.directory}). Lower optim.learning_rate, or set "
              f"train.on_nonfinite='skip' to skip such steps"
            )
          logging.warning("%s; skipped (params and optimizer state unchanged)", message)
          skipped += 1
        pending = []
      if log:
        step_metrics = {k: float(v) for k, v in jax.device_get(step_metrics).items()}
        step_time = (time.perf_counter() - window_start) / window_steps
        last = {
          "loss": step_metrics["loss"],
          "learning_rate": step_metrics["learning_rate"],
          "grad_norm": step_metrics["grad_norm"],
          "step_time_s": step_time,
          "tokens_per_second": tokens_per_step / step_time,
          "mfu": flops_per_step / step_time / peak,
          "nonfinite_steps": skipped,
          **mixture_shares(done),
        }
        writer.write(done, last)
        progress.set_postfix(loss=f"{last['loss']:.4f}", refresh=False)
        window_start, window_steps, skipped = time.perf_counter(), 0, 0
      if evaluator is not None and evaluator.due(done):
        writer.write(done, evaluator(state.params))
        window_start, window_steps = time.perf_counter(), 0  # eval time is not step time
      if save:
        checkpoint.save_state(checkpoints, state, {"next_batch": done, "stream": stream}, config)
      if preempted:
        checkpoints.wait_until_finished()
        raise Preempted(
          f"saved step {done} to {checkpoints.directory} on a preemption notice; "
          f"rerun the same command to continue"
        )
  finally:
    profiler.stop()
    progress.close()
    writer.close()
  return last


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # orbax/absl INFO lines would drown the progress bar
  try:
    run(flags.FLAGS.config, flags.FLAGS.workdir)
  except Preempted as e:
    logging.warning("%s", e)
    sys.exit(128 + signal.SIGTERM)


if __name__ == "__main__":
  # Flags are defined here, not at import, so that other CLIs can import this module.
  cli.define_config()
  flags.DEFINE_string(
    "workdir",
    None,
    "Directory for metrics, logs and checkpoints (local, "
    "relative to the current directory, or gs://).",
  )
  flags.mark_flags_as_required(["config", "workdir"])
  cli.run(main)
