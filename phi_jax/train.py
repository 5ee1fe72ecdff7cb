"""The trainer: `python -m phi_jax.train --config=configs/tiny.py --workdir=DIR [--config.x=y]`.

From Python: `phi_jax.train.run(phi_jax.configs.get("tiny"), "runs/tiny")`.
Writes DIR/metrics.jsonl (one JSON object per logged step), DIR/tensorboard/, and the final
params as an orbax checkpoint under DIR/checkpoints/.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import jax
from absl import app, flags, logging
from ml_collections import config_flags
from tqdm import tqdm

from phi_jax import checkpoint
from phi_jax import distributed
from phi_jax import input_pipeline
from phi_jax import metrics as metrics_lib
from phi_jax import model as model_lib
from phi_jax import sharding
from phi_jax import train_step
from phi_jax.evaluation import in_training


def run(cfg: Any, workdir: str | Path) -> dict:
  """Trains `cfg.train.steps` steps; returns the last logged metrics."""
  distributed.initialize(cfg.distributed)
  workdir = Path(workdir)
  model_config = model_lib.as_model_config(cfg)
  mesh = sharding.make_mesh(cfg.mesh)
  trainer = train_step.make_trainer(cfg, mesh)
  state = trainer.init_state(jax.random.key(int(cfg.train.seed)))
  start_step, steps, log_every = int(state.step), int(cfg.train.steps), int(cfg.train.log_every)
  batches = input_pipeline.batches(cfg, trainer.batch_sharding, start_step)
  evaluator = in_training.make_evaluator(cfg, trainer)  # None unless eval.every_steps > 0

  tokens_per_step = int(cfg.train.global_batch) * int(cfg.train.seq_len)
  flops_per_step = metrics_lib.flops_per_token(model_config, int(cfg.train.seq_len)) * tokens_per_step
  peak = metrics_lib.peak_flops_per_device(model_config.dtype) * jax.device_count()
  writer = metrics_lib.Writer(workdir, tensorboard=cfg.logging.tensorboard)
  progress = tqdm(total=steps, initial=start_step, desc="train", unit="step",
                  disable=not cfg.logging.progress_bar or jax.process_index() != 0)
  last: dict = {}
  window_start, window_steps = time.perf_counter(), 0
  for step in range(start_step, steps):
    state, step_metrics = trainer.step(state, next(batches))
    window_steps += 1
    progress.update(1)
    if (step + 1) % log_every == 0 or step + 1 == steps:
      step_metrics = {k: float(v) for k, v in jax.device_get(step_metrics).items()}  # syncs
      step_time = (time.perf_counter() - window_start) / window_steps
      last = {
          "loss": step_metrics["loss"], "learning_rate": step_metrics["learning_rate"],
          "grad_norm": step_metrics["grad_norm"], "step_time_s": step_time,
          "tokens_per_second": tokens_per_step / step_time,
          "mfu": flops_per_step / step_time / peak,
      }
      writer.write(step + 1, last)
      progress.set_postfix(loss=f"{last['loss']:.4f}", refresh=False)
      window_start, window_steps = time.perf_counter(), 0
    if evaluator is not None and evaluator.due(step + 1):
      writer.write(step + 1, evaluator(state.params))
      window_start, window_steps = time.perf_counter(), 0  # eval time is not step time
  progress.close()
  writer.close()
  checkpoint.save_params(workdir, model_config, state.params, step=steps)
  return last


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # orbax/absl INFO lines would drown the progress bar
  run(flags.FLAGS.config, flags.FLAGS.workdir)


if __name__ == "__main__":
  # Flags are defined here, not at import, so that other CLIs can import this module.
  config_flags.DEFINE_config_file("config", None, "Path to a configs/*.py file.", lock_config=True)
  flags.DEFINE_string("workdir", None, "Directory for metrics, logs and checkpoints.")
  flags.mark_flags_as_required(["config", "workdir"])
  app.run(main)
