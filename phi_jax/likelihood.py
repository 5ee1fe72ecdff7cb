"""How likely a model finds a continuation of a prompt: the summed log-probability of the
continuation's tokens, each given the prompt and the tokens before it. Self-curation by
likelihood (data_pipeline.backtranslation) scores instruction pairs with it; the per-token loss
of reference solutions given their prompts is the same number with the sign turned.

    config, params = likelihood.from_checkpoint("runs/tiny/finetune")
    rows = likelihood.score_texts(config, params, vocab, [("def add(a, b):\\n", "  return a + b")])
    rows[0]["mean_logprob"], rows[0]["loss"]    # nats per continuation token

Rows are batched (`batch_size`, the last batch padded with empty rows) and right-padded to one
of a few lengths (powers of two), so that a run compiles a handful of shapes, not one per batch;
causal attention keeps padding out of every real token's result. A prompt too long for the
model loses its beginning; a continuation that does not fit with at least one prompt token is an
error.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from phi_jax import checkpoint, files, vocabularies
from phi_jax import model as model_lib

_SHORTEST = 16  # the smallest padded length


def from_checkpoint(directory: str, step: int | None = None) -> tuple[model_lib.ModelConfig, Any]:
  """(model config, params) of a checkpoint workdir (its newest intact step, or `step`)."""
  return checkpoint.restore_params(files.existing(directory, "checkpoint"), step)


@functools.partial(jax.jit, static_argnums=0)
def _token_logprobs(config: model_lib.ModelConfig, params: Any, tokens: jax.Array) -> jax.Array:
  """[batch, length - 1] log-probability of each token after the first, given those before."""
  segments = (tokens >= 0).astype(jnp.int32)
  logits = model_lib.forward(config, params, jnp.maximum(tokens, 0), segment_ids=segments)
  logp = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32), axis=-1)
  targets = jnp.maximum(tokens[:, 1:], 0)
  return jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]


def _padded_length(length: int, max_len: int) -> int:
  return min(max(_SHORTEST, 1 << (length - 1).bit_length()), max_len)


def continuation_logprobs(
  config: Any,
  params: Any,
  pairs: Sequence[tuple[Sequence[int], Sequence[int]]],
  *,
  batch_size: int = 8,
  max_len: int | None = None,
) -> list[tuple[float, int]]:
  """(summed log-probability, token count) of each pair's continuation given its prompt, in the
  order given. Pairs are (prompt ids, continuation ids); a prompt needs at least one token."""
  config = model_lib.portable(config)
  max_len = int(max_len or config.max_len)
  if batch_size < 1:
    raise ValueError(f"batch_size={batch_size} must be >= 1")
  rows = []
  for i, (prompt, continuation) in enumerate(pairs):
    prompt, continuation = list(prompt), list(continuation)
    if not prompt:
      raise ValueError(f"pair {i} has an empty prompt: the first token needs one to condition on")
    if len(continuation) + 1 > max_len:
      raise ValueError(
        f"pair {i}'s continuation has {len(continuation)} tokens: with one prompt token it "
        f"exceeds max_len={max_len}; shorten it or score it in pieces"
      )
    rows.append((prompt[-(max_len - len(continuation)) :], continuation))
  # Longest first, so that a batch's rows have similar lengths and padding is small.
  order = sorted(range(len(rows)), key=lambda i: -(len(rows[i][0]) + len(rows[i][1])))
  results: list[tuple[float, int]] = [(0.0, 0)] * len(rows)
  for first in range(0, len(order), batch_size):
    chosen = order[first : first + batch_size]
    longest = max(len(rows[i][0]) + len(rows[i][1]) for i in chosen)
    tokens = np.full((batch_size, _padded_length(longest, max_len)), -1, np.int32)
    for row, i in enumerate(chosen):
      prompt, continuation = rows[i]
      tokens[row, : len(prompt) + len(continuation)] = prompt + continuation
    logprobs = np.asarray(_token_logprobs(config, params, jnp.asarray(tokens)))
    for row, i in enumerate(chosen):
      prompt, continuation = rows[i]
      # Token t + 1 is predicted at position t: the continuation's, from the prompt's last on.
      span = logprobs[row, len(prompt) - 1 : len(prompt) - 1 + len(continuation)]
      results[i] = (float(span.sum()), len(continuation))
  return results


def score_texts(
  config: Any,
  params: Any,
  vocab: Any,
  pairs: Sequence[tuple[str, str]],
  *,
  batch_size: int = 8,
  append_eos: bool = False,
) -> list[dict]:
  """Per (prompt, continuation) text pair: `logprob` (summed), `tokens`, `mean_logprob` and
  `loss` (its negative, nats per token). Prompt and continuation are tokenized apart, so the
  boundary is exact; `append_eos` scores end-of-text after the continuation too."""
  eos = [vocabularies.eot_id(vocab)] if append_eos else []
  ids = [(list(vocab.encode(p)), list(vocab.encode(c)) + eos) for p, c in pairs]
  empty = [i for i, (_, continuation) in enumerate(ids) if not continuation]
  if empty:
    raise ValueError(f"pairs {empty[:5]} have an empty continuation: nothing to score")
  scored = continuation_logprobs(config, params, ids, batch_size=batch_size)
  return [{"logprob": lp, "tokens": n, "mean_logprob": lp / n, "loss": -lp / n} for lp, n in scored]
