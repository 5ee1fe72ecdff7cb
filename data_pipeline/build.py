"""Builds the phi-1 corpus: `python -m data_pipeline.build --config=configs/tiny.py --out=DIR`.

Stages (each an Apache Beam pipeline unless noted; DirectRunner here, `--beam_options` for
Dataflow/Flink/Spark), each resumable and idempotent (`data_pipeline.stages`):

  extract      Python sources (and JSONL documents) -> code / textbook / exercise documents;
               bad files and malformed lines counted, skipped
  dedup        exact (content hash) and near-duplicate (MinHash LSH) removal
  decontam     HumanEval / MBPP 13-gram overlap and AST-similarity pruning
  tokenizer    SentencePiece trained on the clean corpus (not Beam: one trainer)
  quality      annotate -> embed with a phi_jax model -> random forest -> keep code above threshold
  math_sources math instructions: CoT, and PoT programs verified in the sandbox
               (data_pipeline.math_instruct; only with math.sources)
  tasks        TFRecord sources of the seqio tasks (train / validation by id hash)
  records      the tasks tokenized, in the random-access form the trainer reads (phi_jax.records)
  cache        the same in seqio's cache layout, for seqio's own readers (corpus.cache)

`DIR` is a local directory or an object-store prefix (gs://...; every path goes through
etils.epath or Beam's FileSystems). A stage is complete once its `stage.json` marker is written,
last; tools that need local files (the trainer, orbax) work in a local temporary directory whose
results are copied into the stage before the marker. `DIR/manifest.json` holds every stage's
counts and is written last; `DIR` is then a `data.dir` for the trainer.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import math
import os
import tempfile
from typing import Any

import apache_beam as beam
import numpy as np
import sentencepiece
import seqio
import tensorflow as tf
from absl import flags, logging
from etils import epath
from seqio import beam_utils

from data_pipeline import (
  annotators,
  backtranslation,
  generation,
  llm_judge,
  math_instruct,
  sources,
  stages,
  synthetic,
)
from data_pipeline import classifier as classifier_lib
from data_pipeline import decontaminate as decontam_lib
from data_pipeline import dedup as dedup_lib
from data_pipeline import embeddings as embeddings_lib
from data_pipeline import quality as quality_lib
from data_pipeline import tokenizer as tokenizer_lib
from phi_jax import cli, configs, files, records, tasks, train, vocabularies
from phi_jax.evaluation import math_problems, sandbox

# The document kinds each task holds; the code tasks are always built, math_instruct with
# math.sources.
TASK_KINDS = {
  tasks.CODE_TEXTBOOK: ("code", "textbook"),
  tasks.CODE_EXERCISES: ("exercise",),
  tasks.MATH_INSTRUCT: ("math_cot", "math_pot"),
  tasks.BACKTRANSLATION: (backtranslation.SEED, backtranslation.AUGMENTED),
}
CODE_TASKS = (tasks.CODE_TEXTBOOK, tasks.CODE_EXERCISES)


class ExtractDocuments(beam.DoFn):
  """(source name, path) -> documents; unreadable files are counted by reason and skipped."""

  def __init__(self, max_file_bytes: int):
    self.max_file_bytes = max_file_bytes

  def process(self, item):
    source, path = item
    stages.counter("files_seen").inc()
    text, reason = sources.read_source(epath.Path(path).read_bytes(), self.max_file_bytes)
    if text is None:
      stages.counter(f"files_skipped_{reason}").inc()
      return
    for doc in sources.documents_from_source(source, text):
      stages.counter(f"extracted_{doc['kind']}").inc()
      yield doc


class ParseDocument(beam.DoFn):
  """A JSONL line -> a document ({text, kind?, source?} at least); malformed lines counted."""

  def process(self, line: str):
    try:
      record = json.loads(line)
      kind = record.get("kind", "code")
      text = record["prompt"] + record["solution"] if kind == "exercise" else record["text"]
    except (ValueError, KeyError, TypeError):
      stages.counter("jsonl_skipped_malformed").inc()
      return
    if (
      kind not in ("code", "textbook", "exercise") or not isinstance(text, str) or not text.strip()
    ):
      stages.counter("jsonl_skipped_malformed").inc()
      return
    fields = {k: record[k] for k in ("prompt", "solution") if kind == "exercise"}
    doc = sources.document(kind, record.get("source", "jsonl"), text, **fields)
    stages.counter(f"extracted_{kind}").inc()
    yield doc


def extract(corpus: Any, out: epath.PathLike, beam_options: list[str]) -> dict:
  def body(stage: epath.Path) -> dict:
    files = [
      (name, str(path))
      for name, path in sources.python_files(sources.python_roots(list(corpus.roots)))
    ]
    if not files and not corpus.jsonl:
      raise stages.EmptyStageError(
        f"no .py files under corpus.roots={list(corpus.roots)} and no corpus.jsonl inputs"
      )
    if corpus.max_files:
      files = files[: corpus.max_files]
    topics = list(sources.topic_documents()) if corpus.help_topics else []

    def build(p):
      docs = (
        p
        | "Files" >> beam.Create(files, reshuffle=False)
        | "Extract" >> beam.ParDo(ExtractDocuments(corpus.max_file_bytes))
      )
      parts = [docs]
      if topics:
        parts.append(p | "Topics" >> beam.Create(topics))
      for i, pattern in enumerate(corpus.jsonl):
        parts.append(
          p
          | f"Read JSONL {i}" >> beam.io.ReadFromText(pattern)
          | f"Parse JSONL {i}" >> beam.ParDo(ParseDocument())
        )
      stages.write_docs(parts | beam.Flatten(), stage, "docs")

    counters = stages.run_pipeline(build, beam_options)
    counters["extracted_textbook"] = counters.get("extracted_textbook", 0) + len(topics)
    counters["extracted_total"] = sum(
      v for k, v in counters.items() if k.startswith("extracted_") and k != "extracted_total"
    )
    stages.require_documents(
      counters,
      "extracted_total",
      "extract",
      f"no readable Python under corpus.roots={list(corpus.roots)}",
    )
    return counters

  return files.run_stage(out, "extract", body)


def filter_stage(
  name: str, transform_fn, previous: str, out: epath.PathLike, beam_options: list[str]
) -> dict:
  """A Beam stage docs -> docs, reading stage `previous` and writing stage `name`."""

  def body(stage: epath.Path) -> dict:
    def build(p):
      docs = stages.read_docs(p, files.completed(out, previous), previous)
      docs = docs | "Count in" >> beam.Map(lambda d: (stages.counter(f"{name}_in").inc(), d)[1])
      kept = docs | name >> transform_fn()
      kept = kept | "Count out" >> beam.Map(lambda d: (stages.counter(f"{name}_kept").inc(), d)[1])
      stages.write_docs(kept, stage, "kept")

    counters = stages.run_pipeline(build, beam_options)
    stages.require_documents(
      counters, f"{name}_kept", name, f"all {counters.get(f'{name}_in', 0)} documents were removed"
    )
    return counters

  return files.run_stage(out, name, body)


def dedup(corpus: Any, out: epath.PathLike, beam_options: list[str]) -> dict:
  config = dedup_lib.make_config(threshold=corpus.dedup_threshold, num_perm=corpus.dedup_num_perm)
  return filter_stage("dedup", lambda: dedup_lib.Deduplicate(config), "extract", out, beam_options)


def decontaminate(
  corpus: Any, mbpp_path: str, out: epath.PathLike, beam_options: list[str]
) -> dict:
  """Drops documents overlapping HumanEval or MBPP (`mbpp_path`: the config's eval.mbpp_path)."""
  references = decontam_lib.load_references(mbpp_path or None)
  return filter_stage(
    "decontam",
    lambda: decontam_lib.Decontaminate(
      references, ngram=corpus.decontam_ngram, tau=corpus.decontam_tau
    ),
    "dedup",
    out,
    beam_options,
  )


def tokenizer(corpus: Any, vocab_size: int, out: epath.PathLike) -> dict:
  """SentencePiece on the deduplicated, decontaminated corpus: OUT/tokenizer/spm.model."""

  def body(stage: epath.Path) -> dict:
    tokenizer_lib.train_sentencepiece(
      stages.iter_docs(files.completed(out, "decontam")),
      stage,
      name="spm",
      vocab_size=vocab_size,
      max_documents=corpus.tokenizer_max_documents,
    )
    return json.loads((stage / "spm.train.json").read_text())["sample"]

  return files.run_stage(out, "tokenizer", body)


def embedding_model(cfg: Any, out: epath.PathLike, beam_options: list[str]) -> str:
  """The phi_jax model whose hidden states embed documents for the quality classifier.

  `corpus.quality_model` names a checkpoint workdir (any converted one); by default a small model
  is first trained briefly on the unfiltered corpus (the paper used a pretrained code model).
  The unfiltered data and the trainer's workdir are local temporary directories; the workdir is
  then copied into OUT/quality_model/run.
  """
  if cfg.corpus.quality_model:
    return cfg.corpus.quality_model

  def body(stage: epath.Path) -> dict:
    # Local: the records reader (ArrayRecord) and orbax read and write local files only.
    with tempfile.TemporaryDirectory(prefix="phi1_quality_model_") as local:
      unfiltered = epath.Path(local) / "data"
      write_task(
        cfg.corpus,
        "phi1_code_textbook",
        [files.completed(out, "decontam")],
        unfiltered,
        beam_options,
      )
      files.copy_file(
        files.completed(out, "tokenizer") / "spm.model", unfiltered / "tokenizer" / "spm.model"
      )
      write_records(cfg, unfiltered, beam_options, task_names=("phi1_code_textbook",))
      model_cfg = copy.deepcopy(cfg)
      model_cfg.data.update(source="seqio", dir=os.fspath(unfiltered), mixture="phi1_pretrain")
      model_cfg.train.update(steps=cfg.corpus.quality_model_steps)
      model_cfg.eval.every_steps = 0  # an embedding model: its held-out loss is not the point
      model_cfg.logging.progress_bar = cfg.logging.progress_bar
      workdir = os.path.join(local, "run")
      metrics = train.run(model_cfg, workdir)
      files.copy_tree(workdir, stage / "run")
    return {"steps": cfg.corpus.quality_model_steps, "final_loss": metrics["loss"]}

  files.run_stage(out, "quality_model", body)
  return os.fspath(epath.Path(out) / "quality_model" / "run")


def quality_tokenizer(corpus: Any, out: epath.PathLike) -> str:
  """The tokenizer file the quality model reads documents with (`corpus.quality_tokenizer`).

  A model must see the ids it was trained on: the corpus SentencePiece for the model trained
  here; for `corpus.quality_model`, the tokenizer named by `corpus.quality_tokenizer`, else a
  `tokenizer.json` in the checkpoint workdir, else the corpus SentencePiece.
  """
  if corpus.quality_tokenizer:
    if not corpus.quality_model:
      raise ValueError(
        f"corpus.quality_tokenizer={corpus.quality_tokenizer!r} without corpus.quality_model: "
        "the model trained by the build reads the corpus SentencePiece; set quality_model to "
        "the checkpoint this tokenizer belongs to, or clear quality_tokenizer"
      )
    return vocabularies.tokenizer_file(corpus.quality_tokenizer)
  if corpus.quality_model:
    beside = epath.Path(corpus.quality_model) / "tokenizer.json"
    if beside.exists():
      return os.fspath(beside)
  return os.fspath(files.completed(out, "tokenizer") / "spm.model")


def quality(cfg: Any, out: epath.PathLike, beam_options: list[str]) -> dict:
  """Annotate a sample, embed code with a phi_jax model, fit a random forest on the annotated
  part, keep the code it scores >= threshold (textbook and exercise documents pass through)."""
  corpus = cfg.corpus
  model_dir = embedding_model(cfg, out, beam_options)
  encode = vocabularies.TokenizerEncoder(quality_tokenizer(corpus, out), corpus.quality_max_len)
  annotator = (
    llm_judge.LLMJudgeAnnotator(corpus.llm_base_url, corpus.llm_model)
    if corpus.llm_base_url
    else annotators.HeuristicAnnotator()
  )
  docs_dir = files.completed(out, "decontam")

  def body(stage: epath.Path) -> dict:
    def embed(p):
      docs = stages.read_docs(p, docs_dir, "decontam")
      embedded = docs | "Embed" >> quality_lib.Embed(
        embeddings_lib.CheckpointLoader(model_dir),
        encode,
        max_len=corpus.quality_max_len,
        vocab_size=encode.vocab_size,
      )
      stages.write_docs(embedded, stage / "embedded", "embedded")
      (
        embedded
        | "Annotate"
        >> quality_lib.Annotate(annotator, fraction=corpus.annotate_fraction, seed=cfg.train.seed)
        | "Examples" >> quality_lib.ToTrainingExample()
        | "Write examples"
        >> beam.io.WriteToText(os.fspath(stage / "annotated" / "examples"), ".jsonl")
      )

    counters = stages.run_pipeline(embed, beam_options)
    _, embeddings, labels = quality_lib.read_training_examples(
      os.fspath(stage / "annotated" / "examples*.jsonl")
    )
    classifier, report = classifier_lib.train_classifier(embeddings, labels, seed=cfg.train.seed)
    classifier_lib.save_classifier(stage / "classifier.joblib", classifier, report)

    def score(p):
      docs = stages.read_docs(p, stage / "embedded", "embedded")
      kept = docs | "Score" >> quality_lib.ScoreAndFilter(
        os.fspath(stage / "classifier.joblib"), threshold=corpus.quality_threshold
      )
      stages.write_docs(kept, stage, "kept")

    counters.update(stages.run_pipeline(score, beam_options))
    (stage / "embedded").rmtree()
    scored = counters.get("quality_score_scored", 0)
    counters.update(
      {f"classifier_{k}": v for k, v in report.items()},
      fraction_kept=counters.get("quality_score_kept", 0) / max(scored, 1),
    )
    stages.require_documents(
      counters,
      "quality_score_kept",
      "quality",
      "the classifier kept no code; lower corpus.quality_threshold",
    )
    return counters

  return files.run_stage(out, "quality", body)


def _split(doc_id: str, validation_fraction: float) -> str:
  bucket = int(hashlib.sha1(doc_id.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
  return "validation" if bucket < validation_fraction else "train"


def _example(doc: dict, task: str) -> bytes:
  keys = set(tasks.SOURCE_FEATURES[task]) | {"id", "kind"}
  feature = {
    k: tf.train.Feature(bytes_list=tf.train.BytesList(value=[doc[k].encode()])) for k in keys
  }
  return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def write_task(
  corpus: Any,
  task: str,
  docs_dirs: list[epath.Path],
  out: epath.PathLike,
  beam_options: list[str],
  inputs: tuple[str, ...] = (),
  kinds: tuple[str, ...] = (),
) -> dict:
  """One seqio task's source files, from the documents of the stages `docs_dirs` of the task's
  kinds (or of `kinds`): OUT/<task>/<split>.tfrecord-SSSSS-of-NNNNN (redone when the stages
  `inputs` change)."""
  kinds = kinds or TASK_KINDS[task]

  def body(stage: epath.Path) -> dict:
    def build(p):
      parts = [stages.read_docs(p, directory, f"docs {directory.name}") for directory in docs_dirs]
      docs = (
        parts | "Join" >> beam.Flatten() | "Select" >> beam.Filter(lambda d: d["kind"] in kinds)
      )
      for split in ("train", "validation"):
        (
          docs
          | f"Split {split}"
          >> beam.Filter(
            lambda d, split=split: _split(d["id"], corpus.validation_fraction) == split
          )
          | f"Count {split}"
          >> beam.Map(lambda d, split=split: (stages.counter(f"{split}_documents").inc(), d)[1])
          | f"Example {split}" >> beam.Map(_example, task)
          | f"Write {split}"
          >> beam.io.WriteToTFRecord(
            os.fspath(stage / f"{split}.tfrecord"), num_shards=corpus.num_shards
          )
        )

    counters = stages.run_pipeline(build, beam_options)
    stages.require_documents(
      counters, "train_documents", task, f"every {'/'.join(kinds)} document was filtered out"
    )
    return counters

  return files.run_stage(out, task, body, inputs=inputs)


def _keyed_document(example: dict, num_shards: int) -> tuple[int, tuple[bytes, np.ndarray, int]]:
  """A task's final example -> (shard, (content digest, tokens, prompt tokens)). Shards and the
  order within them follow the content, so that a rebuild writes the same records."""
  tokens = np.asarray(example["targets"], np.int32)
  prompt = np.asarray(example["loss_weights"]) <= 0  # exercise prompts, masked at the build
  prompt_length = int(np.argmin(prompt)) if not prompt.all() else len(tokens)
  digest = hashlib.sha256(tokens.tobytes()).digest()
  return int.from_bytes(digest[:8], "little") % num_shards, (digest, tokens, prompt_length)


class WriteRecordShard(beam.DoFn):
  """(shard, documents) -> one ArrayRecord shard and its index (phi_jax.records)."""

  def __init__(self, directory: str, split: str, num_shards: int):
    self.directory, self.split, self.num_shards = directory, split, num_shards

  def process(self, keyed):
    shard, documents = keyed
    ordered = sorted(documents, key=lambda document: document[0])
    name = records.shard_name(self.split, shard, self.num_shards)
    count, tokens = records.write_shard(self.directory, name, ((t, p) for _, t, p in ordered))
    stages.counter(f"{self.split}_record_documents").inc(count)
    stages.counter(f"{self.split}_record_tokens").inc(tokens)


def _register_with_local_vocabulary(out: str) -> None:
  """tasks.register over `out`, with its SentencePiece model first copied to a local file:
  TensorFlow's own GCS client reaches fewer object stores than epath and Beam do."""
  local = os.path.join(tempfile.mkdtemp(prefix="phi1_spm_"), "spm.model")
  files.copy_file(tasks.vocabulary_path(out), local)
  tasks.register(out, vocab=seqio.SentencePieceVocabulary(local))


class PreprocessExamples(beam.DoFn):
  """Batches of a task's serialized source examples -> the final examples of `task` (the task or
  one of its parts), through its own seqio preprocessing (one small tf.data pipeline per batch).
  """

  def __init__(self, task: str, source_task: str, setup):
    self.task, self.source_task, self._setup = task, source_task, setup

  def setup(self):
    self._setup()

  def process(self, batch):
    task = seqio.get_mixture_or_task(self.task)
    features = tasks.SOURCE_FEATURES[self.source_task]
    dataset = tf.data.Dataset.from_tensor_slices(batch).map(
      lambda serialized: tf.io.parse_single_example(serialized, features)
    )
    yield from task.preprocess_precache(dataset).as_numpy_iterator()


def write_records(
  cfg: Any,
  out: epath.PathLike,
  beam_options: list[str],
  task_names=CODE_TASKS,
  inputs: tuple[str, ...] = (),
) -> dict:
  """The tasks' final examples (their seqio preprocessing) as the trainer's random-access
  documents, a directory per task part: OUT/records/<task>:<part>/ (phi_jax.records). Sources are read with Beam's filesystems, so
  any object store Beam reaches works."""
  num_shards = int(cfg.corpus.num_shards)

  def body(stage: epath.Path) -> dict:
    setup = functools.partial(_register_with_local_vocabulary, os.fspath(out))
    setup()
    jobs = [
      (name, tasks.part(name, part), split)
      for name in task_names
      for split in ("train", "validation")
      if list((epath.Path(out) / name).glob(f"{split}.tfrecord-*"))
      for part in tasks.PARTS[name]
    ]

    def build(p):
      for name, part, split in jobs:
        label = f"{part}_{split}"
        _ = (
          p
          | f"{label} read"
          >> beam.io.ReadFromTFRecord(tasks.split_pattern(os.fspath(out), name, split))
          | f"{label} batch" >> beam.BatchElements(min_batch_size=64, max_batch_size=1024)
          | f"{label} preprocess" >> beam.ParDo(PreprocessExamples(part, name, setup))
          | f"{label} key" >> beam.Map(_keyed_document, num_shards)
          | f"{label} group" >> beam.GroupByKey()
          | f"{label} write"
          >> beam.ParDo(WriteRecordShard(os.fspath(stage / part), split, num_shards))
        )

    stages.run_pipeline(build, beam_options)
    summary = {"format": records.FORMAT}
    for name, part, split in jobs:
      counts = records.write_split_index(stage / part, split, num_shards)
      task_summary = summary.setdefault(name, {})
      task_summary.setdefault("parts", {}).setdefault(part, {}).update(counts)
      for key, value in counts.items():
        if not key.endswith("_sha256"):
          task_summary[key] = task_summary.get(key, 0) + value
    for name in task_names:
      if not summary.get(name, {}).get("train_documents"):
        raise stages.EmptyStageError(f"stage 'records' wrote no {name} training documents")
    return summary

  return files.run_stage(out, records.STAGE, body, inputs=inputs)


_CACHE_FORMAT = 2  # 2: the tasks' final documents (end-of-text included) are what is cached


def cache(
  cfg: Any,
  out: epath.PathLike,
  beam_options: list[str],
  task_names=CODE_TASKS,
  inputs: tuple[str, ...] = (),
) -> dict:
  """Tokenized tasks in seqio's own cache layout (OUT/cache/<task>/{<split>.tfrecord-*,
  info.<split>.json, stats.<split>.json, COMPLETED}), written with seqio.beam_utils, so seqio's
  readers (`get_dataset(use_cached=True)`) and cache tooling work on it."""

  def body(stage: epath.Path) -> dict:
    setup = functools.partial(tasks.register, os.fspath(out))
    setup()

    def build(p):
      for name in task_names:
        task = seqio.get_mixture_or_task(name)
        task_dir = os.fspath(stage / seqio.get_task_dir_from_name(name))
        done_markers = []
        for split in task.splits:
          label = f"{name}_{split}"
          examples = (
            p
            | f"{label} preprocess"
            >> beam_utils.PreprocessTask(
              task, split, setup_fn=setup, preprocessors_seed=cfg.train.seed
            )
            | f"{label} count"
            >> beam.Map(lambda ex, label=label: (stages.counter(f"{label}_cached").inc(), ex)[1])
          )
          done_markers.append(
            examples
            | f"{label} write"
            >> beam_utils.WriteExampleTfRecord(
              seqio.get_cached_tfrecord_prefix(task_dir, split), num_shards=cfg.corpus.num_shards
            )
          )
          done_markers.append(
            examples
            | f"{label} info" >> beam_utils.GetInfo(cfg.corpus.num_shards)
            | f"{label} write info"
            >> beam_utils.WriteJson(seqio.get_cached_info_path(task_dir, split))
          )
          done_markers.append(
            examples
            | f"{label} stats" >> beam_utils.GetStats(task.output_features)
            | f"{label} write stats"
            >> beam_utils.WriteJson(seqio.get_cached_stats_path(task_dir, split))
          )
        _ = (
          done_markers
          | f"{name} done" >> beam.Flatten()
          | f"{name} none" >> beam.Filter(lambda _: False)
          | f"{name} completed"
          >> beam.io.textio.WriteToText(
            os.path.join(task_dir, "COMPLETED"), num_shards=1, shard_name_template=""
          )
        )

    return {**stages.run_pipeline(build, beam_options), "format": _CACHE_FORMAT}

  previous = files.done(out, "cache")
  if previous is not None and previous.get("format") != _CACHE_FORMAT:
    logging.warning(
      "%s/cache was written before 2026-12, without end-of-text on CodeTextbook documents "
      "(the task now caches each final document): rewriting it",
      out,
    )
    (epath.Path(out) / "cache").rmtree()
  return files.run_stage(out, "cache", body, inputs=inputs)


def synthetic_backend(cfg: Any, out: epath.PathLike) -> generation.Backend:
  """The backend `synthetic.backend` names, configured by the `synthetic` section."""
  syn = cfg.synthetic
  if syn.backend == "openai":
    return generation.OpenAIBackend(
      syn.base_url,
      syn.model,
      api_key_env=syn.api_key_env,
      timeout_s=syn.timeout_s,
      max_retries=syn.max_retries,
      backoff_s=syn.backoff_s,
      concurrency=syn.concurrency,
    )
  if syn.backend == "phi_jax":
    if not syn.checkpoint:
      raise ValueError(
        "synthetic.backend='phi_jax' needs synthetic.checkpoint: a checkpoint workdir "
        "(python -m phi_jax.train or phi_jax.convert made it)"
      )
    return generation.DecoderBackend(
      files.existing(syn.checkpoint, "synthetic.checkpoint"),
      tokenizer=syn.tokenizer or os.fspath(files.completed(out, "tokenizer") / "spm.model"),
    )
  if syn.backend == "pretrained":
    raise ValueError(
      "synthetic.backend='pretrained' is the main job's own pretrained model (python -m "
      "phi_jax.pipeline); for this build serve a checkpoint (python -m phi_jax.serve) and use "
      "backend='openai' with its base_url, or backend='phi_jax' with synthetic.checkpoint"
    )
  raise ValueError(f"synthetic.backend={syn.backend!r}: use 'openai', 'phi_jax' or 'pretrained'")


def _expanded_topics(syn: Any, backend, cache) -> tuple[tuple[str, ...] | None, dict]:
  """synthetic.topics, each replaced by the subtopics the model lists for it when
  synthetic.topic_expansion is set (a topic whose request failed stays as it is)."""
  if not syn.topic_expansion:
    return None, {}
  outcomes = generation.generate(backend, cache, synthetic.topic_requests(syn))
  topics, counters = [], {"topics_requested": len(outcomes)}
  for topic, outcome in zip(syn.topics, outcomes):
    found = []
    if outcome.response is not None:
      found = synthetic.parse_subtopics(topic, outcome.response.text, syn.topic_expansion)
    else:
      counters[f"topics_failed_{outcome.failure}"] = 1 + counters.get(
        f"topics_failed_{outcome.failure}", 0
      )
    topics += found or [topic]
  counters["topics"] = len(topics)
  return tuple(topics), counters


# Counters that say why something was skipped (synthetic data and backtranslation).
_SKIP_COUNTERS = (
  "failed_",
  "rejected_",
  *backtranslation.INSTRUCTION_SKIPS,
  *backtranslation.SEED_SKIPS,
)


def _failure_summary(counters: dict) -> str:
  reasons = {k: v for k, v in sorted(counters.items()) if k.startswith(_SKIP_COUNTERS) and v}
  return ", ".join(f"{k}={v}" for k, v in reasons.items()) or "no failures counted"


def synthesize(cfg: Any, kind: str, out: epath.PathLike, beam_options: list[str]) -> dict:
  """Stage synthetic_textbook / synthetic_exercises: the grid's prompts through the backend (the
  cache first), validated, deduplicated and decontaminated like the corpus."""
  syn, corpus = cfg.synthetic, cfg.corpus
  count = int(syn.textbooks if kind == synthetic.TEXTBOOK else syn.exercises)
  name = synthetic.SOURCES[kind]

  def body(stage: epath.Path) -> dict:
    if kind == synthetic.EXERCISE and syn.run_tests:
      sandbox.check_available(cfg.eval.isolation)  # before any request is paid for
    backend = synthetic_backend(cfg, out)
    cache_dir = syn.cache_dir or os.fspath(epath.Path(out) / "generation_cache")
    counters: dict[str, Any] = {"items": count}
    if kind == synthetic.TEXTBOOK:
      topics, counters_topics = _expanded_topics(syn, backend, generation.ResponseCache(cache_dir))
      counters.update(counters_topics)
      grid = synthetic.textbook_grid(syn, topics)
    else:
      grid = synthetic.exercise_grid(syn)
    shards = list(synthetic.shards(count, int(syn.items_per_shard)))
    budget = math.ceil(syn.max_requests / len(shards)) if syn.max_requests else 0
    references = decontam_lib.load_references(cfg.eval.mbpp_path or None)
    unknown = sorted(set(syn.skip_rules) - set(synthetic.RULES))
    if unknown:
      raise ValueError(
        f"synthetic.skip_rules has unknown rules {unknown}; known: {synthetic.RULES}"
      )
    rules = tuple(r for r in synthetic.RULES if r not in syn.skip_rules)
    limits = sandbox.Limits(memory_bytes=cfg.eval.memory_mb << 20, processes=cfg.eval.processes)

    def build(p):
      docs = (
        p
        | "Shards" >> beam.Create(shards)
        | "Spread" >> beam.Reshuffle()
        | "Generate" >> beam.ParDo(synthetic.GenerateItems(grid, backend, cache_dir, budget))
        | "Validate"
        >> beam.ParDo(
          synthetic.ValidateItems(
            syn.min_tokens, rules, syn.run_tests, syn.test_timeout_s, cfg.eval.isolation, limits
          )
        )
        | "Dedup"
        >> dedup_lib.Deduplicate(
          dedup_lib.make_config(threshold=corpus.dedup_threshold, num_perm=corpus.dedup_num_perm)
        )
        | "Decontaminate"
        >> decontam_lib.Decontaminate(
          references, ngram=corpus.decontam_ngram, tau=corpus.decontam_tau
        )
        | "Count" >> beam.Map(lambda d: (stages.counter("kept").inc(), d)[1])
      )
      stages.write_docs(docs, stage, "kept")

    counters.update(stages.run_pipeline(build, beam_options))
    if not counters.get("kept"):
      raise stages.EmptyStageError(
        f"stage '{name}' kept none of {count} generated items ({_failure_summary(counters)}): "
        f"check synthetic.backend={syn.backend!r} (base_url={syn.base_url!r}, "
        f"model={syn.model!r}) and the templates, or set synthetic."
        f"{'textbooks' if kind == synthetic.TEXTBOOK else 'exercises'}=0"
      )
    return counters

  return files.run_stage(out, name, body)


def _math_documents(cfg: Any) -> tuple[list[dict], dict]:
  """Every document of `math.sources` (GSM8K's PoT candidates still carry their gold answer),
  and counts of what was read."""
  docs, counts = [], {}
  for source in cfg.math.sources:
    if source == math_instruct.GSM8K:
      problems = math_problems.gsm8k(cfg.eval.gsm8k_path or None, split="train")
      chosen = problems[: int(cfg.math.max_problems)] if int(cfg.math.max_problems) else problems
      found = list(math_instruct.gsm8k_documents(chosen))
      counts.update(gsm8k_problems=len(chosen), gsm8k_programs=len(found) - len(chosen))
    else:
      found = math_instruct.read_file(files.existing(source, "math.sources file"))
      counts[f"read_{os.path.basename(source)}"] = len(found)
    docs += found
  return docs, counts


def build_math(cfg: Any, out: epath.PathLike, beam_options: list[str]) -> dict:
  """Stage math_sources: the documents of `math.sources`, GSM8K's derived programs verified in
  the sandbox, deduplicated exactly, and decontaminated (13-gram overlap) against GSM8K's test
  questions and answers."""

  def body(stage: epath.Path) -> dict:
    sandbox.check_available(cfg.eval.isolation)  # before reading anything
    docs, read = _math_documents(cfg)
    references = [
      {"benchmark": "gsm8k", "task_id": p.task_id, "split": "test", "text": p.question, "code": ""}
      for p in math_problems.gsm8k(cfg.eval.gsm8k_path or None, split="test")
    ]
    limits = sandbox.Limits(memory_bytes=cfg.eval.memory_mb << 20, processes=cfg.eval.processes)
    verify = math_instruct.VerifyPrograms(
      float(cfg.eval.program_timeout_s), cfg.eval.isolation, limits
    )

    def build(p):
      kept = (
        p
        | "Documents" >> beam.Create(docs, reshuffle=False)
        | "Batch" >> beam.BatchElements(min_batch_size=64, max_batch_size=256)
        | "Verify" >> beam.ParDo(verify)
        | "Exact duplicates" >> dedup_lib.Deduplicate(dedup_lib.make_config(near=False))
        | "Decontaminate" >> decontam_lib.Decontaminate(references, ngram=cfg.corpus.decontam_ngram)
        | "Count" >> beam.Map(lambda d: (stages.counter("kept").inc(), d)[1])
      )
      stages.write_docs(kept, stage, "kept")

    counters = {
      "sources": list(cfg.math.sources),
      **read,
      **stages.run_pipeline(build, beam_options),
    }
    stages.require_documents(
      counters, "kept", math_instruct.STAGE, "check math.sources and the counts above"
    )
    return counters

  return files.run_stage(out, math_instruct.STAGE, body)


def _bt_seed_pairs(cfg: Any, out: epath.PathLike) -> tuple[list[tuple[str, str]], dict[str, int]]:
  """The seed pairs (the first max_seed) and the seed file's lines skipped, by reason; no pair at
  all stops the stage, with the reasons."""
  bt = cfg.backtranslation
  if bt.seed == "exercises":
    docs = stages.iter_docs(files.completed(out, "quality"))
    found = (
      backtranslation.exercise_pair(d["prompt"], d["solution"])
      for d in docs
      if d["kind"] == "exercise"
    )
    pairs, skipped = sorted(p for p in found if p is not None), {}
    hint = "the corpus has no CodeExercise with a docstring: set backtranslation.seed to a file"
  else:
    path = files.existing(bt.seed, "backtranslation.seed")
    pairs, skipped = backtranslation.read_pairs(path)
    hint = (
      f"{path} has no seed pair ({_failure_summary(skipped)}): each line needs a JSON object "
      "with non-empty string 'instruction' and 'output' (or OpenAssistant's *.trees.jsonl); "
      "fix the file or set backtranslation.seed to another"
    )
  stages.require_documents({"read": len(pairs)}, "read", "bt_seed", hint)
  return (pairs[: int(bt.max_seed)] if int(bt.max_seed) else pairs), skipped


def _bt_unlabelled_texts(cfg: Any, out: epath.PathLike) -> list[str]:
  bt = cfg.backtranslation
  texts = []
  if bt.unlabelled == "corpus":
    for doc in stages.iter_docs(files.completed(out, "quality")):
      if doc["kind"] == "code":
        texts += backtranslation.code_functions(doc["text"], bt.min_lines, bt.max_lines)
      elif doc["kind"] == "textbook":
        texts += backtranslation.passages(doc["text"], bt.min_chars, bt.max_chars)
  else:
    texts = backtranslation.read_texts(files.existing(bt.unlabelled, "backtranslation.unlabelled"))
  # A content-seeded order, so that max_unlabelled picks the same documents on every run.
  texts = sorted(set(texts), key=lambda t: hashlib.sha256(t.encode()).hexdigest())
  return texts[: int(bt.max_unlabelled)] if int(bt.max_unlabelled) else texts


def backtranslation_sources(cfg: Any, out: epath.PathLike, beam_options: list[str]) -> dict:
  """Stages bt_seed (the seed pairs, tagged) and bt_unlabelled (texts with no instruction), both
  deduplicated exactly and decontaminated against HumanEval and MBPP."""
  bt, corpus = cfg.backtranslation, cfg.corpus
  references = decontam_lib.load_references(cfg.eval.mbpp_path or None)

  def clean(p, docs, label):
    return (
      p
      | f"{label} create" >> beam.Create(docs, reshuffle=False)
      | f"{label} dedup" >> dedup_lib.Deduplicate(dedup_lib.make_config(near=False))
      | f"{label} decontaminate"
      >> decontam_lib.Decontaminate(
        references, ngram=corpus.decontam_ngram, tau=corpus.decontam_tau
      )
      | f"{label} count" >> beam.Map(lambda d: (stages.counter("kept").inc(), d)[1])
    )

  def seed_body(stage: epath.Path) -> dict:
    pairs, skipped = _bt_seed_pairs(cfg, out)
    docs = [
      backtranslation.pair(i, o, backtranslation.SEED, bt.seed_system, "seed") for i, o in pairs
    ]

    def build(p):
      stages.write_docs(clean(p, docs, "seed"), stage, "seed")

    counters = {"read": len(docs), **skipped, **stages.run_pipeline(build, beam_options)}
    stages.require_documents(counters, "kept", "bt_seed", "check backtranslation.seed")
    return counters

  def unlabelled_body(stage: epath.Path) -> dict:
    texts = _bt_unlabelled_texts(cfg, out)
    docs = [
      {"id": hashlib.sha256(t.encode()).hexdigest()[:16], "kind": "unlabelled", "text": t}
      for t in texts
    ]

    def build(p):
      stages.write_docs(clean(p, docs, "unlabelled"), stage, "unlabelled")

    counters = {"read": len(docs), **stages.run_pipeline(build, beam_options)}
    stages.require_documents(counters, "kept", "bt_unlabelled", "check backtranslation.unlabelled")
    return counters

  return {
    "bt_seed": files.run_stage(out, "bt_seed", seed_body),
    "bt_unlabelled": files.run_stage(out, "bt_unlabelled", unlabelled_body),
  }


def instruction_data(
  cfg: Any, corpus_dir: epath.PathLike, out: epath.PathLike, docs: list[dict], name: str
) -> dict:
  """A data directory for one model of the backtranslation recipe: the corpus's tokenizer and
  task `backtranslation` (records included) of `docs`, written as stage `name` first."""
  out = epath.Path(files.absolute(out))
  files.copy_tree(files.completed(corpus_dir, "tokenizer"), out / "tokenizer")

  def body(stage: epath.Path) -> dict:
    with (stage / "docs-00000-of-00001.jsonl").open("w") as f:
      for doc in docs:
        f.write(json.dumps(doc, sort_keys=True) + "\n")
    return {"documents": len(docs)}

  manifest = {name: files.run_stage(out, name, body)}
  task = tasks.BACKTRANSLATION
  manifest[task] = write_task(cfg.corpus, task, [files.completed(out, name)], out, [], (name,))
  manifest[records.STAGE] = write_records(cfg, out, [], (task,), inputs=(task,))
  files.write_atomic(out / "manifest.json", json.dumps(manifest, indent=2, sort_keys=True).encode())
  return manifest


def _bt_backend(cfg: Any, model_dir: str, tokenizer: str) -> generation.Backend:
  """backtranslation.base_url's server when set (the synthetic section's client settings), else
  the recipe's own model `model_dir` decoding in this process."""
  bt, syn = cfg.backtranslation, cfg.synthetic
  if bt.base_url:
    return generation.OpenAIBackend(
      bt.base_url,
      bt.model,
      api_key_env=syn.api_key_env,
      timeout_s=syn.timeout_s,
      max_retries=syn.max_retries,
      backoff_s=syn.backoff_s,
      concurrency=syn.concurrency,
    )
  return generation.DecoderBackend(model_dir, tokenizer=tokenizer)


def backward_pairs(cfg: Any, out: epath.PathLike) -> list[dict]:
  """The backward model's training pairs: the seed turned round (output -> instruction),
  untagged."""
  bt = cfg.backtranslation
  return [
    backtranslation.pair(
      backtranslation.backward_instruction(d["output"], bt.backward_lead),
      d["instruction"],
      backtranslation.SEED,
      "",
      "backward",
    )
    for d in stages.iter_docs(files.completed(out, "bt_seed"))
  ]


def round_pairs(out: epath.PathLike, round_: int) -> list[dict]:
  """Round r's training pairs: the seed, and (r >= 1) what round r's curation kept."""
  pairs = list(stages.iter_docs(files.completed(out, "bt_seed")))
  if round_:
    pairs += stages.iter_docs(files.completed(out, f"bt_curate_{round_}"))
  return pairs


def control_pairs(out: epath.PathLike, round_: int) -> list[dict]:
  """Round r's control data: the seed, and as many augmented candidates as round r's curation
  kept, drawn without their scores (in an order seeded by the round and each pair's id). M_r
  beating the model trained on it credits curation, not the quantity of data."""
  kept = sum(1 for _ in stages.iter_docs(files.completed(out, f"bt_curate_{round_}")))
  candidates = sorted(
    stages.iter_docs(files.completed(out, "bt_augment")),
    key=lambda d: hashlib.sha256(f"{round_}\0{d['id']}".encode()).hexdigest(),
  )
  return list(stages.iter_docs(files.completed(out, "bt_seed"))) + candidates[:kept]


def augment(
  cfg: Any, out: epath.PathLike, backward_dir: str, tokenizer: str, beam_options: list[str]
) -> dict:
  """Stage bt_augment: the backward model (a checkpoint workdir, decoded in this process) writes
  the instruction each unlabelled text answers, through the response cache
  (OUT/generation_cache)."""
  bt = cfg.backtranslation
  backend = _bt_backend(cfg, backward_dir, tokenizer)

  def body(stage: epath.Path) -> dict:
    texts = list(stages.iter_docs(files.completed(out, "bt_unlabelled")))
    mode = bt.mode if bt.base_url else generation.COMPLETIONS
    requests = [
      backtranslation.augment_request(
        d["text"],
        bt.backward_lead,
        bt.instruction_max_tokens,
        mode,
        float(bt.instruction_temperature),
      )
      for d in texts
    ]
    cache = os.fspath(epath.Path(out) / "generation_cache")

    def build(p):
      candidates = (
        p
        | "Shards" >> beam.Create(list(synthetic.shards(len(texts), int(bt.items_per_shard))))
        | "Generate"
        >> beam.ParDo(backtranslation.GenerateInstructions(texts, requests, backend, cache, bt))
      )
      stages.write_docs(candidates, stage, "candidates")

    counters = {"unlabelled": len(texts), **stages.run_pipeline(build, beam_options)}
    stages.require_documents(
      counters,
      "candidates",
      "bt_augment",
      f"{_failure_summary(counters)}; a backward model that writes only blank lines "
      "(empty_instruction), echoes its text (copied_output) or runs on to instruction_max_tokens "
      "(runaway) needs more training, backtranslation.instruction_temperature > 0, or "
      "backtranslation.base_url (keep_runaway keeps what the cap cut)",
    )
    return counters

  return files.run_stage(out, "bt_augment", body)


def curate(
  cfg: Any,
  out: epath.PathLike,
  round_: int,
  model_dir: str,
  tokenizer: str,
  beam_options: list[str],
) -> dict:
  """Stage bt_curate_<round>: the round's model (`model_dir`) rates every candidate pair, by the
  rubric or by likelihood (`backtranslation.scorer`); the pairs at or above the threshold are
  kept, tagged as augmented. The manifest holds the score histogram and what was unparseable."""
  bt = cfg.backtranslation
  name = f"bt_curate_{round_}"

  def body(stage: epath.Path) -> dict:
    candidates = list(stages.iter_docs(files.completed(out, "bt_augment")))
    if bt.scorer == "rubric":
      rubric = (
        epath.Path(files.existing(bt.rubric_file, "backtranslation.rubric_file")).read_text()
        if bt.rubric_file
        else backtranslation.RUBRIC
      )
      backend = _bt_backend(cfg, model_dir, tokenizer)
      scored, counters = backtranslation.rubric_scores(
        candidates, backend, os.fspath(epath.Path(out) / "generation_cache"), rubric, bt
      )
    elif bt.scorer == "likelihood":
      scored, counters = backtranslation.likelihood_scores(candidates, model_dir, tokenizer, bt)
    else:
      raise ValueError(f"backtranslation.scorer={bt.scorer!r}: use 'rubric' or 'likelihood'")
    kept = backtranslation.keep(scored, bt)
    counters.update(candidates=len(candidates), kept=len(kept), scorer=bt.scorer)
    with (stage / "docs-00000-of-00001.jsonl").open("w") as f:
      for doc in kept:
        f.write(json.dumps(doc, sort_keys=True) + "\n")
    if not kept:
      raise stages.EmptyStageError(
        f"stage '{name}' kept none of {len(candidates)} candidate pairs ({counters}): lower "
        "backtranslation.threshold, or use scorer='likelihood' for a model too small for a rubric"
      )
    return counters

  del beam_options  # scoring batches on the model's devices, in this process
  return files.run_stage(out, name, body)


# The data arms of the quality ablation (phi_jax.ablation) that are not the corpus itself: the
# stage whose documents each draws on, and the kinds it keeps.
ABLATION_ARMS = {
  "unfiltered": ("decontam", ("code",)),  # every code document: The Stack+'s place
  "random_subset": ("decontam", ("code",)),  # a seeded draw of those, as large as the filtered
  "filtered": ("quality", ("code",)),  # the code the classifier kept, no textbooks
}


def _tokens_of(vocab, doc: dict) -> int:
  return len(vocab.encode(doc["text"]))


def random_subset(cfg: Any, out: epath.PathLike, seed: int) -> epath.Path:
  """Stage ablation/random_subset_docs_<seed>: unfiltered code documents in an order seeded by
  `seed` and each document's id, taken until they hold as many tokens as the filtered code (the
  control that separates the classifier's choice from the smaller size of what it kept)."""
  out = epath.Path(out)

  def body(stage: epath.Path) -> dict:
    vocab = sentencepiece.SentencePieceProcessor(
      model_file=os.fspath(files.completed(out, "tokenizer") / "spm.model")
    )
    target = sum(
      _tokens_of(vocab, d)
      for d in stages.iter_docs(files.completed(out, "quality"))
      if d["kind"] == "code"
    )
    pool = sorted(
      (d for d in stages.iter_docs(files.completed(out, "decontam")) if d["kind"] == "code"),
      key=lambda d: hashlib.sha256(f"{seed}\0{d['id']}".encode()).hexdigest(),
    )
    tokens, chosen = 0, 0
    with (stage / "docs-00000-of-00001.jsonl").open("w") as f:
      for doc in pool:
        if tokens >= target:
          break
        f.write(json.dumps(doc, sort_keys=True) + "\n")
        tokens, chosen = tokens + _tokens_of(vocab, doc), chosen + 1
    return {"documents": chosen, "tokens": tokens, "target_tokens": target, "pool": len(pool)}

  files.run_stage(out / "ablation", f"random_subset_docs_{seed}", body)
  return files.completed(out / "ablation", f"random_subset_docs_{seed}")


def ablation_data(cfg: Any, out: epath.PathLike, arm: str, seed: int, beam_options: list[str]):
  """The data directory of one arm of the quality ablation, built beside the corpus OUT:
  OUT/ablation/<arm> (random_subset: OUT/ablation/random_subset_<seed>, a draw per seed) with
  the arm's documents as the phi1_code_textbook task, the corpus tokenizer and the trainer's
  records. Each part is a stage, so a rerun redoes only what is missing."""
  out = epath.Path(out)
  stage, kinds = ABLATION_ARMS[arm]
  if arm == "random_subset":
    data_dir, docs_dirs = out / "ablation" / f"{arm}_{seed}", [random_subset(cfg, out, seed)]
  else:
    data_dir, docs_dirs = out / "ablation" / arm, [files.completed(out, stage)]
  write_task(cfg.corpus, tasks.CODE_TEXTBOOK, docs_dirs, data_dir, beam_options, kinds=kinds)
  spm = data_dir / "tokenizer" / "spm.model"
  if not spm.exists():
    files.write_atomic(spm, (files.completed(out, "tokenizer") / "spm.model").read_bytes())
  write_records(cfg, data_dir, beam_options, task_names=(tasks.CODE_TEXTBOOK,))
  return data_dir


def run(cfg: Any, out: epath.PathLike, beam_options: list[str] | None = None) -> dict:
  """All stages; returns (and writes as OUT/manifest.json, last) every stage's counts."""
  cfg, out = configs.resolve_paths(cfg), epath.Path(files.absolute(out))
  beam_options = list(beam_options or [])
  manifest = {
    "extract": extract(cfg.corpus, out, beam_options),
    "dedup": dedup(cfg.corpus, out, beam_options),
    "decontam": decontaminate(cfg.corpus, cfg.eval.mbpp_path, out, beam_options),
    "tokenizer": tokenizer(cfg.corpus, int(cfg.model.vocab_size), out),
    "quality": quality(cfg, out, beam_options),
  }
  docs_stages = ["quality"]
  for kind, count in (
    (synthetic.TEXTBOOK, cfg.synthetic.textbooks),
    (synthetic.EXERCISE, cfg.synthetic.exercises),
  ):
    if count:
      name = synthetic.SOURCES[kind]
      manifest[name] = synthesize(cfg, kind, out, beam_options)
      docs_stages.append(name)
  if int(cfg.backtranslation.rounds):
    manifest.update(backtranslation_sources(cfg, out, beam_options))
  docs_dirs = [files.completed(out, name) for name in docs_stages]
  built = CODE_TASKS
  for task in CODE_TASKS:
    manifest[task] = write_task(
      cfg.corpus, task, docs_dirs, out, beam_options, inputs=tuple(docs_stages)
    )
  if cfg.math.sources:
    manifest[math_instruct.STAGE] = build_math(cfg, out, beam_options)
    manifest[tasks.MATH_INSTRUCT] = write_task(
      cfg.corpus,
      tasks.MATH_INSTRUCT,
      [files.completed(out, math_instruct.STAGE)],
      out,
      beam_options,
      inputs=(math_instruct.STAGE,),
    )
    built += (tasks.MATH_INSTRUCT,)
  manifest[records.STAGE] = write_records(cfg, out, beam_options, built, inputs=built)
  if cfg.corpus.cache:
    manifest["cache"] = cache(cfg, out, beam_options, built, inputs=built)
  files.write_atomic(out / "manifest.json", json.dumps(manifest, indent=2, sort_keys=True).encode())
  return manifest


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  flag_values = flags.FLAGS
  manifest = run(flag_values.config, flag_values.out, flag_values.beam_options)
  print(json.dumps(manifest, indent=2, sort_keys=True))


if __name__ == "__main__":
  cli.define_config(help_text="A configs/*.py file (its corpus section).")
  flags.DEFINE_string(
    "out",
    None,
    "Output directory (relative to the current directory, "
    "absolute, or gs://): the trainer's data.dir.",
  )
  flags.DEFINE_list(
    "beam_options",
    [],
    "Beam pipeline options, e.g. --beam_options=--runner=DataflowRunner,--project=...",
  )
  flags.mark_flags_as_required(["config", "out"])
  cli.run(main)
