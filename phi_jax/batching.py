"""Dynamic batching: unrelated text requests share one `decode.Decoder.generate`.

    engine = batching.Engine(decoder, vocab, max_batch=16, max_queue=64)
    engine.start()
    engine.submit(batching.Job([batching.Row(ids, decode.RowSampling(), max_tokens=64)], notify))
    ...
    engine.close()  # decodes what is queued, then stops

Jobs (one request each: one or more rows) wait in a bounded queue (`submit` raises `QueueFull`
when it holds `max_queue` jobs). One worker thread takes the oldest job, then the jobs that
follow it, each within `window_s` of the one before, up to `max_batch` rows, and decodes them
together (jobs that queued while a batch ran join the next one at once). Each row samples
its own way (`decode.RowSampling`), so what a row generates does not depend on the batch it
joins. Rows are padded with idle rows to a power of two (at most `max_batch`), so that few
batch shapes are ever compiled. A row's `max_tokens` and stop strings are enforced between
decode chunks by the decoder's `stop` callback, which also streams each row's new text as it
comes (for jobs that asked), holding back as many characters as the longest stop string has,
less one, so that no part of a stop string is ever sent.

The worker reports through the job's `notify(event)`, from its own thread: `Text(row, delta)`
while streaming, then `Done(completions)` (one `Completion` per row), or `Failed(message)`.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from absl import logging

from phi_jax import decode


class QueueFull(RuntimeError):
  """The engine's queue holds `max_queue` jobs already."""


@dataclasses.dataclass(frozen=True)
class Row:
  """One sequence to continue: its prompt ids, how to sample, and where to stop."""

  prompt: Sequence[int]
  sampling: decode.RowSampling
  max_tokens: int
  stop: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class Completion:
  text: str
  finish_reason: str  # "stop": end-of-text or a stop string; "length": max_tokens
  tokens: int  # new tokens behind `text` (up to the stop string's end when one cut it)


@dataclasses.dataclass(frozen=True)
class Text:
  row: int
  delta: str


@dataclasses.dataclass(frozen=True)
class Done:
  completions: list[Completion]


@dataclasses.dataclass(frozen=True)
class Failed:
  message: str


class Job:
  """A request's rows, decoded in one batch. `notify` receives its events (see the module
  docstring); `stream` asks for `Text` events as the rows grow."""

  def __init__(self, rows: Sequence[Row], notify: Callable[[Any], None], stream: bool = False):
    if not rows:
      raise ValueError("a job needs at least one row")
    self.rows, self.notify, self.stream = list(rows), notify, stream
    self.cancelled = False

  def cancel(self) -> None:
    """Ends the job's rows at the next chunk (the client has gone); `Done` still comes."""
    self.cancelled = True


class _Progress:
  """One row during decoding: whether it is finished, and the text it has streamed so far."""

  def __init__(self, job: Job, index: int, vocab: Any):
    self.job, self.index, self.vocab = job, index, vocab
    self.row = job.rows[index]
    self.sent = ""
    self.hold = max((len(s) for s in self.row.stop), default=1) - 1

  def _text(self, tokens: Sequence[int]) -> str:
    return decode.continuation(self.vocab, self.row.prompt, tokens)

  def _stopped(self, text: str) -> bool:
    return any(s in text for s in self.row.stop)

  def _send(self, text: str) -> None:
    # A tokenizer revises no text it has decoded, except an unfinished character at the end.
    if text.startswith(self.sent) and len(text) > len(self.sent):
      self.job.notify(Text(self.index, text[len(self.sent) :]))
      self.sent = text

  def finished(self, new: list[int]) -> bool:
    """Whether the row is done after `new` tokens; streams what of them is safe to send."""
    if self.job.cancelled or len(new) >= self.row.max_tokens:
      return True
    if not (self.row.stop or self.job.stream):
      return False
    text = self._text(new)
    if self._stopped(text):
      return True
    if self.job.stream:
      self._send(text[: len(text) - self.hold].rstrip("\ufffd"))
    return False

  def complete(self, new: list[int]) -> Completion:
    """The row's completion from all its new tokens (sending the rest of its text)."""
    tokens = new[: self.row.max_tokens]
    text = self._text(tokens)
    cut = decode.truncate(text, self.row.stop)
    if len(cut) < len(text):
      reason, used = "stop", self._tokens_to_stop(tokens)
    else:
      reason, used = ("length" if len(tokens) == self.row.max_tokens else "stop"), len(tokens)
    if self.job.stream:
      self._send(cut)
    return Completion(cut, reason, used)

  def _tokens_to_stop(self, tokens: list[int]) -> int:
    """The fewest of `tokens` whose text holds a stop string (a binary search: a longer prefix
    of tokens decodes to a longer prefix of text)."""
    low, high = 1, len(tokens)
    while low < high:
      middle = (low + high) // 2
      if self._stopped(self._text(tokens[:middle])):
        high = middle
      else:
        low = middle + 1
    return low


def _padded_rows(rows: int, max_batch: int) -> int:
  return min(max(max_batch, rows), 1 << (rows - 1).bit_length())


class Engine:
  """A worker thread that decodes queued jobs in batches on one decoder (see the module
  docstring). `vocab` decodes the rows' text (for stop strings and streaming)."""

  def __init__(
    self,
    decoder: decode.Decoder,
    vocab: Any,
    *,
    max_batch: int = 16,
    max_queue: int = 256,
    window_s: float = 0.01,
  ):
    if max_batch < 1 or max_queue < 1 or window_s < 0:
      raise ValueError(f"max_batch and max_queue must be >= 1, window_s >= 0: {locals()}")
    self.decoder, self.vocab = decoder, vocab
    self.max_batch, self.max_queue, self.window_s = max_batch, max_queue, window_s
    self._queue: collections.deque[Job] = collections.deque()
    self._changed = threading.Condition()
    self._paused = self._closing = False
    self._thread = threading.Thread(target=self._work, name="phi_jax-batching", daemon=True)
    self._stats = {"requests": 0, "batches": 0, "rows": 0, "largest_batch": 0, "running": 0}

  def start(self) -> None:
    self._thread.start()

  def submit(self, job: Job) -> None:
    """Queues `job`; QueueFull when `max_queue` jobs wait already, RuntimeError once closing."""
    with self._changed:
      if self._closing:
        raise RuntimeError("the engine is shutting down")
      if len(self._queue) >= self.max_queue:
        raise QueueFull(f"{len(self._queue)} requests are queued already (max_queue)")
      self._queue.append(job)
      self._changed.notify_all()

  def close(self) -> None:
    """Takes no more jobs, decodes those queued (even if paused), and stops the worker."""
    with self._changed:
      self._closing = True
      self._changed.notify_all()
    if self._thread.is_alive():
      self._thread.join()

  @contextlib.contextmanager
  def paused(self):
    """No new batch starts inside the block (jobs queue up): for tests and maintenance."""
    with self._changed:
      self._paused = True
    try:
      yield
    finally:
      with self._changed:
        self._paused = False
        self._changed.notify_all()

  def stats(self) -> dict:
    """Counters: requests and batches run, rows decoded (without padding), the largest batch
    in rows, rows decoding now, jobs queued, and the limits."""
    with self._changed:
      limits = {"max_batch": self.max_batch, "max_queue": self.max_queue}
      return {**self._stats, "queued": len(self._queue), **limits}

  def _drop_cancelled(self) -> None:
    """Drops queued jobs whose clients have gone (cancelled before they ran)."""
    self._queue = collections.deque(job for job in self._queue if not job.cancelled)

  def _take(self) -> list[Job] | None:
    """The next batch: the oldest job, and those that fit and follow within the window; None
    once closing with nothing queued."""
    with self._changed:
      while True:
        self._drop_cancelled()
        if self._closing or (self._queue and not self._paused):
          break
        self._changed.wait()
      if not self._queue:
        return None
      jobs = [self._queue.popleft()]
      rows = len(jobs[0].rows)
      deadline = time.monotonic() + self.window_s
      while rows < self.max_batch:
        self._drop_cancelled()
        if self._queue:
          if rows + len(self._queue[0].rows) > self.max_batch:
            break
          jobs.append(self._queue.popleft())
          rows += len(jobs[-1].rows)
          deadline = time.monotonic() + self.window_s  # a burst is still arriving
        elif self._closing or not self._changed.wait(max(0.0, deadline - time.monotonic())):
          break
      self._stats["running"] = rows
      return jobs

  def _work(self) -> None:
    while (jobs := self._take()) is not None:
      try:
        self._decode(jobs)
      except Exception as e:  # noqa: BLE001 - the server lives on; the requests get the error
        logging.exception("decoding a batch of %d requests failed", len(jobs))
        for job in jobs:
          job.notify(Failed(f"{type(e).__name__}: {e}"))
      finally:
        with self._changed:
          self._stats["running"] = 0

  def _decode(self, jobs: list[Job]) -> None:
    progress = [_Progress(job, i, self.vocab) for job in jobs for i in range(len(job.rows))]
    idle = _padded_rows(len(progress), self.max_batch) - len(progress)
    prompts = [p.row.prompt for p in progress] + [[self.decoder.sampling.pad_id]] * idle
    rows = [p.row.sampling for p in progress] + [decode.RowSampling()] * idle
    outputs = self.decoder.generate(
      prompts,
      rows=rows,
      stop=lambda row, new: row >= len(progress) or progress[row].finished(new),
    )
    completions = [p.complete(new) for p, new in zip(progress, outputs)]
    with self._changed:
      self._stats["requests"] += len(jobs)
      self._stats["batches"] += 1
      self._stats["rows"] += len(progress)
      self._stats["largest_batch"] = max(self._stats["largest_batch"], len(progress))
    start = 0
    for job in jobs:
      job.notify(Done(completions[start : start + len(job.rows)]))
      start += len(job.rows)
