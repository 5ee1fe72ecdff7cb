"""data_pipeline.dedup: exact and near-duplicate removal, in memory and on Beam's DirectRunner."""

import itertools
import random
import re

import numpy as np
import pytest

from data_pipeline import dedup


def synthetic_code(rng: random.Random, n_lines: int = 80) -> str:
  """Code-like text from a 2000-identifier vocabulary: unrelated documents share no shingles."""
  vocab = [f"name{i}" for i in range(2000)]
  lines = []
  for _ in range(n_lines):
    a, b, c, d = rng.sample(vocab, 4)
    lines.append(f"{a} = {b}({c}, {d}.{rng.choice(vocab)})\n")
  return "".join(lines)


def replace_words(text: str, positions: list[int], prefix: str) -> str:
  """The text with the words at `positions` (word indices, as code_words counts) renamed."""
  counter = itertools.count()

  def rename(match):
    k = next(counter)
    return f"{prefix}{k}" if k in positions else match.group(0)

  return re.sub(r"\w+", rename, text)


def doc(doc_id: str, text: str, kind: str = "code") -> dict:
  return {"id": doc_id, "kind": kind, "source": f"test:{doc_id}", "text": text}


def exact_jaccard(a: str, b: str, k: int = 5) -> float:
  sa, sb = dedup.shingles(a, k), dedup.shingles(b, k)
  return len(sa & sb) / len(sa | sb)


@pytest.fixture(scope="module")
def corpus():
  rng = random.Random(0)
  base = [doc(f"doc-{i:03d}", synthetic_code(rng)) for i in range(12)]
  texts = {d["id"]: d["text"] for d in base}
  extra = [
    # exact copies: the smallest id of each group is the one kept
    doc("a-copy-of-005", texts["doc-005"]),  # sorts before doc-005: doc-005 goes
    doc("zz-copy-of-006", texts["doc-006"]),  # doc-006 stays
    doc("zz-copy2-of-006", texts["doc-006"], kind="textbook"),
    # near copies: 3 words of 400 renamed (Jaccard ~0.93); the larger id goes
    doc("zz-near-001", replace_words(texts["doc-001"], [10, 150, 300], "edit")),
    doc("a-near-002", replace_words(texts["doc-002"], [5, 160, 310], "edit")),  # doc-002 goes
    # a document sharing 50 of doc-003's 80 lines (Jaccard ~0.45) is a different one: kept
    doc(
      "zz-partial-003",
      "".join(texts["doc-003"].splitlines(keepends=True)[:50])
      + synthetic_code(random.Random(99), 30),
    ),
    # no words at all: never a near duplicate
    doc("zz-punctuation", "()[]{}\n"),
  ]
  return base + extra


EXPECTED_REMOVED = {"doc-005", "zz-copy-of-006", "zz-copy2-of-006", "zz-near-001", "doc-002"}
EXPECTED_COUNTERS = {"exact_duplicates_removed": 3, "near_duplicates_removed": 2}


def test_fixture_is_what_it_claims(corpus):
  texts = {d["id"]: d["text"] for d in corpus}
  for near, orig in [("zz-near-001", "doc-001"), ("a-near-002", "doc-002")]:
    assert texts[near] != texts[orig]
    assert 0.9 <= exact_jaccard(texts[near], texts[orig]) < 0.95
  assert 0.35 < exact_jaccard(texts["zz-partial-003"], texts["doc-003"]) < 0.6
  assert max(exact_jaccard(texts["doc-000"], texts[f"doc-{i:03d}"]) for i in range(1, 12)) == 0


def test_pure_removes_exact_and_near_duplicates(corpus):
  kept, stats = dedup.deduplicate(corpus)
  kept_ids = {d["id"] for d in kept}
  assert {d["id"] for d in corpus} - kept_ids == EXPECTED_REMOVED
  assert stats == EXPECTED_COUNTERS
  assert [d["id"] for d in kept] == sorted(kept_ids)
  assert "zz-partial-003" in kept_ids and "zz-punctuation" in kept_ids


def test_threshold_and_exact_only_modes(corpus):
  kept, stats = dedup.deduplicate(corpus, threshold=0.99)  # the near copies are ~0.9 similar
  assert stats == {"exact_duplicates_removed": 3, "near_duplicates_removed": 0}
  assert {"zz-near-001", "a-near-002", "doc-002"} <= {d["id"] for d in kept}
  _, stats = dedup.deduplicate(corpus, near=False)
  assert stats["near_duplicates_removed"] == 0
  _, stats = dedup.deduplicate(corpus, threshold=0.3)  # now the partial copy goes too
  assert stats["near_duplicates_removed"] == 3


def test_minhash_estimates_jaccard(corpus):
  cfg = dedup.DedupConfig()
  texts = {d["id"]: d["text"] for d in corpus}
  for a, b in [("zz-near-001", "doc-001"), ("zz-partial-003", "doc-003"), ("doc-000", "doc-001")]:
    est = dedup.jaccard(dedup.signature(texts[a], cfg), dedup.signature(texts[b], cfg))
    assert abs(est - exact_jaccard(texts[a], texts[b])) < 0.08
  assert dedup.signature("()", cfg) is None
  sig = dedup.signature(texts["doc-000"], cfg)
  assert sig.dtype == np.uint32 and sig.shape == (128,)
  assert not np.array_equal(sig, dedup.signature(texts["doc-000"], dedup.make_config(cfg, seed=2)))


def test_lsh_params_and_config_checks():
  assert dedup.lsh_params(0.8, 128) == (9, 13)  # datasketch's choice for these settings
  bands, rows = dedup.DedupConfig(threshold=0.85).banding
  assert bands * rows <= 128
  assert dedup.DedupConfig(bands=16, rows=8).banding == (16, 8)
  with pytest.raises(ValueError):
    dedup.DedupConfig(bands=20, rows=8)
  with pytest.raises(ValueError):
    dedup.DedupConfig(threshold=0.0)


def test_deterministic_under_reordering(corpus):
  reference, _ = dedup.deduplicate(corpus)
  for seed in range(3):
    shuffled = corpus[:]
    random.Random(seed).shuffle(shuffled)
    kept, _ = dedup.deduplicate(shuffled)
    assert kept == reference


def test_non_unique_ids_are_an_error(corpus):
  clash = dict(corpus[0], text=corpus[1]["text"] + "\nextra = 1\n")
  with pytest.raises(ValueError, match="not unique"):
    dedup.deduplicate(corpus + [clash])


def test_beam_matches_pure_and_counts(corpus, beam_run):
  shuffled = corpus[:]
  random.Random(7).shuffle(shuffled)
  out, counters = beam_run(shuffled, dedup.Deduplicate(threshold=0.85))
  expected, stats = dedup.deduplicate(corpus, threshold=0.85)
  assert sorted(out, key=dedup.rank) == expected
  assert counters == stats == EXPECTED_COUNTERS


def test_beam_assert_that_exact_only(corpus):
  import apache_beam as beam
  from apache_beam.testing.util import assert_that, equal_to

  expected = sorted(d["id"] for d in dedup.deduplicate(corpus, near=False)[0])
  assert "zz-near-001" in expected and "doc-005" not in expected
  with beam.Pipeline(runner="DirectRunner") as p:
    ids = p | beam.Create(corpus) | dedup.Deduplicate(near=False) | beam.Map(lambda d: d["id"])
    assert_that(ids, equal_to(expected))
