"""Evaluation during training: held-out loss and a HumanEval pass@1 subset, every N steps.

    evaluator = train_eval.make_evaluator(cfg, trainer)   # None when eval.every_steps == 0
    if evaluator and evaluator.due(step):
      writer.write(step, evaluator(state.params))

Metrics: `eval_loss` (mean token cross-entropy over `eval.loss_batches` held-out global batches:
the validation split of the seqio mixture, or for synthetic data the stream of another seed,
fixed for the whole run), `humaneval_pass@1` (with `eval.humaneval_in_training`: greedy
completions of the first `eval.max_problems` HumanEval problems, scored in the sandbox) and
`eval_time_s`.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import time
from typing import Any

import jax
import jax.numpy as jnp

from phi_jax import decode, input_pipeline, sharding, train_step
from phi_jax import model as model_lib
from phi_jax.evaluation import benchmarks, completions, sandbox, scoring


def heldout_config(cfg: Any) -> Any:
  """The run's config reading held-out data: the validation split; synthetic data from another
  seed (its stream is a function of (seed, step))."""
  heldout = cfg.copy_and_resolve_references()
  with heldout.unlocked():
    heldout.data.split = "validation"
    heldout.train.seed = int(cfg.train.seed) + 1_000_003
  return heldout


def _mean_loss(model_config, micro_batches, params, batch):
  def micro(total, piece):
    loss, weight = train_step.token_loss(model_config, params, piece, None, True)
    return (total[0] + loss, total[1] + weight), None

  (loss, weight), _ = jax.lax.scan(
    micro, (jnp.zeros(()), jnp.zeros(())), train_step.split_micro_batches(batch, micro_batches)
  )
  return loss, weight


class Evaluator:
  def __init__(self, cfg: Any, trainer: train_step.Trainer):
    self.every = int(cfg.eval.every_steps)
    self.model_config = model_lib.as_model_config(cfg)
    self.mesh = trainer.mesh
    batches = input_pipeline.batches(heldout_config(cfg), trainer.batch_sharding, 0)
    self.heldout = list(itertools.islice(batches, int(cfg.eval.loss_batches)))
    self.loss = jax.jit(
      functools.partial(_mean_loss, self.model_config, trainer.micro_batches),
      in_shardings=(trainer.state_sharding.params, trainer.batch_sharding),
    )
    self.problems = []
    if cfg.eval.humaneval_in_training:
      from phi_jax import vocabularies  # TensorFlow + seqio: only runs that decode text load them

      self.problems = benchmarks.humaneval()[: int(cfg.eval.max_problems) or None]
      sandbox.check_available(cfg.eval.isolation)
      try:
        self.vocab = vocabularies.for_config(cfg)
      except FileNotFoundError as exc:
        raise FileNotFoundError(
          f"eval.humaneval_in_training needs a tokenizer ({exc}): set eval.tokenizer or "
          "data.dir, or eval.humaneval_in_training=False"
        ) from None
      self.sampling = dataclasses.replace(
        decode.sampling_config(cfg, vocabularies.eot_id(self.vocab)), temperature=0.0
      )
    self.eval_cfg = cfg.eval

  def due(self, step: int) -> bool:
    return step % self.every == 0

  def __call__(self, params: Any) -> dict[str, float]:
    start = time.perf_counter()
    metrics = {}
    if self.heldout:
      with sharding.activation_rules(self.mesh):
        sums = [self.loss(params, batch) for batch in self.heldout]
      loss, weight = (sum(float(s[i]) for s in sums) for i in (0, 1))
      metrics["eval_loss"] = loss / max(weight, 1.0)
    if self.problems:
      decoder = decode.Decoder(self.model_config, params, self.sampling, self.mesh)
      samples = completions.sample(
        decoder, self.vocab, self.problems, batch_size=int(self.eval_cfg.batch_size)
      )
      scored = scoring.score_with_config(samples, self.problems, self.eval_cfg)
      metrics["humaneval_pass@1"] = scoring.summarize(scored, ks=(1,))["pass@1"]
    metrics["eval_time_s"] = time.perf_counter() - start
    return metrics


def make_evaluator(cfg: Any, trainer: train_step.Trainer) -> Evaluator | None:
  """The run's evaluator, or None when `eval.every_steps` is 0."""
  return Evaluator(cfg, trainer) if int(cfg.eval.every_steps) > 0 else None
