"""The vocabulary: SentencePiece training and round trips on real corpus documents, seqio/TF
consistency, end-of-text handling, and the Hugging Face tokenizer.json adapter."""

import json
import os
import pickle

import pytest
import sentencepiece as spm
import seqio
import tensorflow as tf
from sentencepiece import sentencepiece_model_pb2

from data_pipeline import sources
from data_pipeline import tokenizer as tok
from phi_jax import files, vocabularies

VOCAB_SIZE = 1024
TRAIN_CHARS = 400_000
STRIDE = 9  # training files: every 9th stdlib file; held-out files: an offset of that grid

EDGE_CASES = [
  "",
  "\n",
  "\n\n\n",
  "    ",
  "x = 1   \n",  # trailing spaces
  "\tif x:\n\t\treturn x\n",  # tabs
  "def f():\r\n    return 1\r\n",  # CRLF
  "a\rb\r\r\n",  # lone CR
  "   leading\n\n\n    \n\ttrailing\t \n",  # blank and whitespace-only lines
  "  a  b   c    d     e      f       g        h",
  "π = 3.14159\nnaïve_ünïcode_名前 = 'Grüße, мир, 世界'\n",  # unicode identifiers/strings
  "print('emoji 😀🐍👩‍👩‍👧 ✓')\n",  # 4-byte chars, ZWJ sequence
  "ﬁ ½ Ａ \u3000 e\u0301 \ufeffbom \u200b\n",  # NFKC would change every one of these
  "nul\x00 bell\x07 esc\x1b del\x7f\n",
  "x" * 20_000 + "\n" + " " * 300 + "y\n",  # long line, long whitespace run
  "s = '<|endoftext|>'\n# <|endoftext|> in a comment\n<|endoftext|>",
  "<pad> <unk> <s> </s> <0x41> ▁▁\u2581",  # piece-like text (U+2581 checked below)
]


def _read(selection, all_kinds=False):
  """Corpus documents of the files: code only, or code + textbook + exercise documents."""
  docs = []
  for name, path in selection:
    text, _ = sources.read_source(path.read_bytes(), 1_000_000)
    if text is None:
      continue
    if all_kinds:
      docs.extend(sources.documents_from_source(name, text))
    else:
      docs.append(sources.document("code", name, text))
  return docs


@pytest.fixture(scope="module")
def corpus():
  files = list(sources.python_files(sources.python_roots(["stdlib"])))
  train_files = files[0::STRIDE][:150]
  heldout_files = files[4::STRIDE][:90]
  assert not {n for n, _ in train_files} & {n for n, _ in heldout_files}
  train = _read(train_files) + list(sources.topic_documents())[::4]
  heldout = _read(heldout_files, all_kinds=True)
  heldout += list(sources.topic_documents())[1::4][:40]
  assert len(train) > 100 and len(heldout) > 100
  return {"train": train, "heldout": heldout}


@pytest.fixture(scope="module")
def model_path(corpus, tmp_path_factory):
  out = tmp_path_factory.mktemp("spm")
  return tok.train_sentencepiece(
    corpus["train"], out, vocab_size=VOCAB_SIZE, max_chars=TRAIN_CHARS, seed=0
  )


@pytest.fixture(scope="module")
def vocab(model_path):
  return vocabularies.vocabulary(model_path)


def _assert_round_trips(vocab, texts):
  """Every text decodes back bit for bit; returns (UTF-8 bytes checked, tokens)."""
  failures, n_tokens = [], 0
  for text in texts:
    ids = vocab.encode(text)
    n_tokens += len(ids)
    if vocab.decode(ids) != text:
      failures.append(text[:80])
  assert not failures, f"{len(failures)} of {len(texts)} texts do not round-trip: {failures[:3]}"
  return sum(len(t.encode("utf-8")) for t in texts), n_tokens


# ---------------------------------------------------------------------------------------------
# The trained SentencePiece model


def test_model_file_and_metadata(model_path):
  assert model_path.name == "tokenizer.model"
  assert not [p for p in os.listdir(model_path.parent) if p.endswith(".tmp")]
  meta = json.loads((model_path.parent / "tokenizer.train.json").read_text())
  assert meta["options"]["vocab_size"] == VOCAB_SIZE
  assert TRAIN_CHARS <= meta["sample"]["chars"] < TRAIN_CHARS + tok.DEFAULTS["max_sentence_length"]
  assert meta["sample"]["chars_before_sampling"] > TRAIN_CHARS  # the sample really was bounded


def test_special_ids(vocab):
  assert isinstance(vocab, seqio.SentencePieceVocabulary)
  assert (vocab.pad_id, vocab.eos_id, vocab.unk_id) == (0, 1, 2)
  assert vocab.bos_id == -1  # none
  assert vocabularies.eot_id(vocab) == vocabularies.EOT_ID == 1
  sp = vocab.tokenizer
  assert sp.id_to_piece(1) == "<|endoftext|>" and sp.is_control(1)
  assert vocab.vocab_size == VOCAB_SIZE
  proto = sentencepiece_model_pb2.ModelProto.FromString(vocab.sp_model)
  newline = proto.pieces[sp.piece_to_id("\n")]
  assert newline.piece == "\n" and newline.type == newline.USER_DEFINED
  assert sp.piece_to_id("<0xF0>") != sp.unk_id()  # byte fallback pieces exist


def test_training_documents_round_trip(vocab, corpus):
  n_bytes, _ = _assert_round_trips(vocab, [d["text"] for d in corpus["train"][:60]])
  assert n_bytes > 100_000


def test_unseen_documents_round_trip(vocab, corpus):
  texts = [d["text"] for d in corpus["heldout"]]
  kinds = {d["kind"] for d in corpus["heldout"]}
  assert kinds == {"code", "textbook", "exercise"}
  n_bytes, n_tokens = _assert_round_trips(vocab, texts)
  assert len(texts) > 100 and n_bytes > 500_000
  # The same files rewritten with CRLF line ends and tab indentation (neither is in the corpus).
  code = [d["text"] for d in corpus["heldout"] if d["kind"] == "code"][:30]
  _assert_round_trips(vocab, [t.replace("\n", "\r\n") for t in code])
  _assert_round_trips(vocab, [t.replace("    ", "\t") for t in code])
  # Unseen code compresses: a vocabulary of 1024 gets well past one byte per token.
  assert n_bytes / n_tokens > 2.0


def test_edge_cases_round_trip(vocab):
  cases = [c for c in EDGE_CASES if "\u2581" not in c]
  _assert_round_trips(vocab, cases)
  for case in cases:
    assert vocab.unk_id not in vocab.encode(case), case  # byte fallback: nothing is unknown
  emoji = vocab.tokenizer.encode("🐍", out_type=str)
  assert emoji == ["<0xF0>", "<0x9F>", "<0x90>", "<0x8D>"]


def test_whitespace_structure(vocab):
  sp = vocab.tokenizer
  assert sp.encode("\n\n", out_type=str) == ["\n", "\n"]
  pieces = sp.encode("def f():\n        return 1\n", out_type=str)
  assert "\n" in pieces and all(p == "\n" or "\n" not in p for p in pieces)
  assert "▁▁▁▁▁▁▁▁" in pieces  # an 8-space indent is one token
  assert sp.encode(" x", out_type=str)[0].startswith("▁")  # no dummy prefix, space kept


def test_literal_u2581_is_the_documented_limitation(vocab):
  assert vocab.decode(vocab.encode("a\u2581b")) == "a b"


def test_end_of_text(vocab):
  text = "s = '<|endoftext|>'  # <|endoftext|>\n"
  ids = vocab.encode(text)
  assert vocabularies.EOT_ID not in ids  # literal text never becomes the separator
  assert vocab.decode(ids) == text
  assert vocab.decode([vocabularies.EOT_ID]) == ""
  # The pipeline separates documents by the id; decoding stops at the first one.
  a, b = "def a():\n    pass\n", "def b():\n    pass\n"
  stream = (
    vocab.encode(a) + [vocabularies.eot_id(vocab)] + vocab.encode(b) + [vocabularies.eot_id(vocab)]
  )
  assert stream.count(vocabularies.EOT_ID) == 2
  assert vocab.decode(stream) == a
  assert vocab.tokenizer.decode(stream) == a + b  # the raw processor drops the control piece


def test_tf_matches_python(vocab, corpus):
  texts = [d["text"] for d in corpus["heldout"][:40]] + [c for c in EDGE_CASES if c]
  expected = [vocab.encode(t) for t in texts]
  got = vocab.encode_tf(tf.constant(texts))  # batched: ragged
  assert got.to_list() == expected
  assert vocab.encode_tf(tf.constant(texts[0])).numpy().tolist() == expected[0]
  # Graph mode, as in a seqio preprocessor.
  ds = tf.data.Dataset.from_tensor_slices(texts[:5]).map(vocab.encode_tf)
  assert [x.tolist() for x in ds.as_numpy_iterator()] == expected[:5]
  # decode_tf on padded rows (pad id 0 decodes to nothing) and on one row.
  dense = tf.ragged.constant(expected, dtype=tf.int32).to_tensor(0)
  decoded = [s.decode("utf-8") for s in vocab.decode_tf(dense).numpy()]
  assert decoded == [vocab.decode(e) for e in expected]
  assert vocab.decode_tf(tf.constant(expected[1])).numpy().decode() == vocab.decode(expected[1])


# ---------------------------------------------------------------------------------------------
# Training behaviour


def test_training_is_deterministic(corpus, tmp_path):
  docs = corpus["train"][:40]
  kw = dict(vocab_size=512, max_chars=150_000, seed=3)
  a = tok.train_sentencepiece(docs, tmp_path / "a", **kw).read_bytes()
  b = tok.train_sentencepiece(iter(docs), tmp_path / "b", **kw).read_bytes()
  assert a == b
  other = tok.train_sentencepiece(docs[::-1], tmp_path / "c", **kw).read_bytes()
  assert other != a  # a different sample gives a different model: the check can fail


def test_sample_is_bounded_and_seeded(corpus):
  docs = corpus["train"]
  kw = dict(max_documents=50, max_chars=100_000, max_sentence_length=2048)
  s0, stats = tok.training_sample(docs, seed=0, **kw)
  s0_again, _ = tok.training_sample(iter(docs), seed=0, **kw)
  s1, _ = tok.training_sample(docs, seed=1, **kw)
  assert s0 == s0_again and s0 != s1
  assert stats["documents"] == 50 and 100_000 <= stats["chars"] < 100_000 + 2048
  assert all(len(c.encode()) <= 2048 for c in s0)
  full, stats = tok.training_sample(
    docs[:5], seed=0, max_documents=5, max_chars=10**9, max_sentence_length=2048
  )
  assert "".join(full) == "".join(d["text"] for d in docs[:5])  # nothing lost when unbounded


def test_split_for_training():
  text = "short\r\x0c\u2028\n" + "é" * 3000 + " tail\n" + ("word " * 2000) + "\nend"
  chunks = list(tok.split_for_training(text, 1000))
  assert "".join(chunks) == text
  assert all(0 < len(c.encode()) <= 1000 for c in chunks)
  assert chunks[0] == "short\r\x0c\u2028\n"  # only '\n' ends a line
  words = [c for c in chunks if "word" in c]
  assert len(words) == 10 and all(c.startswith(" ") for c in words[1:])  # cut before spaces
  assert sum(c.strip("é") == "" for c in chunks) == 6  # no space: cut between characters


def test_long_documents_are_not_dropped(tmp_path):
  # One 100 KB document, far over SentencePiece's per-sentence limit, holding the only
  # occurrences of an identifier: it must be learned, so the document was trained on.
  long_doc = "".join(f"qzxv_total = qzxv_total + {i % 7}\n" for i in range(3000))
  filler = ["def add(a, b):\n    return a + b\n"] * 20
  path = tok.train_sentencepiece(
    [long_doc] + filler, tmp_path, vocab_size=300, max_sentence_length=2048
  )
  sp = spm.SentencePieceProcessor(model_file=str(path))
  assert sp.encode("qzxv", out_type=str) == ["qzxv"]  # q, z, x, v are in no other document
  meta = json.loads((tmp_path / "tokenizer.train.json").read_text())
  assert meta["sample"]["chunks"] > 50


def test_failed_training_keeps_the_old_model(corpus, tmp_path):
  path = tok.train_sentencepiece(corpus["train"][:10], tmp_path, vocab_size=600)
  before = path.read_bytes()
  with pytest.raises(RuntimeError):  # vocab far too large for three tiny documents
    tok.train_sentencepiece(["a = 1\n", "b = 2\n", "c = 3\n"], tmp_path, vocab_size=5000)
  assert path.read_bytes() == before
  assert sorted(os.listdir(tmp_path)) == ["tokenizer.model", "tokenizer.train.json"]


def test_atomic_write_leaves_nothing_on_failure(tmp_path, monkeypatch):
  def broken_fsync(fd):
    raise OSError("disk full")

  monkeypatch.setattr(os, "fsync", broken_fsync)
  with pytest.raises(OSError):
    files.write_atomic(tmp_path / "x.model", b"data")
  assert os.listdir(tmp_path) == []


def test_options_are_checked(tmp_path):
  with pytest.raises(TypeError, match="vocab_sise"):
    tok.train_sentencepiece(["x\n"], tmp_path, vocab_sise=100)
  with pytest.raises(ValueError, match="no training text"):
    tok.train_sentencepiece(["", ""], tmp_path)


# ---------------------------------------------------------------------------------------------
# Hugging Face tokenizer.json


@pytest.fixture(scope="module")
def hf_json(corpus, tmp_path_factory):
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

  t = Tokenizer(models.BPE())
  t.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  t.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(
    vocab_size=700, show_progress=False, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
  )
  t.train_from_iterator((d["text"] for d in corpus["train"][:80]), trainer=trainer)
  t.add_special_tokens(["<|endoftext|>"])  # last id, as 50256 is in GPT-2/CodeGen
  path = tmp_path_factory.mktemp("hf") / "tokenizer.json"
  t.save(str(path))
  return path


def test_hf_eos_lookup(hf_json):
  v = vocabularies.HfTokenizerVocabulary(hf_json)
  eos = v.tokenizer.token_to_id("<|endoftext|>")
  assert eos == v.vocab_size - 1 and eos > 600
  assert v.eos_id == vocabularies.eot_id(v) == eos
  assert v.bos_id is None and v.unk_id is None and v.pad_id == 0
  assert vocabularies.HfTokenizerVocabulary(hf_json, eos_id=7).eos_id == 7
  assert vocabularies.HfTokenizerVocabulary(hf_json, eos_token=None).eos_id is None
  with pytest.raises(ValueError, match="<\\|im_end\\|>"):
    vocabularies.HfTokenizerVocabulary(hf_json, eos_token="<|im_end|>")


def test_hf_round_trip_and_end_of_text(hf_json, corpus):
  v = vocabularies.HfTokenizerVocabulary(hf_json)
  _assert_round_trips(v, [d["text"] for d in corpus["heldout"]] + EDGE_CASES)  # U+2581 too
  text = "x = '<|endoftext|>'\n"
  ids = v.encode(text)
  assert v.eos_id not in ids and v.decode(ids) == text
  literal = vocabularies.HfTokenizerVocabulary(hf_json, literal_special_tokens=False)
  assert literal.encode(text).count(v.eos_id) == 1  # the tokenizers default, for contrast
  a, b = "a = 1\n", "b = 2\n"
  assert v.decode(v.encode(a) + [v.eos_id] + v.encode(b)) == a
  assert v.decode(v.encode(a) + [v.vocab_size, v.vocab_size + 500]) == a  # padding rows dropped


def test_hf_tf_matches_python(hf_json, corpus):
  v = vocabularies.HfTokenizerVocabulary(hf_json)
  texts = [d["text"] for d in corpus["heldout"][:20]] + [c for c in EDGE_CASES if c]
  expected = [v.encode(t) for t in texts]
  assert v.encode_tf(tf.constant(texts[0])).numpy().tolist() == expected[0]
  assert v.encode_tf(tf.constant(texts)).to_list() == expected
  ds = tf.data.Dataset.from_tensor_slices(texts[:5]).map(v.encode_tf)
  assert ds.element_spec.shape.as_list() == [None]
  assert [x.tolist() for x in ds.as_numpy_iterator()] == expected[:5]
  eos = v.eos_id
  rows = tf.ragged.constant([e + [eos] for e in expected], dtype=tf.int32).to_tensor(eos)
  decoded = v.decode_tf(rows)
  assert decoded.shape == (len(texts),)
  assert [s.decode("utf-8") for s in decoded.numpy()] == texts
  grid = v.decode_tf(tf.reshape(rows[:4], [2, 2, -1])).numpy()  # any leading dims
  assert grid.shape == (2, 2) and grid[1, 0].decode("utf-8") == texts[2]
  assert v.decode_tf(tf.constant(expected[0])).numpy().decode() == texts[0]


def test_hf_pickles(hf_json):
  v = vocabularies.HfTokenizerVocabulary(hf_json)
  _ = v.encode("x")
  state = pickle.dumps(v)
  assert len(state) < 1000  # arguments only, not the loaded tokenizer
  w = pickle.loads(state)
  assert w == v and w.encode("def f(): pass\n") == v.encode("def f(): pass\n")


def test_make_vocabulary(model_path, hf_json, tmp_path):
  sp = vocabularies.make_vocabulary(model_path)
  assert isinstance(sp, seqio.SentencePieceVocabulary) and sp.eos_id == 1
  assert vocabularies.make_vocabulary(str(model_path)).encode("x = 1\n") == sp.encode("x = 1\n")
  hf = vocabularies.make_vocabulary(hf_json)
  assert isinstance(hf, vocabularies.HfTokenizerVocabulary)
  assert isinstance(
    vocabularies.make_vocabulary(hf_json.parent), vocabularies.HfTokenizerVocabulary
  )
  assert vocabularies.make_vocabulary(hf_json, eos_id=5).eos_id == 5
  # Recognised by content when the name says nothing.
  (tmp_path / "vocab_a").write_bytes(hf_json.read_bytes())
  (tmp_path / "vocab_b").write_bytes(model_path.read_bytes())
  assert isinstance(
    vocabularies.make_vocabulary(tmp_path / "vocab_a"), vocabularies.HfTokenizerVocabulary
  )
  assert isinstance(
    vocabularies.make_vocabulary(tmp_path / "vocab_b"), seqio.SentencePieceVocabulary
  )
  assert vocabularies.make_vocabulary(hf) is hf
  with pytest.raises(FileNotFoundError):
    vocabularies.make_vocabulary(tmp_path / "missing.model")
  with pytest.raises(FileNotFoundError, match="tokenizer.json"):
    vocabularies.make_vocabulary(tmp_path)
