"""Which task each row of a mixture comes from: global row g -> (task, row of that task's stream),
a pure function of (rates, seed, g) computed in O(number of tasks), never by counting earlier rows.

Tasks are split off one at a time: task k takes the fraction q_k = p_k / (p_k + ... + p_K) of the
rows the earlier tasks left, at the rows where floor(n q_k + u_k) steps up (n counts the rows left
so far, u_k a seeded uniform offset). Task k's own row index is that floor: its rows are numbered
0, 1, 2, ... in order, so every task reads its stream from the start without gaps. Among the
first G rows task k then has floor(G_k q_k + u_k) rows: G p_k exactly in expectation over u_k, and
within one row of it for any G and any seed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


class Interleave:
  def __init__(self, rates: Sequence[float], seed: int):
    rates = [float(rate) for rate in rates]
    if not rates or min(rates) < 0 or not sum(rates) > 0:
      raise ValueError(f"mixture rates {rates} must be non-negative with a positive sum")
    total = sum(rates)
    shares = [rate / total for rate in rates]
    self.num_tasks = len(rates)
    self._fractions = [
      share / sum(shares[k:]) if sum(shares[k:]) > 0 else 0.0 for k, share in enumerate(shares[:-1])
    ]
    self._offsets = np.random.default_rng([seed, 0x6D6978]).random(len(self._fractions)).tolist()

  def locate(self, row: int) -> tuple[int, int]:
    """(task, that task's row index) of global row `row`."""
    for task, (fraction, offset) in enumerate(zip(self._fractions, self._offsets)):
      before = math.floor(row * fraction + offset)
      if math.floor((row + 1) * fraction + offset) > before:
        return task, before
      row -= before  # the row's index among the rows the later tasks share
    return self.num_tasks - 1, row

  def counts(self, rows: int) -> list[int]:
    """How many of the first `rows` global rows each task has."""
    counts = []
    for fraction, offset in zip(self._fractions, self._offsets):
      counts.append(math.floor(rows * fraction + offset))
      rows -= counts[-1]
    return counts + [rows]
