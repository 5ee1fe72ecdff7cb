"""The seqio input pipeline on a real built corpus (tests/conftest.py's `tiny_corpus`): global
batches are the same bits however the rows are split among processes and whatever step a stream
starts at, and rows read a million steps (hundreds of epochs) in are well-formed packed rows of
the task's own documents."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import sentencepiece

from phi_jax import configs, input_pipeline, train_step

GLOBAL_BATCH = 8
SEQ_LEN = 64
FAR = 1_000_000  # steps: ~900 epochs of the tiny corpus's CodeTextbook at 8 x 65 tokens a step
EOS = 1  # SentencePiece's end-of-text id in the corpus tokenizer (checked below)
# The default mixture (CodeTextbook only), and one that interleaves exercises (masked prompts).
MIXTURES = {
  "code_textbook": {},
  "with_exercises": {"phi1_code_textbook": 0.7, "phi1_code_exercises": 0.3},
}


def _data(corpus, rates: dict):
  cfg = configs.get("tiny")
  cfg.data.update(source="seqio", dir=str(corpus))
  cfg.data.pretrain_rates = rates
  return cfg.data


def _source(corpus, mixture: str, seq_len: int = SEQ_LEN):
  """A fresh reader (no cached epochs or open files): (data config, MixtureRows)."""
  data = _data(corpus, MIXTURES[mixture])
  return data, input_pipeline.MixtureRows(data, seq_len, seed=0, split="train")


def _read(data, source, rows: slice, start_step: int, steps: int) -> list[dict]:
  batches = input_pipeline.read_rows(data, source, rows, GLOBAL_BATCH, start_step)
  return list(itertools.islice(batches, steps))


def _assert_batches_equal(got: list[dict], want: list[dict]):
  assert len(got) == len(want)
  for step, (a, b) in enumerate(zip(got, want)):
    assert set(a) == set(b) == set(train_step.BATCH_KEYS)
    for key in a:
      assert a[key].dtype == b[key].dtype and np.array_equal(a[key], b[key]), (step, key)


@pytest.mark.parametrize("mixture", list(MIXTURES))
@pytest.mark.parametrize("start_step", [0, 7, FAR])
def test_process_slices_of_a_batch_are_the_whole_batch_bit_for_bit(
  tiny_corpus, mixture, start_step
):
  """Rows 0..4 + 4..8 (two processes) and 0..2 + ... + 6..8 (four) read exactly what one process
  reading 0..8 does, step after step; and row i of step s is MixtureRows[s * batch + i]."""
  data, source = _source(tiny_corpus, mixture)
  steps = 3
  whole = _read(data, source, slice(0, GLOBAL_BATCH), start_step, steps)
  for bounds in ([0, 4, 8], [0, 2, 4, 6, 8]):
    parts = [
      _read(*_source(tiny_corpus, mixture), slice(a, b), start_step, steps)
      for a, b in itertools.pairwise(bounds)
    ]
    joined = [
      {key: np.concatenate([part[s][key] for part in parts]) for key in whole[s]}
      for s in range(steps)
    ]
    _assert_batches_equal(joined, whole)
  rows = [
    [source[(start_step + s) * GLOBAL_BATCH + i] for i in range(GLOBAL_BATCH)] for s in range(steps)
  ]
  direct = [{key: np.stack([row[key] for row in step]) for key in step[0]} for step in rows]
  _assert_batches_equal(whole, direct)
  # Not one row repeated: the comparisons above compare different data.
  assert len({batch["inputs"][i].tobytes() for batch in whole for i in range(GLOBAL_BATCH)}) == (
    steps * GLOBAL_BATCH
  )


@pytest.mark.parametrize("mixture", list(MIXTURES))
def test_a_stream_started_at_step_k_reads_batch_k_of_one_started_at_0(tiny_corpus, mixture):
  """Resuming at step 7 (a fresh reader, as after a restart) gives batches 7, 8, 9 of the stream
  a run started at step 0 read; step 1,000,000 gives what walking there would (rows by index)."""
  from_zero = _read(*_source(tiny_corpus, mixture), slice(0, GLOBAL_BATCH), 0, 10)
  resumed = _read(*_source(tiny_corpus, mixture), slice(0, GLOBAL_BATCH), 7, 3)
  _assert_batches_equal(resumed, from_zero[7:])
  assert not np.array_equal(from_zero[6]["inputs"], from_zero[7]["inputs"])  # steps differ

  data, walked = _source(tiny_corpus, mixture)
  for step in range(0, FAR, FAR // 8):  # touch epochs on the way, in order
    walked[step * GLOBAL_BATCH]
  far = _read(*_source(tiny_corpus, mixture), slice(0, GLOBAL_BATCH), FAR, 1)
  want = [walked[FAR * GLOBAL_BATCH + i] for i in range(GLOBAL_BATCH)]
  _assert_batches_equal(far, [{key: np.stack([r[key] for r in want]) for key in want[0]}])


def _segments(segment_ids: np.ndarray) -> list[tuple[int, int]]:
  starts = [0, *np.flatnonzero(np.diff(segment_ids)) + 1]
  return list(zip(starts, [*starts[1:], len(segment_ids)]))


def _contains(document: np.ndarray, piece: np.ndarray) -> bool:
  text, found = document.tobytes(), -1
  while (found := text.find(piece.tobytes(), found + 1)) >= 0:
    if found % piece.itemsize == 0:
      return True
  return False


def test_rows_a_million_steps_in_are_well_formed(tiny_corpus):
  """Rows of step 1,000,000, hundreds of epochs into each task's stream: tokens within the
  tokenizer's vocabulary, targets the inputs shifted by one, segment ids 1, 2, ... with positions
  restarting at each segment, every segment a piece of one of the row's task's documents (a
  suffix first, whole documents ending in end-of-text between, a prefix last), and the loss
  weights of exercises 0 exactly on their prompt tokens."""
  seq_len = 512  # long enough to hold whole documents
  data, source = _source(tiny_corpus, "with_exercises", seq_len)
  vocab = sentencepiece.SentencePieceProcessor(
    model_file=str(tiny_corpus / "tokenizer" / "spm.model")
  )
  assert vocab.eos_id() == EOS
  vocab_size = min(vocab.vocab_size(), int(configs.get("tiny").model.vocab_size))
  steps = 4
  batches = _read(data, source, slice(0, GLOBAL_BATCH), FAR, steps)
  documents = [
    [stream.documents.tokens(d) for d in range(len(stream.documents))] for stream in source.streams
  ]
  whole_documents, masked_tokens, epochs = 0, 0, []
  for row in range(steps * GLOBAL_BATCH):
    batch, i = batches[row // GLOBAL_BATCH], row % GLOBAL_BATCH
    task, task_row = source.interleave.locate(FAR * GLOBAL_BATCH + row)
    stream = source.streams[task]
    epochs.append(task_row * (seq_len + 1) // stream.epoch_tokens)
    inputs, targets, weights = (batch[k][i] for k in ("inputs", "targets", "loss_weights"))
    segment_ids, positions = batch["segment_ids"][i], batch["positions"][i]
    assert inputs.dtype == targets.dtype == np.int32
    assert 0 <= inputs.min() and max(inputs.max(), targets.max()) < vocab_size
    np.testing.assert_array_equal(targets[:-1], inputs[1:])
    assert set(np.unique(weights)) <= {0.0, 1.0}
    assert segment_ids[0] == 1 and set(np.diff(segment_ids)) <= {0, 1}
    segments = _segments(segment_ids)
    for k, (a, b) in enumerate(segments):
      np.testing.assert_array_equal(positions[a:b], np.arange(b - a))
      piece = inputs[a:b]
      if len(segments) == 1:  # the row lies within one document
        assert any(_contains(doc, piece) for doc in documents[task]), (row, "no document's piece")
      elif k == 0:
        assert any(
          len(doc) >= len(piece) and np.array_equal(doc[len(doc) - len(piece) :], piece)
          for doc in documents[task]
        ), (row, "the first segment is no document's end")
      elif k == len(segments) - 1:
        assert any(np.array_equal(doc[: len(piece)], piece) for doc in documents[task]), (
          row,
          "the last segment is no document's start",
        )
      else:
        matches = [d for d, doc in enumerate(documents[task]) if np.array_equal(doc, piece)]
        assert matches, (row, k, "a segment between others is no whole document")
        prompt = int(stream.documents.prompt_lengths[matches[0]])
        # Target j is token j + 1: the weights of this document's tokens 1.. sit at a .. b - 2.
        np.testing.assert_array_equal(weights[a : b - 1], np.arange(1, b - a) >= prompt)
        whole_documents += 1
        masked_tokens += prompt
      if k < len(segments) - 1:
        assert inputs[b - 1] == EOS, (row, k, "a document ends without end-of-text")
  assert min(epochs) >= 100, epochs  # far into every task's stream
  assert whole_documents >= 4 and masked_tokens > 0, (whole_documents, masked_tokens)
