"""Evaluation during training: held-out loss and HumanEval pass@1 rows in metrics.jsonl."""

from __future__ import annotations

import json
import math

import jax
import numpy as np
import optax
import pytest

from data_pipeline import tokenizer as tokenizer_lib
from phi_jax import configs, train, train_eval
from phi_jax import model as model_lib
from phi_jax.evaluation import benchmarks, completions


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
  """A small SentencePiece model trained on HumanEval's prompts and solutions."""
  texts = [p.prompt + p.canonical_solution for p in benchmarks.humaneval()]
  return tokenizer_lib.train_sentencepiece(texts, tmp_path_factory.mktemp("spm"), vocab_size=400)


def _config(tokenizer):
  cfg = configs.get("tiny")
  cfg.train.update(global_batch=8, seq_len=32, steps=4, log_every=2)
  cfg.optim.update(warmup_steps=2, decay_steps=10)
  cfg.eval.update(
    every_steps=2,
    loss_batches=2,
    humaneval_in_training=True,
    max_problems=2,
    tokenizer=str(tokenizer),
  )
  cfg.sampling.max_new_tokens = 16
  cfg.logging.update(tensorboard=False, progress_bar=False)
  return cfg


def test_training_logs_heldout_loss_and_humaneval_pass_at_1(tokenizer, tmp_path, monkeypatch):
  """Two evaluations in a 4-step run. The first scores the model's own greedy completions (an
  untrained model: pass@1 = 0), the second the canonical solutions in their place (pass@1 = 1:
  the scoring is real). Each eval_loss is checked against a plain forward pass on the same
  held-out batches and params."""
  cfg = _config(tokenizer)
  config = model_lib.as_model_config(cfg)
  sampled, expected_losses = [], []
  real_sample, real_call = completions.sample, train_eval.Evaluator.__call__

  def sample(decoder, vocab, problems, **kwargs):
    sampled.append(real_sample(decoder, vocab, problems, **kwargs))
    if len(sampled) == 1:
      return sampled[-1]
    return [{"task_id": p.task_id, "completion": p.canonical_solution} for p in problems]

  forward = jax.jit(lambda params, tokens: model_lib.forward(config, params, tokens))

  def call(evaluator, params):
    expected_losses.append(
      float(
        np.mean(
          [
            optax.softmax_cross_entropy_with_integer_labels(
              forward(params, b["inputs"]), b["targets"]
            )
            for b in evaluator.heldout
          ]
        )
      )
    )
    return real_call(evaluator, params)

  monkeypatch.setattr(completions, "sample", sample)
  monkeypatch.setattr(train_eval.Evaluator, "__call__", call)
  train.run(cfg, tmp_path)
  rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  evals = [r for r in rows if "eval_loss" in r]
  assert [r["step"] for r in evals] == [2, 4]
  assert [r["step"] for r in rows if "loss" in r] == [2, 4]  # training rows are unchanged
  assert [r["humaneval_pass@1"] for r in evals] == [0.0, 1.0]
  for row, expected in zip(evals, expected_losses):
    assert row["eval_loss"] == pytest.approx(expected, rel=1e-4)
    assert abs(row["eval_loss"] - math.log(8192)) < 1.0  # an untrained model: ~uniform
  assert [s["task_id"] for s in sampled[0]] == ["HumanEval/0", "HumanEval/1"]
  assert all(isinstance(s["completion"], str) for s in sampled[0])


def test_heldout_batches_are_not_training_batches(tokenizer):
  cfg = _config(tokenizer)
  heldout = train_eval.heldout_config(cfg)
  assert heldout.data.split == "validation" and heldout.train.seed != cfg.train.seed
  cfg.eval.update(every_steps=0)
  assert train_eval.make_evaluator(cfg, trainer=None) is None
