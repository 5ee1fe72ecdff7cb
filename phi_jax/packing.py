"""Packing, the paper's way: every document's tokens, end-of-text after each, concatenated into
one stream and cut into fixed-length rows. Nothing is truncated or padded; a long document
simply continues in the next row.

Each row carries what the trainer needs (phi_jax.train_step.BATCH_KEYS):
  inputs / targets  -- the row's tokens and the same shifted by one (rows are cut seq_len + 1 long)
  loss_weights      -- 1, or 0 on exercise prompt tokens when prompts are masked
  segment_ids       -- 1, 2, ... per document within the row (for masked packing)
  positions         -- token index within its document piece (restarts at each segment)
"""

from __future__ import annotations

import tensorflow as tf


def pack(dataset: tf.data.Dataset, seq_len: int) -> tf.data.Dataset:
  """Per-document examples {'targets': int tokens (EOT included), optional 'loss_weights'}
  -> packed rows {inputs, targets, loss_weights, segment_ids, positions} of length seq_len."""

  def per_token(index, example):
    tokens = tf.cast(example["targets"], tf.int32)
    weights = example.get("loss_weights")
    weights = tf.ones_like(tokens, tf.float32) if weights is None else tf.cast(weights, tf.float32)
    document = tf.fill(tf.shape(tokens), tf.cast(index, tf.int32))
    return tf.data.Dataset.from_tensor_slices((tokens, weights, document))

  stream = dataset.enumerate().flat_map(per_token)
  rows = stream.batch(seq_len + 1, drop_remainder=True)
  return rows.map(_row, num_parallel_calls=tf.data.AUTOTUNE)


def _row(tokens, weights, document):
  document = document[:-1]
  new_segment = tf.concat([[True], document[1:] != document[:-1]], axis=0)
  segment_ids = tf.cumsum(tf.cast(new_segment, tf.int32))
  index = tf.range(tf.shape(document)[0])
  segment_start = tf.scan(tf.maximum, tf.where(new_segment, index, 0))
  return {
    "inputs": tokens[:-1],
    "targets": tokens[1:],
    "loss_weights": weights[1:],  # the weight of a target token
    "segment_ids": segment_ids,
    "positions": index - segment_start,
  }
