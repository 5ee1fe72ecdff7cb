"""Next-token cross-entropy of the lm_head, computed a chunk of positions at a time.

The logits of a whole batch ([batch, length, vocab] fp32: 0.5 GB for 8 x 512 x 32000) are the
largest tensor of a step; materializing them makes the softmax, its gradient, the bias gradient
and the two lm_head matmuls memory-bound. Here a scan over chunks of positions computes logits,
loss and (when differentiated) the gradients of one chunk at a time, so only [batch, chunk, vocab]
is ever live. The train step differentiates a weighted *sum* of token losses, whose gradient is
known in the forward pass up to one scalar cotangent: the custom VJP computes it there, while the
chunk's logits are at hand, instead of saving them or recomputing them in the backward pass.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp


def _chunks(x: jax.Array, chunk: int) -> jax.Array:
  """[batch, length, ...] -> [length / chunk, batch, chunk, ...] (scan over the leading axis)."""
  batch, length = x.shape[:2]
  return jnp.swapaxes(x.reshape(batch, length // chunk, chunk, *x.shape[2:]), 0, 1)


def _unchunk(x: jax.Array) -> jax.Array:
  x = jnp.swapaxes(x, 0, 1)
  return x.reshape(x.shape[0], x.shape[1] * x.shape[2], *x.shape[3:])


def _logits(hidden, kernel, bias):
  logits = jnp.einsum(
    "bld,dv->blv", hidden, kernel.astype(hidden.dtype), preferred_element_type=jnp.float32
  )
  return logits + bias.astype(jnp.float32)


def _log_normalizer_and_loss(logits, targets):
  """([...] log-sum-exp, [...] -log softmax(logits)[target], [..., vocab] target one-hot). The
  target logit is picked with a one-hot select, not a gather, so that its gradient fuses
  elementwise with the softmax's instead of being a scatter over [tokens, vocab]."""
  is_target = jnp.arange(logits.shape[-1]) == targets[..., None]
  log_normalizer = jax.nn.logsumexp(logits, axis=-1)
  loss = log_normalizer - jnp.sum(jnp.where(is_target, logits, 0.0), axis=-1)
  return log_normalizer, loss, is_target


def cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """Per-token -log softmax(logits)[target]."""
  return _log_normalizer_and_loss(logits, targets)[1]


def _scan_chunks(body, init, hidden, targets, weights, chunk):
  return jax.lax.scan(
    body, init, (_chunks(hidden, chunk), _chunks(targets, chunk), _chunks(weights, chunk))
  )


def _weighted_loss(hidden, kernel, bias, targets, weights, chunk):
  def body(total, xs):
    h, t, w = xs
    return total + jnp.sum(cross_entropy(_logits(h, kernel, bias), t) * w), None

  return _scan_chunks(body, jnp.zeros((), jnp.float32), hidden, targets, weights, chunk)[0]


def _weighted_loss_and_grads(hidden, kernel, bias, targets, weights, chunk):
  """(sum of w * loss, per-token losses, and d sum / d (hidden, kernel, bias))."""

  def body(carry, xs):
    total, d_kernel, d_bias = carry
    h, t, w = xs
    logits = _logits(h, kernel, bias)
    log_normalizer, losses, is_target = _log_normalizer_and_loss(logits, t)
    d_logits = ((jnp.exp(logits - log_normalizer[..., None]) - is_target) * w[..., None]).astype(
      h.dtype
    )  # w * (softmax - onehot(target))
    d_hidden = jnp.einsum(
      "blv,dv->bld", d_logits, kernel.astype(h.dtype), preferred_element_type=jnp.float32
    ).astype(h.dtype)
    d_kernel += jnp.einsum("bld,blv->dv", h, d_logits, preferred_element_type=jnp.float32)
    # The bias gradient as a matmul with ones: XLA:CPU's column sum of [tokens, vocab] is slower.
    d_bias += jnp.einsum(
      "bl,blv->v", jnp.ones(h.shape[:2], h.dtype), d_logits, preferred_element_type=jnp.float32
    )
    return (total + jnp.sum(losses * w), d_kernel, d_bias), (losses, d_hidden)

  zeros = (
    jnp.zeros((), jnp.float32),
    jnp.zeros(kernel.shape, jnp.float32),
    jnp.zeros(bias.shape, jnp.float32),
  )
  (total, d_kernel, d_bias), (losses, d_hidden) = _scan_chunks(
    body, zeros, hidden, targets, weights, chunk
  )
  return total, _unchunk(losses), _unchunk(d_hidden), d_kernel, d_bias


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def _chunked(hidden, kernel, bias, targets, weights, chunk):
  return _weighted_loss(hidden, kernel, bias, targets, weights, chunk)


def _chunked_fwd(hidden, kernel, bias, targets, weights, chunk):
  total, losses, d_hidden, d_kernel, d_bias = _weighted_loss_and_grads(
    hidden, kernel, bias, targets, weights, chunk
  )
  return total, (losses, d_hidden, d_kernel.astype(kernel.dtype), d_bias.astype(bias.dtype))


def _chunked_bwd(chunk, residuals, d_total):
  del chunk
  scale = lambda grad: (grad * d_total).astype(grad.dtype)
  losses, d_hidden, d_kernel, d_bias = residuals
  return scale(d_hidden), scale(d_kernel), scale(d_bias), None, scale(losses)


_chunked.defvjp(_chunked_fwd, _chunked_bwd)


def lm_head_cross_entropy(
  hidden: jax.Array, lm_head: dict, targets: jax.Array, weights: jax.Array, chunk: int
) -> jax.Array:
  """sum(weights * -log softmax(hidden @ kernel + bias)[target]), a scalar fp32.

  hidden: final-LayerNorm states [batch, length, d_model]; lm_head: {"kernel", "bias"} params;
  targets: [batch, length] ints; weights: [batch, length] floats; chunk: positions per chunk
  (a divisor of length; the whole length = one chunk).
  """
  length = hidden.shape[1]
  if chunk <= 0 or length % chunk:
    raise ValueError(
      f"train.loss_chunk={chunk} must be a positive divisor of the sequence length {length}"
    )
  return _chunked(
    hidden, lm_head["kernel"], lm_head["bias"], targets, weights.astype(jnp.float32), chunk
  )
