"""Vocabularies the models read: a SentencePiece model (trained by the corpus build,
`data_pipeline.tokenizer`), or a Hugging Face tokenizer.json.

Two kinds of vocabulary, both `seqio.Vocabulary`, chosen by `make_vocabulary(spec)`:

* **SentencePiece** (the default; `data_pipeline.tokenizer.train_sentencepiece` makes one): a byte-fallback BPE model
  trained on corpus documents, read by `seqio.SentencePieceVocabulary`. Ids: pad=0,
  eos=1 = '<|endoftext|>' (the document separator), unk=2, no bos.
* **Hugging Face** (`HfTokenizerVocabulary`): any `tokenizer.json` (e.g. the codegen-350M-mono
  tokenizer phi-1 used; there '<|endoftext|>' is 50256), through the `tokenizers` library.

Text round-trips bit for bit, `decode(encode(text)) == text`, for any Python source, thanks to
the trainer options of `data_pipeline.tokenizer` (no normalization, no dummy prefix, whitespace
kept, '\\n' one token, byte fallback).

Known limitation (SentencePiece itself): spaces are stored as U+2581 '▁' inside pieces, so a
literal U+2581 character in the text decodes as a space. (It does not occur in CPython's stdlib;
the Hugging Face byte-level vocabularies do not have this limitation.)

End of text: the pipeline separates documents by the EOT *id* (`eot_id(vocab)`), appended to
the ids of each document. A literal '<|endoftext|>' *inside* a document is ordinary text: it
encodes to ordinary pieces (never the EOT id) and decodes back to itself. In SentencePiece the
eos piece is a control symbol, which the encoder never matches in text; the Hugging Face adapter
sets the tokenizer's `encode_special_tokens` for the same effect. Decoding stops at the first EOT
(seqio's convention) and the EOT itself decodes to nothing.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import sentencepiece as spm
import seqio
import tensorflow as tf
from etils import epath

from phi_jax import files, tasks

EOT_PIECE = "<|endoftext|>"
PAD_ID, EOT_ID, UNK_ID = 0, 1, 2


def vocabulary(path: str | os.PathLike) -> seqio.SentencePieceVocabulary:
  """The seqio vocabulary of a SentencePiece .model (pad must be 0 and an eos must exist).

  seqio caches loaded models by path for the life of the process: write a retrained model to a
  new path rather than over one already loaded.
  """
  path = os.fspath(path)
  sp = spm.SentencePieceProcessor(model_proto=epath.Path(path).read_bytes())
  if sp.pad_id() != PAD_ID or sp.eos_id() < 0:
    raise ValueError(
      f"{path}: seqio needs pad_id=0 and an eos id; the model has "
      f"pad_id={sp.pad_id()}, eos_id={sp.eos_id()}"
    )
  return seqio.SentencePieceVocabulary(path)


def eot_id(vocab: seqio.Vocabulary) -> int:
  """The end-of-text id that separates documents."""
  if vocab.eos_id is None:
    raise ValueError(f"{vocab} has no end-of-text id")
  return int(vocab.eos_id)


class HfTokenizerVocabulary(seqio.Vocabulary):
  """seqio vocabulary over a Hugging Face `tokenizer.json` (the `tokenizers` library).

  `eos_id` wins if given; otherwise it is the id of `eos_token` in the tokenizer (an error if
  the tokenizer lacks it; `eos_token=None` means no eos). Special tokens written literally in
  the text are encoded as text (`literal_special_tokens=True`, see the module docstring).
  Decoding cuts at the first eos and drops ids outside the tokenizer (e.g. a model's padding
  rows). Unlike SentencePiece vocabularies, id 0 here is usually a real token ('!' in GPT-2),
  so seqio's PAD_ID=0 is not a no-op when decoding padded ids that hold no eos.
  The object pickles as its arguments; the tokenizer loads lazily (also from gs:// paths).
  """

  def __init__(
    self,
    tokenizer_file: str | os.PathLike,
    eos_token: str | None = EOT_PIECE,
    eos_id: int | None = None,
    literal_special_tokens: bool = True,
  ):
    self._tokenizer_file = os.fspath(tokenizer_file)
    self._eos_token = eos_token
    self._eos_id_arg = eos_id
    self._literal_special_tokens = literal_special_tokens
    self._tokenizer = None
    super().__init__(extra_ids=0)
    _ = self.eos_id  # fail early on a missing eos token

  def __getstate__(self):
    state = self.__dict__.copy()
    state["_tokenizer"] = None
    return state

  def __setstate__(self, state):
    self.__dict__.update(state)

  @property
  def tokenizer_file(self) -> str:
    return self._tokenizer_file

  @property
  def tokenizer(self):
    if self._tokenizer is None:
      import tokenizers  # loaded on first use: the object pickles as its arguments (Beam)

      tok = tokenizers.Tokenizer.from_str(epath.Path(self._tokenizer_file).read_text())
      tok.encode_special_tokens = self._literal_special_tokens
      self._tokenizer = tok
    return self._tokenizer

  @property
  def bos_id(self) -> int | None:
    return None

  @property
  def eos_id(self) -> int | None:
    if self._eos_id_arg is not None:
      return int(self._eos_id_arg)
    if self._eos_token is None:
      return None
    found = self.tokenizer.token_to_id(self._eos_token)
    if found is None:
      raise ValueError(
        f"{self._tokenizer_file} has no token {self._eos_token!r}; pass eos_id= or eos_token="
      )
    return found

  @property
  def unk_id(self) -> int | None:
    unk = getattr(self.tokenizer.model, "unk_token", None)
    return None if unk is None else self.tokenizer.token_to_id(unk)

  @property
  def _base_vocab_size(self) -> int:
    return self.tokenizer.get_vocab_size(with_added_tokens=True)

  def _encode(self, s: str) -> Sequence[int]:
    if isinstance(s, bytes):
      s = s.decode("utf-8")
    return self.tokenizer.encode(s, add_special_tokens=False).ids

  def _decode(self, ids) -> str:
    ids = [int(i) for i in ids]
    eos = self.eos_id
    if eos is not None and eos in ids:
      ids = ids[: ids.index(eos)]
    size = self._base_vocab_size
    return self.tokenizer.decode([i for i in ids if 0 <= i < size], skip_special_tokens=False)

  def _encode_tf(self, s: tf.Tensor) -> tf.Tensor:
    """Scalar string -> int32 [None]; 1-D strings -> int32 RaggedTensor [batch, None]."""
    s = tf.convert_to_tensor(s, tf.string)
    if s.shape.rank == 0:
      ids = tf.numpy_function(
        lambda x: np.asarray(self._encode(_as_str(x)), np.int32), [s], tf.int32, stateful=False
      )
      ids.set_shape([None])
      return ids
    if s.shape.rank != 1:
      raise ValueError(f"encode_tf takes a scalar or 1-D string tensor, got shape {s.shape}")

    def encode_batch(xs):
      rows = [self._encode(_as_str(x)) for x in xs]
      values = np.asarray([i for r in rows for i in r], np.int32)
      return values, np.asarray([len(r) for r in rows], np.int64)

    values, lengths = tf.numpy_function(encode_batch, [s], (tf.int32, tf.int64), stateful=False)
    values.set_shape([None])
    lengths.set_shape(s.shape)
    return tf.RaggedTensor.from_row_lengths(values, lengths)

  def _decode_tf(self, ids: tf.Tensor) -> tf.Tensor:
    """Dense int [..., length] -> string [...]."""
    ids = tf.convert_to_tensor(ids)

    def decode(x):
      if x.size == 0:
        return np.full(x.shape[:-1], b"", dtype=object)
      flat = x.reshape(-1, x.shape[-1])
      out = np.array([self._decode(row).encode("utf-8") for row in flat], dtype=object)
      return out.reshape(x.shape[:-1])

    out = tf.numpy_function(decode, [ids], tf.string, stateful=False)
    out.set_shape(ids.shape[:-1])
    return out

  def __eq__(self, other):
    return (
      isinstance(other, HfTokenizerVocabulary)
      and self._tokenizer_file == other._tokenizer_file
      and self.eos_id == other.eos_id
      and self._literal_special_tokens == other._literal_special_tokens
    )

  def __str__(self) -> str:
    return (
      f"HfTokenizerVocabulary(file={self._tokenizer_file}, eos_id={self.eos_id}, "
      f"size={self.vocab_size})"
    )

  __repr__ = __str__


def _as_str(x) -> str:
  """A Python str from what tf.numpy_function passes for one tf.string element."""
  if isinstance(x, np.ndarray):
    x = x.item()
  return x.decode("utf-8") if isinstance(x, bytes) else str(x)


def tokenizer_file(spec: str | os.PathLike) -> str:
  """The file behind a tokenizer spec, local or remote: a SentencePiece .model or a
  tokenizer.json path as is, a directory (a Hugging Face model's) by its `tokenizer.json`."""
  path = epath.Path(spec)
  if path.is_dir():
    path = path / "tokenizer.json"
    if not path.exists():
      raise FileNotFoundError(f"{os.fspath(spec)} is a directory without tokenizer.json")
  elif not path.exists():
    raise FileNotFoundError(f"no vocabulary file at {os.fspath(spec)}")
  return os.fspath(path)


def is_hf_tokenizer(path: str | os.PathLike) -> bool:
  """Whether a tokenizer file is a Hugging Face tokenizer.json (JSON; by name, else by content)
  rather than a SentencePiece model (a protobuf)."""
  path = os.fspath(path)
  if path.endswith((".json", ".model")):
    return path.endswith(".json")
  with epath.Path(path).open("rb") as f:
    return f.read(64).lstrip().startswith(b"{")


def make_vocabulary(spec: str | os.PathLike | seqio.Vocabulary, **hf_kwargs) -> seqio.Vocabulary:
  """A vocabulary from a SentencePiece .model path or a Hugging Face tokenizer.json path.

  A directory holding `tokenizer.json` counts as the latter; an existing `seqio.Vocabulary`
  is returned as is. Other names are recognised by content (JSON or not). `hf_kwargs` go to
  `HfTokenizerVocabulary` (e.g. `eos_id=`).
  """
  if isinstance(spec, seqio.Vocabulary):
    return spec
  path = tokenizer_file(spec)
  if is_hf_tokenizer(path):
    return HfTokenizerVocabulary(path, **hf_kwargs)
  if hf_kwargs:
    raise TypeError(f"{sorted(hf_kwargs)} apply to tokenizer.json vocabularies only")
  return vocabulary(path)


class TokenizerEncoder:
  """A picklable text -> ids function over a tokenizer file (see `tokenizer_file`), local or
  remote, loaded lazily once per process (Beam workers): a SentencePiece .model, or a Hugging
  Face tokenizer.json encoded as `HfTokenizerVocabulary` encodes. Ids are cut to `max_len`."""

  def __init__(self, path: str | os.PathLike, max_len: int | None = None):
    self.path, self.max_len = os.fspath(path), max_len
    self._encode, self._size = None, None

  def __getstate__(self):
    return {**self.__dict__, "_encode": None, "_size": None}

  def __repr__(self):
    return f"TokenizerEncoder({self.path!r})"

  def _load(self) -> None:
    if self._encode is not None:
      return
    if is_hf_tokenizer(self.path):
      vocab = HfTokenizerVocabulary(self.path, eos_token=None)
      self._encode, self._size = vocab.encode, vocab.vocab_size
    else:
      processor = spm.SentencePieceProcessor(model_proto=epath.Path(self.path).read_bytes())
      self._encode, self._size = processor.encode, processor.get_piece_size()

  @property
  def vocab_size(self) -> int:
    """How many ids the tokenizer has (its largest id + 1)."""
    self._load()
    return self._size

  def __call__(self, text: str) -> list[int]:
    self._load()
    return list(self._encode(text))[: self.max_len]


def for_config(cfg: Any, tokenizer: str = "") -> seqio.Vocabulary:
  """The vocabulary a run reads text with: `tokenizer`, else the config's `eval.tokenizer`, else
  its data directory's; FileNotFoundError naming where it was looked for when there is none."""
  for name, value in (("--tokenizer", tokenizer), ("eval.tokenizer", cfg.eval.tokenizer)):
    if value:
      return make_vocabulary(files.existing(value, name))
  data_dir = cfg.data.dir or os.environ.get("PHI1_DATA_DIR", tasks.DEFAULT_DATA_DIR)
  return make_vocabulary(
    files.existing(
      tasks.vocabulary_path(data_dir),
      "the data directory's tokenizer (pass --tokenizer, or set eval.tokenizer or data.dir)",
    )
  )
