"""Exact and near-duplicate removal for corpus documents, as pure functions and a Beam transform.

Documents are the dicts of `data_pipeline.sources` (id, kind, source, text, ...); ids must be
unique per content (sources.document derives them from it).

1. Exact duplicates: documents whose `text` has the same SHA-256 are one group; the group keeps
   its smallest document by (id, kind, source) and drops the rest.
2. Near duplicates: a MinHash signature (datasketch, `num_perm` permutations, `seed`) over the
   set of `shingle_size`-word shingles (`words.code_words`) of each surviving document. LSH
   banding with `bands` x `rows` (by default the pair that minimises the false positive +
   false negative area around `threshold`, as datasketch does) puts documents that agree on
   one band in one bucket. Inside a bucket, a document is a near duplicate when a document with
   a smaller id has an estimated Jaccard (fraction of equal signature entries) >= `threshold`;
   it is dropped. Documents without any word take no part in near deduplication.

The rule "drop a document when a similar document with a smaller id exists" depends only on the
set of documents, never on their order, so the result is deterministic, and no two surviving
documents that share a bucket are near duplicates of each other. (Along a chain a~b~c with a and
c dissimilar, both b and c go: that is the price of deciding per pair, without a global
clustering pass.) `deduplicate` runs the same rule in memory; `Deduplicate` is the Beam
PTransform, with no state outside its PCollections, so it runs on Dataflow as on DirectRunner.

Beam counters (namespace `phi1_data`): exact_duplicates_removed, near_duplicates_removed.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
from collections import defaultdict
from collections.abc import Iterable

import apache_beam as beam
import numpy as np
from apache_beam.metrics import Metrics
from datasketch import MinHash

from data_pipeline.stages import NAMESPACE  # "phi1_data", shared with the build stages
from data_pipeline.words import code_words


@dataclasses.dataclass(frozen=True)
class DedupConfig:
  threshold: float = 0.85  # estimated Jaccard at or above which two documents are duplicates
  num_perm: int = 128  # MinHash permutations (signature length)
  shingle_size: int = 5  # words per shingle
  seed: int = 1  # MinHash permutation seed
  bands: int | None = None  # LSH bands; None: chosen from threshold and num_perm
  rows: int | None = None  # rows per band; with bands, bands * rows <= num_perm
  near: bool = True  # False: exact deduplication only

  def __post_init__(self):
    if not 0.0 < self.threshold <= 1.0:
      raise ValueError(f"threshold must be in (0, 1], got {self.threshold}")
    if self.shingle_size < 1 or self.num_perm < 1:
      raise ValueError("shingle_size and num_perm must be positive")
    if (self.bands is None) != (self.rows is None):
      raise ValueError("give both bands and rows, or neither")
    if self.bands is not None and (
      self.bands < 1 or self.rows < 1 or self.bands * self.rows > self.num_perm
    ):
      raise ValueError(
        f"bands * rows ({self.bands} x {self.rows}) must be <= num_perm ({self.num_perm})"
      )

  @property
  def banding(self) -> tuple[int, int]:
    if self.bands is not None:
      return self.bands, self.rows
    return lsh_params(self.threshold, self.num_perm)


def make_config(config: DedupConfig | None = None, **overrides) -> DedupConfig:
  return dataclasses.replace(config or DedupConfig(), **overrides)


# ---------------------------------------------------------------------------------------------
# Pure functions


def content_hash(text: str) -> str:
  return hashlib.sha256(text.encode("utf-8")).hexdigest()


def rank(doc: dict) -> tuple:
  """The order that picks a group's representative: the smallest wins."""
  return (doc["id"], doc.get("kind", ""), doc.get("source", ""))


def shingles(text: str, size: int) -> set[str]:
  """The set of `size`-word shingles; a document shorter than `size` words is one shingle."""
  words = code_words(text)
  if not words:
    return set()
  if len(words) <= size:
    return {" ".join(words)}
  return {" ".join(words[i : i + size]) for i in range(len(words) - size + 1)}


@functools.lru_cache(maxsize=8)
def _permutations(num_perm: int, seed: int) -> np.ndarray:
  return MinHash(num_perm=num_perm, seed=seed, scheme="affine32").permutations


def signature(text: str, config: DedupConfig) -> np.ndarray | None:
  """The MinHash signature (uint32[num_perm]) of the text's shingles; None if it has no words."""
  grams = shingles(text, config.shingle_size)
  if not grams:
    return None
  minhash = MinHash(
    num_perm=config.num_perm,
    seed=config.seed,
    scheme="affine32",
    permutations=_permutations(config.num_perm, config.seed),
  )
  minhash.update_batch([g.encode("utf-8") for g in grams])  # a min: order-free
  return minhash.hashvalues.astype(np.uint32)


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
  """Estimated Jaccard similarity of two signatures: the fraction of equal entries."""
  return float(np.mean(a == b))


@functools.lru_cache(maxsize=64)
def lsh_params(
  threshold: float, num_perm: int, fp_weight: float = 0.5, fn_weight: float = 0.5
) -> tuple[int, int]:
  """(bands, rows) minimising weighted false-positive + false-negative probability areas."""
  s = np.linspace(0.0, 1.0, 2001)
  below, above = s <= threshold, s >= threshold
  best, best_cost = (1, 1), float("inf")
  for bands in range(1, num_perm + 1):
    for rows in range(1, num_perm // bands + 1):
      p = 1.0 - (1.0 - s**rows) ** bands  # probability of sharing at least one band
      fp = np.trapezoid(p[below], s[below])
      fn = np.trapezoid(1.0 - p[above], s[above])
      cost = fp_weight * fp + fn_weight * fn
      if cost < best_cost - 1e-12:
        best, best_cost = (bands, rows), cost
  return best


def band_keys(sig: np.ndarray, bands: int, rows: int) -> list[bytes]:
  """One bucket key per band: the band index and a digest of its rows."""
  return [
    i.to_bytes(2, "big")
    + hashlib.blake2b(sig[i * rows : (i + 1) * rows].tobytes(), digest_size=12).digest()
    for i in range(bands)
  ]


def bucket_duplicates(
  members: Iterable[tuple[str, bytes | np.ndarray]], threshold: float
) -> list[str]:
  """Ids in one LSH bucket that have a smaller-id member with estimated Jaccard >= threshold."""
  members = sorted(members, key=lambda m: m[0])
  if len(members) < 2:
    return []
  ids = [m[0] for m in members]
  if len(set(ids)) != len(ids):
    raise ValueError(f"document ids are not unique: {sorted({i for i in ids if ids.count(i) > 1})}")
  sigs = np.stack(
    [np.frombuffer(s, dtype=np.uint32) if isinstance(s, bytes) else s for _, s in members]
  )
  duplicates = []
  for j in range(1, len(ids)):
    if np.mean(sigs[:j] == sigs[j], axis=1).max() >= threshold:
      duplicates.append(ids[j])
  return duplicates


def exact_groups(docs: Iterable[dict]) -> dict[str, tuple[dict, int]]:
  """content hash -> (representative, group size)."""
  groups: dict[str, tuple[dict, int]] = {}
  for doc in docs:
    key = content_hash(doc["text"])
    best, n = groups.get(key, (None, 0))
    groups[key] = (doc if best is None or rank(doc) < rank(best) else best, n + 1)
  return groups


def deduplicate(
  docs: Iterable[dict], config: DedupConfig | None = None, **overrides
) -> tuple[list[dict], dict[str, int]]:
  """In memory: (kept documents sorted by id, {counter name: documents removed})."""
  cfg = make_config(config, **overrides)
  groups = exact_groups(docs)
  unique = sorted((doc for doc, _ in groups.values()), key=rank)
  stats = {
    "exact_duplicates_removed": sum(n - 1 for _, n in groups.values()),
    "near_duplicates_removed": 0,
  }
  ids = [d["id"] for d in unique]
  if len(set(ids)) != len(ids):
    raise ValueError("document ids are not unique across different texts")
  if not cfg.near:
    return unique, stats
  bands, rows = cfg.banding
  buckets: dict[bytes, list] = defaultdict(list)
  for doc in unique:
    sig = signature(doc["text"], cfg)
    if sig is not None:
      for key in band_keys(sig, bands, rows):
        buckets[key].append((doc["id"], sig))
  near = set()
  for members in buckets.values():
    near.update(bucket_duplicates(members, cfg.threshold))
  stats["near_duplicates_removed"] = len(near)
  return [d for d in unique if d["id"] not in near], stats


# ---------------------------------------------------------------------------------------------
# Beam


class _SmallestRank(beam.CombineFn):
  """(representative, count) of one content-hash group."""

  def create_accumulator(self):
    return (None, 0)

  def add_input(self, acc, doc):
    best, n = acc
    return (doc if best is None or rank(doc) < rank(best) else best, n + 1)

  def merge_accumulators(self, accumulators):
    best, total = None, 0
    for doc, n in accumulators:
      if doc is not None and (best is None or rank(doc) < rank(best)):
        best = doc
      total += n
    return (best, total)

  def extract_output(self, acc):
    return acc


class _EmitRepresentative(beam.DoFn):
  def __init__(self):
    self.removed = Metrics.counter(NAMESPACE, "exact_duplicates_removed")

  def process(self, element):
    _, (doc, n) = element
    if n > 1:
      self.removed.inc(n - 1)
    yield doc


def _signature_entry(doc: dict, config: DedupConfig):
  sig = signature(doc["text"], config)
  if sig is not None:
    yield doc["id"], sig.tobytes()


def _band_entries(entry, bands: int, rows: int):
  doc_id, sig = entry
  for key in band_keys(np.frombuffer(sig, dtype=np.uint32), bands, rows):
    yield key, (doc_id, sig)


class _DropMarked(beam.DoFn):
  def __init__(self):
    self.removed = Metrics.counter(NAMESPACE, "near_duplicates_removed")

  def process(self, element):
    doc_id, grouped = element
    docs, marks = list(grouped["doc"]), list(grouped["dup"])
    if len(docs) > 1:
      raise ValueError(f"document id {doc_id!r} is shared by {len(docs)} different texts")
    if marks:
      self.removed.inc(len(docs))
    else:
      yield from docs


class Deduplicate(beam.PTransform):
  """PCollection[doc] -> PCollection[doc] without exact and near duplicates.

  `Deduplicate(threshold=0.85, num_perm=128, shingle_size=5, seed=1)`, or a DedupConfig.
  """

  def __init__(self, config: DedupConfig | None = None, label: str | None = None, **overrides):
    super().__init__(label)
    self.config = make_config(config, **overrides)

  def expand(self, docs):
    cfg = self.config
    unique = (
      docs
      | "KeyByContent" >> beam.Map(lambda d: (content_hash(d["text"]), d))
      | "SmallestIdPerContent" >> beam.CombinePerKey(_SmallestRank())
      | "DropExact" >> beam.ParDo(_EmitRepresentative())
    )
    if not cfg.near:
      return unique
    bands, rows = cfg.banding
    marks = (
      unique
      | "MinHash" >> beam.FlatMap(_signature_entry, cfg)
      | "Bands" >> beam.FlatMap(_band_entries, bands, rows)
      | "GroupBuckets" >> beam.GroupByKey()
      | "CompareInBucket" >> beam.FlatMap(lambda kv, t: bucket_duplicates(kv[1], t), cfg.threshold)
      | "DistinctDuplicates" >> beam.Distinct()
      | "MarkDuplicate" >> beam.Map(lambda doc_id: (doc_id, True))
    )
    keyed = unique | "KeyById" >> beam.Map(lambda d: (d["id"], d))
    return (
      {"doc": keyed, "dup": marks}
      | "JoinMarks" >> beam.CoGroupByKey()
      | "DropNear" >> beam.ParDo(_DropMarked())
    )
