"""Swappable causal self-attention kernels behind one interface.

Every function takes query [batch, length, heads, head_dim], key and value
[batch, length, kv_heads, head_dim] (kv_heads divides heads), and keyword arguments
`segment_ids` ([batch, length] ints or None: tokens attend only within their own segment),
`dropout_rate` and `dropout_rng`; it returns [batch, length, heads, head_dim] in the query dtype.
The model picks one by name (`config.model.attention`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def attention_mask(segment_ids: jax.Array | None, length: int) -> jax.Array:
  """Boolean [batch or 1, 1, length, length]: causal, and within one segment when given."""
  causal = jnp.tril(jnp.ones((length, length), bool))[None, None]
  if segment_ids is None:
    return causal
  same_segment = segment_ids[:, None, :, None] == segment_ids[:, None, None, :]
  return causal & same_segment


def xla_attention(query, key, value, *, segment_ids=None, dropout_rate=0.0, dropout_rng=None):
  """Plain einsum attention; scores and softmax in fp32 whatever the compute dtype."""
  batch, length, heads, head_dim = query.shape
  groups = heads // key.shape[2]
  query = query.reshape(batch, length, key.shape[2], groups, head_dim)
  scores = jnp.einsum("bqhgd,bkhd->bhgqk", query, key, preferred_element_type=jnp.float32)
  scores = scores * (head_dim ** -0.5)
  mask = attention_mask(segment_ids, length)[:, :, None]  # broadcast over the group axis
  scores = jnp.where(mask, scores, jnp.finfo(jnp.float32).min)
  probs = jax.nn.softmax(scores, axis=-1)
  if dropout_rate > 0.0:
    keep = jax.random.bernoulli(dropout_rng, 1.0 - dropout_rate, probs.shape)
    probs = jnp.where(keep, probs / (1.0 - dropout_rate), 0.0)
  out = jnp.einsum("bhgqk,bkhd->bqhgd", probs.astype(value.dtype), value)
  return out.reshape(batch, length, heads, head_dim)


def fused_attention(query, key, value, *, segment_ids=None, dropout_rate=0.0, dropout_rng=None):
  """`jax.nn.dot_product_attention`: XLA's fused path, cuDNN flash attention on GPU."""
  del dropout_rng
  if dropout_rate > 0.0:
    raise ValueError("attention='fused' has no attention dropout; set model.attn_dropout=0 "
                     "or use model.attention='xla'")
  mask = None if segment_ids is None else attention_mask(segment_ids, query.shape[1])
  return jax.nn.dot_product_attention(query, key, value, mask=mask, is_causal=segment_ids is None)


ATTENTION_FNS = {
    "xla": xla_attention,
    "fused": fused_attention,
}
