"""Builds the phi-1 corpus: `python -m data_pipeline.build --config=configs/tiny.py --out=DIR`.

Stages (each an Apache Beam pipeline unless noted; DirectRunner here, `--beam_options` for
Dataflow/Flink/Spark), each resumable and idempotent (`data_pipeline.stages`):

  extract      Python sources -> code / textbook / exercise documents; bad files counted, skipped
  dedup        exact (content hash) and near-duplicate (MinHash LSH) removal
  decontam     HumanEval / MBPP 13-gram overlap and AST-similarity pruning
  tokenizer    SentencePiece trained on the clean corpus (not Beam: one trainer)
  quality      annotate -> embed with a phi_jax model -> random forest -> keep code above threshold
  tasks        TFRecord sources of the seqio tasks (train / validation by id hash)

`DIR/manifest.json` holds every stage's counts; `DIR` is then a `data.dir` for the trainer.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import apache_beam as beam

from data_pipeline import sources, stages

TASK_KINDS = {"phi1_code_textbook": ("code", "textbook"), "phi1_code_exercises": ("exercise",)}


class ExtractDocuments(beam.DoFn):
  """(source name, path) -> documents; unreadable files are counted by reason and skipped."""

  def __init__(self, max_file_bytes: int):
    self.max_file_bytes = max_file_bytes

  def process(self, item):
    source, path = item
    stages.counter("files_seen").inc()
    text, reason = sources.read_source(Path(path).read_bytes(), self.max_file_bytes)
    if text is None:
      stages.counter(f"files_skipped_{reason}").inc()
      return
    for doc in sources.documents_from_source(source, text):
      stages.counter(f"extracted_{doc['kind']}").inc()
      yield doc


def extract(corpus: Any, out: Path, beam_options: list[str]) -> dict:
  def body(tmp: Path) -> dict:
    files = [(name, str(path)) for name, path in
             sources.python_files(sources.python_roots(list(corpus.roots)))]
    if corpus.max_files:
      files = files[:corpus.max_files]
    topics = list(sources.topic_documents()) if corpus.help_topics else []

    def build(p):
      docs = (p | "Files" >> beam.Create(files, reshuffle=False)
              | "Extract" >> beam.ParDo(ExtractDocuments(corpus.max_file_bytes)))
      if topics:
        docs = (docs, p | "Topics" >> beam.Create(topics)) | beam.Flatten()
      stages.write_docs(docs, tmp, "docs")

    counters = stages.run_pipeline(build, beam_options)
    counters["extracted_textbook"] = counters.get("extracted_textbook", 0) + len(topics)
    counters["extracted_total"] = sum(v for k, v in counters.items() if k.startswith("extracted_")
                                      and k != "extracted_total")
    stages.require_documents(counters, "extracted_total", "extract",
                             f"no readable Python under corpus.roots={list(corpus.roots)}")
    return counters
  return stages.run_stage(out, "extract", body)


def filter_stage(name: str, transform_fn, previous: str, out: Path,
                 beam_options: list[str]) -> dict:
  """A Beam stage docs -> docs, reading stage `previous` and writing stage `name`."""
  def body(tmp: Path) -> dict:
    def build(p):
      docs = stages.read_docs(p, out / previous, previous)
      docs = docs | "Count in" >> beam.Map(lambda d: (stages.counter(f"{name}_in").inc(), d)[1])
      kept = docs | name >> transform_fn()
      kept = kept | "Count out" >> beam.Map(lambda d: (stages.counter(f"{name}_kept").inc(), d)[1])
      stages.write_docs(kept, tmp, "kept")

    counters = stages.run_pipeline(build, beam_options)
    stages.require_documents(counters, f"{name}_kept", name,
                             f"all {counters.get(f'{name}_in', 0)} documents were removed")
    return counters
  return stages.run_stage(out, name, body)


def dedup(corpus: Any, out: Path, beam_options: list[str]) -> dict:
  from data_pipeline import dedup as dedup_lib
  config = dedup_lib.make_config(threshold=corpus.dedup_threshold, num_perm=corpus.dedup_num_perm)
  return filter_stage("dedup", lambda: dedup_lib.Deduplicate(config), "extract", out, beam_options)


def decontaminate(corpus: Any, out: Path, beam_options: list[str]) -> dict:
  from data_pipeline import decontaminate as decontam_lib
  references = decontam_lib.load_references(corpus.mbpp_path or None)
  return filter_stage(
      "decontam", lambda: decontam_lib.Decontaminate(references, ngram=corpus.decontam_ngram,
                                                     tau=corpus.decontam_tau),
      "dedup", out, beam_options)


def _split(doc_id: str, validation_fraction: float) -> str:
  bucket = int(hashlib.sha1(doc_id.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
  return "validation" if bucket < validation_fraction else "train"


def _example(doc: dict) -> bytes:
  import tensorflow as tf
  keys = ("prompt", "solution") if doc["kind"] == "exercise" else ("text",)
  feature = {k: tf.train.Feature(bytes_list=tf.train.BytesList(value=[doc[k].encode()]))
             for k in keys + ("id", "kind", "source")}
  return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def write_task(corpus: Any, task: str, docs_dir: Path, out: Path, beam_options: list[str]) -> dict:
  """One seqio task's source files: OUT/<task>/<split>.tfrecord-SSSSS-of-NNNNN."""
  kinds = TASK_KINDS[task]

  def body(tmp: Path) -> dict:
    def build(p):
      docs = (stages.read_docs(p, docs_dir, "docs")
              | "Select" >> beam.Filter(lambda d: d["kind"] in kinds))
      for split in ("train", "validation"):
        (docs
         | f"Split {split}" >> beam.Filter(
             lambda d, split=split: _split(d["id"], corpus.validation_fraction) == split)
         | f"Count {split}" >> beam.Map(
             lambda d, split=split: (stages.counter(f"{split}_documents").inc(), d)[1])
         | f"Example {split}" >> beam.Map(_example)
         | f"Write {split}" >> beam.io.WriteToTFRecord(str(tmp / f"{split}.tfrecord"),
                                                        num_shards=corpus.num_shards))

    counters = stages.run_pipeline(build, beam_options)
    stages.require_documents(counters, "train_documents", task,
                             f"every {'/'.join(kinds)} document was filtered out")
    return counters
  return stages.run_stage(out, task, body)
