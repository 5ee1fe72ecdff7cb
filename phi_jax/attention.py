"""Swappable causal self-attention kernels behind one interface.

Every function takes query [batch, length, heads, head_dim], key and value
[batch, length, kv_heads, head_dim] (kv_heads divides heads), and keyword arguments
`segment_ids` ([batch, length] ints or None: tokens attend only within their own segment),
`dropout_rate` and `dropout_rng`; it returns [batch, length, heads, head_dim] in the query dtype.
The model picks one by name (`config.model.attention`).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp


def attention_mask(segment_ids: jax.Array | None, length: int) -> jax.Array:
  """Boolean [batch or 1, 1, length, length]: causal, and within one segment when given."""
  causal = jnp.tril(jnp.ones((length, length), bool))[None, None]
  if segment_ids is None:
    return causal
  same_segment = segment_ids[:, None, :, None] == segment_ids[:, None, None, :]
  return causal & same_segment


def masked_attention(query, key, value, mask, *, dropout_rate=0.0, dropout_rng=None):
  """Einsum attention under an explicit boolean `mask` broadcastable to [batch, 1, q_len, k_len]
  (query and key lengths may differ); scores and softmax in fp32 whatever the compute dtype."""
  return heads_first_attention(
    query,
    key.swapaxes(1, 2),
    value.swapaxes(1, 2),
    mask,
    dropout_rate=dropout_rate,
    dropout_rng=dropout_rng,
  )


def heads_first_attention(query, key, value, mask, *, dropout_rate=0.0, dropout_rng=None):
  """`masked_attention` with key and value laid out heads first, [batch, kv_heads, k_len,
  head_dim], as a KV cache stores them: each (row, head) is then one contiguous [k_len, head_dim]
  matrix that the score and output matmuls read in place, where the [batch, k_len, kv_heads,
  head_dim] layout needs a transposed copy of the keys and values first."""
  batch, q_len, heads, head_dim = query.shape
  groups = heads // key.shape[1]
  query = query.reshape(batch, q_len, key.shape[1], groups, head_dim)
  scores = jnp.einsum("bqhgd,bhkd->bhgqk", query, key, preferred_element_type=jnp.float32)
  scores = scores * (head_dim**-0.5)
  scores = jnp.where(mask[:, :, None], scores, jnp.finfo(jnp.float32).min)  # over the group axis
  probs = jax.nn.softmax(scores, axis=-1)
  if dropout_rate > 0.0:
    keep = jax.random.bernoulli(dropout_rng, 1.0 - dropout_rate, probs.shape)
    probs = jnp.where(keep, probs / (1.0 - dropout_rate), 0.0)
  out = jnp.einsum("bhgqk,bhkd->bqhgd", probs.astype(value.dtype), value)
  return out.reshape(batch, q_len, heads, head_dim)


def xla_attention(query, key, value, *, segment_ids=None, dropout_rate=0.0, dropout_rng=None):
  """Plain einsum attention (`masked_attention` under the causal/segment mask)."""
  return masked_attention(
    query,
    key,
    value,
    attention_mask(segment_ids, query.shape[1]),
    dropout_rate=dropout_rate,
    dropout_rng=dropout_rng,
  )


def _dot_product_attention(
  implementation, query, key, value, *, segment_ids=None, dropout_rate=0.0, dropout_rng=None
):
  del dropout_rng
  name = implementation or "fused"
  if dropout_rate > 0.0:
    raise ValueError(
      f"attention='{name}' has no attention dropout; set model.attn_dropout=0 "
      "or use model.attention='xla'"
    )
  mask = None if segment_ids is None else attention_mask(segment_ids, query.shape[1])
  return jax.nn.dot_product_attention(
    query, key, value, mask=mask, is_causal=segment_ids is None, implementation=implementation
  )


def fused_attention(query, key, value, **kwargs):
  """`jax.nn.dot_product_attention` as XLA chooses to compile it."""
  return _dot_product_attention(None, query, key, value, **kwargs)


def cudnn_attention(query, key, value, **kwargs):
  """`jax.nn.dot_product_attention` through cuDNN's flash-attention kernels: NVIDIA GPUs only,
  bf16 or fp16 inputs; the scores are never materialized, forward or backward."""
  return _dot_product_attention("cudnn", query, key, value, **kwargs)


# Query rows per block of `blockwise_attention`.
BLOCK_SIZE = 128


def _blocks(length: int, block_size: int) -> list[tuple[int, int]]:
  return [(start, min(start + block_size, length)) for start in range(0, length, block_size)]


def _block_mask(segment_ids, start: int, end: int) -> jax.Array:
  """Boolean [batch or 1, 1, 1, end - start, end]: query rows start..end-1 against keys 0..end-1
  (only the diagonal square can be causally masked: earlier keys are all in the past)."""
  q_pos = jnp.arange(start, end)[:, None]
  mask = (jnp.arange(end)[None, :] <= q_pos)[None, None, None]
  if segment_ids is not None:
    same = segment_ids[:, start:end, None] == segment_ids[:, None, :end]
    mask = mask & same[:, None, None]
  return mask


# Inside the kernel, heads lead: query [B, KV, G, T, D], key and value [B, KV, T, D], so every
# block's matmuls are plain batched matmuls over (B, KV) without per-block transposes.


def _blockwise_forward(query, key, value, segment_ids, block_size):
  """(out [B, KV, G, T, D], log-sum-exp [B, KV, G, T] fp32)."""
  scale = query.shape[-1] ** -0.5
  outs, lses = [], []
  for start, end in _blocks(query.shape[3], block_size):
    scores = (
      jnp.einsum(
        "bhgqd,bhkd->bhgqk",
        query[:, :, :, start:end],
        key[:, :, :end],
        preferred_element_type=jnp.float32,
      )
      * scale
    )
    scores = jnp.where(_block_mask(segment_ids, start, end), scores, jnp.finfo(jnp.float32).min)
    row_max = jnp.max(scores, axis=-1, keepdims=True)
    probs = jnp.exp(scores - row_max)  # unnormalized
    row_sum = jnp.sum(probs, axis=-1, keepdims=True)
    out = jnp.einsum(
      "bhgqk,bhkd->bhgqd",
      probs.astype(value.dtype),
      value[:, :, :end],
      preferred_element_type=jnp.float32,
    )
    outs.append((out / row_sum).astype(query.dtype))
    lses.append((row_max + jnp.log(row_sum))[..., 0])
  return jnp.concatenate(outs, axis=3), jnp.concatenate(lses, axis=3)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _blockwise(query, key, value, segment_ids, block_size):
  return _blockwise_forward(query, key, value, segment_ids, block_size)[0]


def _blockwise_fwd(query, key, value, segment_ids, block_size):
  out, lse = _blockwise_forward(query, key, value, segment_ids, block_size)
  return out, (query, key, value, segment_ids, out, lse)


def _blockwise_bwd(block_size, residuals, d_out):
  query, key, value, segment_ids, out, lse = residuals
  scale = query.shape[-1] ** -0.5
  # rowsum(dP * P) = rowsum(dO * O): [B, KV, G, T]
  delta = jnp.sum(d_out.astype(jnp.float32) * out.astype(jnp.float32), axis=-1)
  d_query = []
  d_key = jnp.zeros(key.shape, jnp.float32)
  d_value = jnp.zeros(value.shape, jnp.float32)
  for start, end in _blocks(query.shape[3], block_size):
    q, do = query[:, :, :, start:end], d_out[:, :, :, start:end]
    scores = (
      jnp.einsum("bhgqd,bhkd->bhgqk", q, key[:, :, :end], preferred_element_type=jnp.float32)
      * scale
    )
    probs = jnp.where(
      _block_mask(segment_ids, start, end), jnp.exp(scores - lse[..., start:end, None]), 0.0
    )
    d_value = d_value.at[:, :, :end].add(
      jnp.einsum(
        "bhgqk,bhgqd->bhkd", probs.astype(do.dtype), do, preferred_element_type=jnp.float32
      )
    )
    d_probs = jnp.einsum(
      "bhgqd,bhkd->bhgqk", do, value[:, :, :end], preferred_element_type=jnp.float32
    )
    d_scores = (probs * (d_probs - delta[..., start:end, None]) * scale).astype(query.dtype)
    d_query.append(
      jnp.einsum(
        "bhgqk,bhkd->bhgqd", d_scores, key[:, :, :end], preferred_element_type=jnp.float32
      ).astype(query.dtype)
    )
    d_key = d_key.at[:, :, :end].add(
      jnp.einsum("bhgqk,bhgqd->bhkd", d_scores, q, preferred_element_type=jnp.float32)
    )
  return (
    jnp.concatenate(d_query, axis=3),
    d_key.astype(key.dtype),
    d_value.astype(value.dtype),
    None,
  )


_blockwise.defvjp(_blockwise_fwd, _blockwise_bwd)


def blockwise_attention(
  query, key, value, *, segment_ids=None, dropout_rate=0.0, dropout_rng=None, block_size=None
):
  """Causal attention over blocks of `BLOCK_SIZE` query rows that skips the key blocks in the
  future (about half the scores at long lengths), with a flash-attention-style custom VJP: only
  the log-sum-exp is saved and the probabilities are recomputed per block in the backward pass.
  Scores and softmax in fp32. Same results as `xla_attention` up to float rounding; the fast
  choice on CPU."""
  del dropout_rng
  if dropout_rate > 0.0:
    raise ValueError(
      "attention='blockwise' has no attention dropout; set model.attn_dropout=0 "
      "or use model.attention='xla'"
    )
  batch, length, heads, head_dim = query.shape
  kv_heads = key.shape[2]
  query = query.reshape(batch, length, kv_heads, heads // kv_heads, head_dim).transpose(
    0, 2, 3, 1, 4
  )
  key, value = key.transpose(0, 2, 1, 3), value.transpose(0, 2, 1, 3)
  out = _blockwise(query, key, value, segment_ids, block_size or BLOCK_SIZE)
  return out.transpose(0, 3, 1, 2, 4).reshape(batch, length, heads, head_dim)


ATTENTION_FNS = {
  "xla": xla_attention,
  "fused": fused_attention,
  "cudnn": cudnn_attention,
  "blockwise": blockwise_attention,
}
