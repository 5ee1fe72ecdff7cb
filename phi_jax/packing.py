"""Packing, the paper's way, with random access: every document's tokens (end-of-text included)
concatenated into one stream and cut into fixed-length rows. Nothing is truncated or padded; a
long document simply continues in the next row.

The stream of a task is endless: epoch e is every document once, in the order of a permutation
seeded by (seed, e), so each epoch is reshuffled. Row r is tokens [r (L + 1), (r + 1) (L + 1)) of
it, found by binary search in the epoch's cumulative lengths: reaching row r costs the same for
r = 0 and for r = 10^9 (one permutation per epoch touched, then a few document reads).

Each row carries what the trainer needs (phi_jax.train_step.BATCH_KEYS):
  inputs / targets  -- the row's tokens and the same shifted by one (rows are cut L + 1 long)
  loss_weights      -- 1, or 0 on exercise prompt tokens when prompts are masked
  segment_ids       -- 1, 2, ... per document within the row (for masked packing)
  positions         -- token index within its document piece (restarts at each segment)
"""

from __future__ import annotations

import threading
from typing import Protocol

import numpy as np


class Documents(Protocol):
  lengths: np.ndarray  # tokens per document
  prompt_lengths: np.ndarray  # leading prompt tokens per document (0: all text)

  def tokens(self, index: int) -> np.ndarray: ...


class Stream:
  """Rows of one task's documents; `row(r)` is a pure function of (documents, seed, r)."""

  _EPOCHS_KEPT = 2  # a row spans at most two epochs

  def __init__(self, documents: Documents, seq_len: int, seed: int, mask_prompt: bool):
    self.documents, self.width, self.seed = documents, seq_len + 1, seed
    self.mask_prompt = mask_prompt
    self.epoch_tokens = int(np.sum(documents.lengths))
    if self.epoch_tokens == 0:
      raise ValueError("a stream needs at least one token")
    self._epochs: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    self._lock = threading.Lock()

  def __getstate__(self):  # pickles to reader processes, without the lock or cached epochs
    return {**self.__dict__, "_epochs": {}, "_lock": None}

  def __setstate__(self, state):
    self.__dict__.update(state, _lock=threading.Lock())

  def epoch(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
    """(document order, start offset of each document in the epoch and the epoch's length)."""
    with self._lock:
      if epoch not in self._epochs:
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.documents.lengths))
        starts = np.concatenate([[0], np.cumsum(self.documents.lengths[order])])
        for old in sorted(self._epochs)[: max(0, len(self._epochs) + 1 - self._EPOCHS_KEPT)]:
          del self._epochs[old]
        self._epochs[epoch] = (order, starts)
      return self._epochs[epoch]

  def row(self, index: int) -> dict[str, np.ndarray]:
    tokens = np.empty(self.width, np.int32)
    weights = np.ones(self.width, np.float32)
    piece = np.empty(self.width, np.int64)  # which document occurrence each token belongs to
    position, filled = index * self.width, 0
    while filled < self.width:
      epoch, offset = divmod(position, self.epoch_tokens)
      order, starts = self.epoch(epoch)
      slot = int(np.searchsorted(starts, offset, side="right")) - 1
      document, within = int(order[slot]), offset - int(starts[slot])
      count = min(int(self.documents.lengths[document]) - within, self.width - filled)
      span = slice(filled, filled + count)
      tokens[span] = self.documents.tokens(document)[within : within + count]
      if self.mask_prompt:
        prompt = int(self.documents.prompt_lengths[document])
        weights[span] = np.arange(within, within + count) >= prompt
      piece[span] = epoch * len(order) + slot
      filled += count
      position += count
    return cut_row(tokens, weights, piece)


def cut_row(tokens: np.ndarray, weights: np.ndarray, piece: np.ndarray) -> dict[str, np.ndarray]:
  """A training row from L + 1 tokens, their weights and the document piece of each token."""
  document = piece[:-1]
  new_segment = np.concatenate([[True], document[1:] != document[:-1]])
  index = np.arange(len(document), dtype=np.int32)
  segment_start = np.maximum.accumulate(np.where(new_segment, index, 0))
  return {
    "inputs": tokens[:-1],
    "targets": tokens[1:],
    "loss_weights": weights[1:],  # the weight of a target token
    "segment_ids": np.cumsum(new_segment, dtype=np.int32),
    "positions": (index - segment_start).astype(np.int32),
  }
