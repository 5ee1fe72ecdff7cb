"""The paper's optimizer: AdamW, linear warmup then linear decay (or cosine, MAmmoTH's),
global-norm clipping.

The paper gives max LR, warmup, weight decay and steps; betas, eps, clipping and the final LR
are ours (config fields `optim.*`, defaults documented in configs/).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import optax

SCHEDULES = ("linear", "cosine")
# Decay matrices (kernels, embeddings); not biases or LayerNorm scales.
_DECAYED_LEAVES = ("kernel", "embedding")


def learning_rate_schedule(optim: Mapping[str, Any]) -> optax.Schedule:
  """0 -> learning_rate over warmup_steps, then to final_lr_ratio * lr at decay_steps, linearly
  or along a half cosine (`schedule`)."""
  peak = optim["learning_rate"]
  warmup = optax.linear_schedule(0.0, peak, max(int(optim["warmup_steps"]), 1))
  length = max(int(optim["decay_steps"]) - int(optim["warmup_steps"]), 1)
  if optim.get("schedule", "linear") == "cosine":
    decay = optax.cosine_decay_schedule(peak, length, alpha=optim["final_lr_ratio"])
  else:
    decay = optax.linear_schedule(peak, peak * optim["final_lr_ratio"], length)
  return optax.join_schedules([warmup, decay], [int(optim["warmup_steps"])])


def weight_decay_mask(params: Any) -> Any:
  return jax.tree_util.tree_map_with_path(
    lambda path, _: getattr(path[-1], "key", None) in _DECAYED_LEAVES, params
  )


def make_optimizer(optim: Mapping[str, Any]) -> optax.GradientTransformation:
  chain = []
  if optim["grad_clip_norm"] > 0:
    chain.append(optax.clip_by_global_norm(optim["grad_clip_norm"]))
  chain.append(
    optax.adamw(
      learning_rate_schedule(optim),
      b1=optim["b1"],
      b2=optim["b2"],
      eps=optim["eps"],
      weight_decay=optim["weight_decay"],
      mask=weight_decay_mask,
    )
  )
  return optax.chain(*chain)
