"""phi_jax.likelihood: batched, padded continuation log-probabilities equal an unbatched forward
pass over each pair alone."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest

from phi_jax import configs, likelihood
from phi_jax import model as model_lib


@pytest.fixture(scope="module")
def tiny():
  config = dataclasses.replace(
    model_lib.as_model_config(configs.get("tiny")), vocab_size=64, max_len=64
  )
  return config, model_lib.init(config, jax.random.key(0))


def _reference(config, params, prompt, continuation):
  tokens = np.array([prompt + continuation], np.int32)
  logp = jax.nn.log_softmax(model_lib.forward(config, params, tokens)[0], axis=-1)
  return sum(float(logp[len(prompt) - 1 + k, t]) for k, t in enumerate(continuation))


def test_batched_padded_scores_equal_each_pair_alone(tiny):
  config, params = tiny
  rng = np.random.default_rng(0)
  pairs = [
    (rng.integers(1, 64, n).tolist(), rng.integers(1, 64, m).tolist())
    for n, m in [(1, 1), (5, 9), (20, 3), (2, 30), (11, 11)]
  ]
  want = [_reference(config, params, p, c) for p, c in pairs]
  for batch_size in (1, 3, 8):  # a full batch, a part-filled last batch, one larger than all
    got = likelihood.continuation_logprobs(config, params, pairs, batch_size=batch_size)
    assert [n for _, n in got] == [len(c) for _, c in pairs]
    np.testing.assert_allclose([lp for lp, _ in got], want, rtol=1e-4, atol=1e-4)
  # A checkpoint trained with a TPU-only kernel scores anywhere, at any length.
  splash = dataclasses.replace(config, attention="splash")
  got = likelihood.continuation_logprobs(splash, params, pairs, batch_size=8)
  np.testing.assert_allclose([lp for lp, _ in got], want, rtol=1e-4, atol=1e-4)


def test_long_prompts_lose_their_beginning_and_long_continuations_are_refused(tiny):
  config, params = tiny
  prompt, continuation = list(range(1, 61)), [5, 6, 7, 8, 9, 10, 11, 12]
  (got,) = likelihood.continuation_logprobs(config, params, [(prompt, continuation)])
  np.testing.assert_allclose(got[0], _reference(config, params, prompt[-56:], continuation), 1e-4)
  with pytest.raises(ValueError, match=r"pair 0's continuation has 64 tokens.*max_len=64"):
    likelihood.continuation_logprobs(config, params, [([1], [2] * 64)])
  with pytest.raises(ValueError, match="pair 0 has an empty prompt"):
    likelihood.continuation_logprobs(config, params, [([], [2])])


class CharVocab:
  """One id per character (1..63), end-of-text 0."""

  eos_id = 0

  def encode(self, text):
    return [1 + ord(ch) % 63 for ch in text]


def test_texts_are_tokenized_apart_and_end_of_text_is_scored_on_request(tiny, monkeypatch):
  config, params = tiny
  from phi_jax import vocabularies

  monkeypatch.setattr(vocabularies, "eot_id", lambda vocab: vocab.eos_id)
  vocab = CharVocab()
  plain, with_eos = (
    likelihood.score_texts(config, params, vocab, [("def f", "(x): pass")], append_eos=eos)[0]
    for eos in (False, True)
  )
  assert plain["tokens"] == 9 and with_eos["tokens"] == 10
  want = _reference(config, params, vocab.encode("def f"), vocab.encode("(x): pass") + [0])
  np.testing.assert_allclose(with_eos["logprob"], want, rtol=1e-4)
  assert with_eos["loss"] == pytest.approx(-with_eos["logprob"] / 10)
  assert with_eos["mean_logprob"] == pytest.approx(-with_eos["loss"])
  with pytest.raises(ValueError, match="empty continuation"):
    likelihood.score_texts(config, params, vocab, [("a", "")])


def test_solution_loss_is_token_weighted_and_skips_what_cannot_be_scored(tiny, monkeypatch):
  from phi_jax import evaluate
  from phi_jax.evaluation import benchmarks

  config, params = tiny
  monkeypatch.setattr(likelihood, "from_checkpoint", lambda directory, step: (config, params))
  vocab = CharVocab()

  def problem(prompt, solution):
    return benchmarks.Problem("t", prompt, "", "f", solution, ())

  chosen = [
    problem("def f(x):\n", "  return x\n"),
    problem("def g():\n", "  pass\n"),
    problem("def h():\n", "x" * 64),  # does not fit max_len=64
    problem("def e():\n", ""),  # nothing to score
  ]
  got = evaluate.solution_loss(configs.get("tiny"), chosen, "unused", vocab, None)
  scored = [
    _reference(config, params, vocab.encode(p.prompt), vocab.encode(p.canonical_solution))
    for p in chosen[:2]
  ]
  tokens = len("  return x\n") + len("  pass\n")
  assert got["solution_tokens"] == tokens and got["solutions_skipped"] == 2
  assert got["solution_loss"] == pytest.approx(-sum(scored) / tokens, rel=1e-4)
