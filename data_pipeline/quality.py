"""The paper's quality filter as Apache Beam transforms: annotate a sample, embed, classify.

phi-1 filtered The Stack + StackOverflow down to ~6B "textbook quality" tokens this way
(Gunasekar et al. 2023, section 2.1): an LLM annotated ~100k samples for "educational value for
a student whose goal is to learn basic coding concepts"; a random forest on a pretrained code
model's output embeddings predicted that judgement for the rest. The three stages live in their
own modules; this one runs them over the whole corpus, on Dataflow or locally on the DirectRunner:

1. `Annotate`: a deterministic sample, scored by a `data_pipeline.annotators.Annotator`
   (`HeuristicAnnotator` by default; `data_pipeline.llm_judge.LLMJudgeAnnotator` asks an LLM).
2. `Embed`: `data_pipeline.embeddings.embed_texts` with a phi_jax model (`CheckpointLoader`).
3. `ScoreAndFilter`: the random forest of `data_pipeline.classifier`, trained on the annotated
   sample (`ToTrainingExample` and `read_training_examples` bring it back to the trainer).

Every per-document step is a function of the document and the transform's arguments: heavy state
(the model, the classifier) is loaded once per worker in `DoFn.setup`, and nothing lives in
module globals but the embeddings' compile cache. Counters go to the Beam namespace `phi1_data`
(`stages.pipeline_counters` reads them back).

Documents are the dicts of `data_pipeline.sources` (id, kind, source, text); the transforms add
`quality_annotation` (score) and `quality_label` (bool), `embedding` (float32 [d_model]) and
`quality_score` (the classifier's probability of the positive class).
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Callable, Mapping, Sequence

import apache_beam as beam
import jax
import numpy as np
from apache_beam.io.filesystems import FileSystems

from data_pipeline import annotators, stages
from data_pipeline import classifier as classifier_lib
from data_pipeline import embeddings as embeddings_lib


def in_sample(doc_id: str, fraction: float, seed: int = 0) -> bool:
  """Deterministic Bernoulli(fraction) draw from a hash of (seed, id): same on every worker."""
  if fraction >= 1.0:
    return True
  digest = hashlib.sha256(f"{seed}\0{doc_id}".encode()).digest()
  return int.from_bytes(digest[:8], "big") / 2.0**64 < fraction


def _kind_matches(doc: Mapping, kinds: tuple[str, ...] | None) -> bool:
  return kinds is None or doc.get("kind") in kinds


class _AnnotateFn(beam.DoFn):
  def __init__(
    self,
    annotator: annotators.Annotator,
    fraction: float,
    seed: int,
    kinds: tuple[str, ...] | None,
    on_error: str,
  ):
    self.annotator, self.fraction, self.seed = annotator, fraction, seed
    self.kinds, self.on_error = kinds, on_error
    self.seen = stages.counter("quality_annotate_seen")
    self.sampled = stages.counter("quality_annotate_sampled")
    self.positive = stages.counter("quality_annotate_positive")
    self.negative = stages.counter("quality_annotate_negative")
    self.errors = stages.counter("quality_annotate_errors")

  def process(self, doc):
    self.seen.inc()
    if not _kind_matches(doc, self.kinds) or not in_sample(doc["id"], self.fraction, self.seed):
      return
    self.sampled.inc()
    try:
      annotation = self.annotator.annotate(doc["text"])
    except Exception:
      self.errors.inc()
      if self.on_error == "raise":
        raise
      return
    (self.positive if annotation.label else self.negative).inc()
    yield {**doc, "quality_annotation": annotation.score, "quality_label": annotation.label}


class _EmbedFn(beam.DoFn):
  def __init__(
    self, model_loader, encode_fn, max_len: int, batch_size: int, field: str, vocab_size: int | None
  ):
    self.model_loader, self.encode_fn = model_loader, encode_fn
    self.max_len, self.batch_size, self.field = max_len, batch_size, field
    self.vocab_size = vocab_size
    self.documents = stages.counter("quality_embed_documents")
    self.batches = stages.counter("quality_embed_batches")
    self._model = None

  def setup(self):
    # (model config, params), once per worker; params go to the device once, not per batch.
    model_config, params = tuple(self.model_loader())[:2]
    embeddings_lib.check_vocabulary_fits(
      self.vocab_size, model_config, self.encode_fn, self.model_loader
    )
    self._model = (model_config, jax.device_put(params))

  def process(self, batch):
    model_config, params = self._model
    vectors = embeddings_lib.embed_texts(
      model_config,
      params,
      self.encode_fn,
      [d["text"] for d in batch],
      max_len=self.max_len,
      batch_size=self.batch_size,
    )
    self.batches.inc()
    self.documents.inc(len(batch))
    for doc, vector in zip(batch, vectors):
      yield {**doc, self.field: vector}


class _ScoreFn(beam.DoFn):
  def __init__(self, classifier_path: str, threshold: float, field: str, drop_embedding: bool):
    self.classifier_path, self.threshold = classifier_path, threshold
    self.field, self.drop_embedding = field, drop_embedding
    self.scored = stages.counter("quality_score_scored")
    self.kept = stages.counter("quality_score_kept")
    self.removed = stages.counter("quality_score_removed")
    self._classifier = None

  def setup(self):
    self._classifier, _ = classifier_lib.load_classifier(self.classifier_path)

  def process(self, batch):
    missing = [d.get("id") for d in batch if self.field not in d]
    if missing:
      raise KeyError(f"documents without '{self.field}' (run Embed first): {missing[:5]}")
    keep, scores = classifier_lib.select(
      self._classifier, np.stack([np.asarray(d[self.field]) for d in batch]), self.threshold
    )
    self.scored.inc(len(batch))
    for doc, keep_it, score in zip(batch, keep, scores):
      if not keep_it:
        self.removed.inc()
        continue
      self.kept.inc()
      out = {k: v for k, v in doc.items() if not (self.drop_embedding and k == self.field)}
      out["quality_score"] = float(score)
      yield out


class _PassThroughFn(beam.DoFn):
  def __init__(self, counter_name: str):
    self.count = stages.counter(counter_name)

  def process(self, doc):
    self.count.inc()
    yield doc


def _split_by_kind(pcoll, kinds, label):
  if kinds is None:
    return pcoll, None
  return pcoll | f"{label}SplitKinds" >> beam.Partition(_kind_partition, 2, kinds)


def _kind_partition(doc, n_partitions, kinds):
  del n_partitions
  return 0 if _kind_matches(doc, kinds) else 1


class Annotate(beam.PTransform):
  """Annotates a deterministic sample of the documents: outputs only the sampled ones.

  A document of a kind in `kinds` (None = all) is sampled when `in_sample(id, fraction, seed)`,
  and comes out with `quality_annotation` (score) and `quality_label` (bool). Counters:
  quality_annotate_{seen,sampled,positive,negative,errors}. on_error='raise' fails the bundle
  on an annotator error (Beam retries it); 'skip' drops the document and counts it.
  """

  def __init__(
    self,
    annotator: annotators.Annotator | None = None,
    fraction: float = 1.0,
    seed: int = 0,
    kinds: Sequence[str] | None = ("code",),
    on_error: str = "raise",
  ):
    super().__init__()
    if on_error not in ("raise", "skip"):
      raise ValueError(f"on_error={on_error!r} is not 'raise' or 'skip'")
    if not 0.0 <= fraction <= 1.0:
      raise ValueError(f"fraction={fraction} must be in [0, 1]")
    self.annotator = annotator or annotators.HeuristicAnnotator()
    self.fraction, self.seed, self.on_error = fraction, seed, on_error
    self.kinds = None if kinds is None else tuple(kinds)

  def expand(self, pcoll):
    return pcoll | "Annotate" >> beam.ParDo(
      _AnnotateFn(self.annotator, self.fraction, self.seed, self.kinds, self.on_error)
    )


class Embed(beam.PTransform):
  """Adds `embedding` (float32 [d_model], `embed_texts`) to documents of `kinds` (None = all).

  `model_loader()` -> (model config, params) runs once per worker in DoFn.setup (e.g.
  `CheckpointLoader(workdir)`); `encode_fn` (text -> token ids) must be picklable, and
  `vocab_size` (its number of ids, if known) is checked there against the model's. Elements are
  grouped with beam.BatchElements (up to `max_group`), then run `batch_size` rows at a time on
  fixed shapes. Documents of other kinds pass through untouched. Counters:
  quality_embed_{documents,batches,passthrough}.
  """

  def __init__(
    self,
    model_loader: Callable[[], tuple],
    encode_fn: Callable[[str], Sequence[int]],
    max_len: int = 512,
    batch_size: int = 8,
    kinds: Sequence[str] | None = ("code",),
    field: str = "embedding",
    max_group: int | None = None,
    vocab_size: int | None = None,
  ):
    super().__init__()
    self.model_loader, self.encode_fn, self.vocab_size = model_loader, encode_fn, vocab_size
    self.max_len, self.batch_size, self.field = max_len, batch_size, field
    self.kinds = None if kinds is None else tuple(kinds)
    self.max_group = max_group or 8 * batch_size

  def expand(self, pcoll):
    selected, others = _split_by_kind(pcoll, self.kinds, "Embed")
    embedded = (
      selected
      | "Batch" >> beam.BatchElements(min_batch_size=1, max_batch_size=self.max_group)
      | "Embed"
      >> beam.ParDo(
        _EmbedFn(
          self.model_loader,
          self.encode_fn,
          self.max_len,
          self.batch_size,
          self.field,
          self.vocab_size,
        )
      )
    )
    if others is None:
      return embedded
    others = others | "PassThrough" >> beam.ParDo(_PassThroughFn("quality_embed_passthrough"))
    return (embedded, others) | "Merge" >> beam.Flatten()


class ScoreAndFilter(beam.PTransform):
  """Scores documents of `kinds` with the saved classifier and keeps those >= threshold.

  Kept documents gain `quality_score` (P(positive)) and lose `embedding` unless
  drop_embedding=False; documents of other kinds pass through untouched. The classifier is
  loaded once per worker (DoFn.setup) from `classifier_path` (local or gs://...). Counters:
  quality_score_{scored,kept,removed,passthrough}; kept + removed = scored.
  """

  def __init__(
    self,
    classifier_path: str,
    threshold: float = 0.5,
    kinds: Sequence[str] | None = ("code",),
    field: str = "embedding",
    drop_embedding: bool = True,
    batch_size: int = 256,
  ):
    super().__init__()
    self.classifier_path, self.threshold = str(classifier_path), threshold
    self.kinds = None if kinds is None else tuple(kinds)
    self.field, self.drop_embedding, self.batch_size = field, drop_embedding, batch_size

  def expand(self, pcoll):
    selected, others = _split_by_kind(pcoll, self.kinds, "Score")
    kept = (
      selected
      | "Batch" >> beam.BatchElements(min_batch_size=1, max_batch_size=self.batch_size)
      | "Score"
      >> beam.ParDo(_ScoreFn(self.classifier_path, self.threshold, self.field, self.drop_embedding))
    )
    if others is None:
      return kept
    others = others | "PassThrough" >> beam.ParDo(_PassThroughFn("quality_score_passthrough"))
    return (kept, others) | "Merge" >> beam.Flatten()


def training_example_json(doc: Mapping, field: str = "embedding") -> str:
  """One annotated + embedded document as a JSON line for `read_training_examples`."""
  return json.dumps(
    {
      "id": doc["id"],
      "quality_label": bool(doc["quality_label"]),
      "quality_annotation": float(doc["quality_annotation"]),
      "embedding": [float(v) for v in np.asarray(doc[field], np.float32)],
    }
  )


class ToTrainingExample(beam.PTransform):
  """Annotated + embedded documents -> JSON lines {id, quality_label, quality_annotation,
  embedding: [floats]}, for `beam.io.WriteToText` and then `read_training_examples`."""

  def __init__(self, field: str = "embedding"):
    super().__init__()
    self.field = field

  def expand(self, pcoll):
    return pcoll | "ToJson" >> beam.Map(training_example_json, field=self.field)


def read_training_examples(file_pattern: str) -> tuple[list[str], np.ndarray, np.ndarray]:
  """(ids, embeddings [n, d], labels [n]) from the JSON lines of `ToTrainingExample`, sorted
  by id so that training does not depend on shard order. Any Beam filesystem pattern works."""
  rows = []
  for match in FileSystems.match([file_pattern])[0].metadata_list:
    with FileSystems.open(match.path) as handle:
      for line in io.TextIOWrapper(handle, encoding="utf-8"):
        if line.strip():
          rows.append(json.loads(line))
  if not rows:
    raise FileNotFoundError(f"no training examples match {file_pattern}")
  rows.sort(key=lambda r: r["id"])
  return (
    [r["id"] for r in rows],
    np.asarray([r["embedding"] for r in rows], np.float32),
    np.asarray([r["quality_label"] for r in rows], bool),
  )
