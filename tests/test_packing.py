"""Packing the paper's way: one stream, end-of-text between documents, fixed-length rows."""

import numpy as np
import tensorflow as tf

from phi_jax import packing

EOT = 1


def _docs(*docs, weights=None):
  def gen():
    for i, doc in enumerate(docs):
      example = {"targets": np.asarray(doc + [EOT], np.int32)}
      if weights is not None:
        example["loss_weights"] = np.asarray(weights[i] + [1.0], np.float32)
      yield example

  signature = {"targets": tf.TensorSpec([None], tf.int32)}
  if weights is not None:
    signature["loss_weights"] = tf.TensorSpec([None], tf.float32)
  return tf.data.Dataset.from_generator(gen, output_signature=signature)


def test_stream_is_cut_into_rows_without_loss_or_padding():
  docs = [[10, 11, 12], [20, 21, 22, 23, 24, 25, 26], [30, 31]]
  rows = list(packing.pack(_docs(*docs), seq_len=4).as_numpy_iterator())
  stream = [t for doc in docs for t in doc + [EOT]]  # 15 tokens -> 3 rows of 5
  assert len(rows) == len(stream) // 5
  for i, row in enumerate(rows):
    chunk = stream[i * 5 : (i + 1) * 5]
    np.testing.assert_array_equal(row["inputs"], chunk[:-1])
    np.testing.assert_array_equal(row["targets"], chunk[1:])
  # Row 0 = [10 11 12 EOT | 20]: a new segment starts where document 2 begins.
  np.testing.assert_array_equal(rows[0]["segment_ids"], [1, 1, 1, 1])
  np.testing.assert_array_equal(rows[1]["inputs"], [21, 22, 23, 24])
  np.testing.assert_array_equal(rows[2]["inputs"], [26, EOT, 30, 31])
  np.testing.assert_array_equal(rows[2]["segment_ids"], [1, 1, 2, 2])
  np.testing.assert_array_equal(rows[2]["positions"], [0, 1, 0, 1])


def test_prompt_tokens_can_carry_zero_loss_weight():
  rows = list(
    packing.pack(_docs([5, 6, 7], weights=[[0.0, 0.0, 1.0]]), seq_len=3).as_numpy_iterator()
  )
  np.testing.assert_array_equal(rows[0]["inputs"], [5, 6, 7])
  np.testing.assert_array_equal(rows[0]["targets"], [6, 7, EOT])
  np.testing.assert_array_equal(rows[0]["loss_weights"], [0.0, 1.0, 1.0])
