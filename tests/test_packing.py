"""Packing the paper's way, by random access: one reshuffled stream per epoch, end-of-text
between documents, fixed-length rows; and the mixture's row -> task assignment."""

import json

import numpy as np
import pytest

from phi_jax import mixture, packing, records

EOT = 1


class _Docs:
  """In-memory documents (packing.Documents) that count their reads."""

  def __init__(self, docs, prompts=None):
    self.docs = [np.asarray(d + [EOT], np.int32) for d in docs]
    self.lengths = np.array([len(d) for d in self.docs])
    self.prompt_lengths = np.array(prompts or [0] * len(docs))
    self.reads = 0

  def tokens(self, index):
    self.reads += 1
    return self.docs[index]


def _epoch_stream(docs, stream, epoch):
  order, _ = stream.epoch(epoch)
  return [int(t) for i in order for t in docs.docs[i]]


def test_rows_cut_each_epochs_reshuffled_stream_without_loss_or_padding():
  docs = _Docs([[10, 11, 12], [20, 21, 22, 23, 24, 25, 26], [30, 31], [40]])  # 16 tokens
  stream = packing.Stream(docs, seq_len=3, seed=5, mask_prompt=True)
  whole = _epoch_stream(docs, stream, 0) + _epoch_stream(docs, stream, 1)
  assert sorted(_epoch_stream(docs, stream, 0)) == sorted(t for d in docs.docs for t in d)
  orders = {tuple(stream.epoch(e)[0]) for e in range(8)}
  assert len(orders) > 1  # reshuffled per epoch, not one order repeated
  for r in range(8):  # rows 0..7 span both epochs; row 3 crosses the boundary (tokens 12..15)
    row = stream.row(r)
    np.testing.assert_array_equal(row["inputs"], whole[r * 4 : r * 4 + 3])
    np.testing.assert_array_equal(row["targets"], whole[r * 4 + 1 : r * 4 + 4])


def test_a_row_is_a_pure_function_of_its_index():
  docs = _Docs([[i] * (i % 7 + 1) for i in range(2, 50)])
  a = packing.Stream(docs, seq_len=16, seed=3, mask_prompt=True)
  b = packing.Stream(docs, seq_len=16, seed=3, mask_prompt=True)
  late = [10**9, 17, 10**9 + 1, 0]
  for r in late:  # any order, any distance: the same row
    for key, value in a.row(r).items():
      np.testing.assert_array_equal(value, b.row(r)[key])
  reads = docs.reads
  a.row(10**12)
  assert docs.reads - reads <= 17  # a row touches a few documents, never the stream before it
  other_seed = packing.Stream(docs, seq_len=16, seed=4, mask_prompt=True)
  assert not np.array_equal(other_seed.row(0)["inputs"], a.row(0)["inputs"])


def test_segments_and_positions_restart_at_each_document():
  docs = _Docs([[10, 11, 12], [20, 21, 22, 23, 24, 25, 26], [30, 31]])
  stream = packing.Stream(docs, seq_len=4, seed=0, mask_prompt=True)
  order = [int(i) for i in stream.epoch(0)[0]]
  lengths = [len(docs.docs[i]) for i in order]
  row = stream.row(0)  # tokens 0..4 of the stream
  boundaries = np.cumsum(lengths)
  expected_segment = np.searchsorted(boundaries, np.arange(4), side="right") + 1
  np.testing.assert_array_equal(row["segment_ids"], expected_segment)
  starts = np.concatenate([[0], boundaries])[expected_segment - 1]
  np.testing.assert_array_equal(row["positions"], np.arange(4) - starts)


def test_prompt_tokens_carry_zero_loss_weight_only_when_masked():
  docs = _Docs([[5, 6, 7]], prompts=[2])  # tokens 5 6 | 7 EOT
  masked = packing.Stream(docs, seq_len=3, seed=0, mask_prompt=True).row(0)
  np.testing.assert_array_equal(masked["inputs"], [5, 6, 7])
  np.testing.assert_array_equal(masked["targets"], [6, 7, EOT])
  np.testing.assert_array_equal(masked["loss_weights"], [0.0, 1.0, 1.0])
  unmasked = packing.Stream(docs, seq_len=3, seed=0, mask_prompt=False).row(0)
  np.testing.assert_array_equal(unmasked["loss_weights"], [1.0, 1.0, 1.0])


@pytest.mark.parametrize("rates", [[0.7, 0.3], [1.0, 2.0, 0.5], [0.25, 0.0, 0.75], [1.0]])
def test_mixture_rows_follow_the_rates_and_number_each_tasks_rows_in_order(rates):
  shares = np.array(rates) / sum(rates)
  interleave = mixture.Interleave(rates, seed=11)
  located = [interleave.locate(g) for g in range(5000)]
  for task in range(len(rates)):
    mine = [r for t, r in located if t == task]
    assert mine == list(range(len(mine)))  # rows 0, 1, 2, ... of the task's stream, no gaps
  for rows in (1, 7, 100, 5000):
    counts = interleave.counts(rows)
    assert counts == [sum(1 for t, _ in located[:rows] if t == k) for k in range(len(rates))]
    assert np.all(np.abs(np.array(counts) - rows * shares) < len(rates))
  far = 10**12 + 12345
  assert sum(interleave.counts(far)) == far
  task, row = interleave.locate(far)
  assert interleave.counts(far + 1)[task] == interleave.counts(far)[task] + 1 == row + 1


def test_mixture_rates_hold_exactly_in_expectation_over_seeds():
  rows = 1001  # 0.37 * 1001 is not an integer: a rounding bias would show
  counts = np.array([mixture.Interleave([0.37, 0.63], seed=s).counts(rows) for s in range(4000)])
  np.testing.assert_allclose(counts.mean(axis=0), [0.37 * rows, 0.63 * rows], atol=0.02)


def test_records_round_trip_and_refuse_what_was_not_built(tmp_path):
  filtered = records.part_dir(tmp_path, "phi1_code_exercises:filtered")
  documents = [(np.arange(5) + 100, 2), (np.arange(3) + 200, 0)]
  assert records.write_shard(filtered, records.shard_name("train", 0, 2), documents) == (2, 8)
  counts = records.write_split_index(filtered, "train", num_shards=2)  # shard 1: no documents
  assert counts["train_documents"] == 2 and counts["train_tokens"] == 8
  synthetic = records.part_dir(tmp_path, "phi1_code_exercises:synthetic")
  records.write_shard(synthetic, records.shard_name("train", 1, 2), [(np.arange(4) + 300, 1)])
  records.write_split_index(synthetic, "train", num_shards=2)
  records.write_split_index(synthetic, "validation", num_shards=2)  # no documents at all
  with pytest.raises(FileNotFoundError, match="no finished `records` stage.*data_pipeline.build"):
    records.require_built(str(tmp_path))  # no marker yet: as a build from before 2026-12
  (tmp_path / "records" / "stage.json").write_text(json.dumps({"format": records.FORMAT}))
  task = records.Documents(str(tmp_path), "phi1_code_exercises", "train")  # its parts, in order
  np.testing.assert_array_equal(task.lengths, [5, 3, 4])
  np.testing.assert_array_equal(task.prompt_lengths, [2, 0, 1])
  np.testing.assert_array_equal(task.tokens(1), [200, 201, 202])
  np.testing.assert_array_equal(task.tokens(2), [300, 301, 302, 303])
  assert task.tokens_total == 12
  part = records.Documents(str(tmp_path), "phi1_code_exercises:synthetic", "train")
  np.testing.assert_array_equal(part.lengths, [4])
  np.testing.assert_array_equal(part.tokens(0), [300, 301, 302, 303])
  with pytest.raises(ValueError, match="no documents in split 'validation'"):
    records.Documents(str(tmp_path), "phi1_code_exercises:synthetic", "validation")
  with pytest.raises(FileNotFoundError, match="no split 'validation'"):
    records.Documents(str(tmp_path), "phi1_code_exercises:filtered", "validation")
  with pytest.raises(ValueError, match="gcsfuse"):
    records.require_built("gs://bucket/data")
