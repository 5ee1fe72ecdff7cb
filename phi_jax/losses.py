"""Next-token cross-entropy of the lm_head, computed a chunk of positions at a time.

The logits of a whole batch ([batch, length, vocab] fp32: 0.5 GB for 8 x 512 x 32000) are the
largest tensor of a step; materializing them makes the softmax, its gradient, the bias gradient
and the two lm_head matmuls memory-bound. Here a scan over chunks of positions computes logits,
log-normalizer and loss per chunk, and a custom VJP recomputes each chunk's logits in the
backward pass, so only [batch, chunk, vocab] is ever live (cache-sized on CPU, bounded HBM on
TPU) at the price of one extra lm_head matmul.
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
  logits = jnp.einsum("bld,dv->blv", hidden, kernel.astype(hidden.dtype),
                      preferred_element_type=jnp.float32)
  return logits + bias.astype(jnp.float32)


def _is_target(logits, targets):
  return jnp.arange(logits.shape[-1]) == targets[..., None]


def cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """Per-token -log softmax(logits)[target]. The target logit is picked with a one-hot select,
  not a gather, so that its gradient fuses elementwise with the softmax's instead of being a
  scatter over [tokens, vocab]."""
  log_normalizer = jax.nn.logsumexp(logits, axis=-1)
  return log_normalizer - jnp.sum(jnp.where(_is_target(logits, targets), logits, 0.0), axis=-1)


def _forward(hidden, kernel, bias, targets, chunk):
  """(losses [batch, length], log-normalizers [batch, length])."""
  def body(_, xs):
    h, t = xs
    logits = _logits(h, kernel, bias)
    return None, (cross_entropy(logits, t), jax.nn.logsumexp(logits, axis=-1))
  _, (losses, log_normalizers) = jax.lax.scan(
      body, None, (_chunks(hidden, chunk), _chunks(targets, chunk)))
  return _unchunk(losses), _unchunk(log_normalizers)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _chunked(hidden, kernel, bias, targets, chunk):
  return _forward(hidden, kernel, bias, targets, chunk)[0]


def _chunked_fwd(hidden, kernel, bias, targets, chunk):
  losses, log_normalizers = _forward(hidden, kernel, bias, targets, chunk)
  return losses, (hidden, kernel, bias, targets, log_normalizers)


def _chunked_bwd(chunk, residuals, d_losses):
  hidden, kernel, bias, targets, log_normalizers = residuals

  def body(grads, xs):
    d_kernel, d_bias = grads
    h, t, lse, g = xs
    logits = _logits(h, kernel, bias)
    # d loss / d logits = softmax - onehot(target), times the incoming per-token cotangent.
    d_logits = (jnp.exp(logits - lse[..., None]) - _is_target(logits, t)) * g[..., None]
    d_hidden = jnp.einsum("blv,dv->bld", d_logits.astype(h.dtype), kernel.astype(h.dtype),
                          preferred_element_type=jnp.float32).astype(h.dtype)
    d_kernel += jnp.einsum("bld,blv->dv", h, d_logits.astype(h.dtype),
                           preferred_element_type=jnp.float32)
    d_bias += jnp.sum(d_logits, axis=(0, 1))
    return (d_kernel, d_bias), d_hidden

  zeros = (jnp.zeros(kernel.shape, jnp.float32), jnp.zeros(bias.shape, jnp.float32))
  (d_kernel, d_bias), d_hidden = jax.lax.scan(body, zeros, (
      _chunks(hidden, chunk), _chunks(targets, chunk), _chunks(log_normalizers, chunk),
      _chunks(d_losses.astype(jnp.float32), chunk)))
  return (_unchunk(d_hidden), d_kernel.astype(kernel.dtype), d_bias.astype(bias.dtype), None)


_chunked.defvjp(_chunked_fwd, _chunked_bwd)


def lm_head_cross_entropy(hidden: jax.Array, lm_head: dict, targets: jax.Array,
                          chunk: int) -> jax.Array:
  """Per-token -log softmax(hidden @ kernel + bias)[target], [batch, length] fp32.

  hidden: final-LayerNorm states [batch, length, d_model]; lm_head: {"kernel", "bias"} params;
  chunk: positions per chunk (a divisor of length; the whole length = one chunk).
  """
  length = hidden.shape[1]
  if chunk <= 0 or length % chunk:
    raise ValueError(f"train.loss_chunk={chunk} must be a positive divisor of the sequence "
                     f"length {length}")
  return _chunked(hidden, lm_head["kernel"], lm_head["bias"], targets, chunk)
