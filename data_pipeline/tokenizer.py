"""Trains the corpus SentencePiece model (`train_sentencepiece`); `phi_jax.vocabularies` reads it.

The options below make text round-trip bit for bit (see `phi_jax.vocabularies` for the ids and
the end-of-text rules):

  normalization_rule_name=identity   no NFKC: full-width chars, ligatures, CRLF... stay as written
  add_dummy_prefix=False             no space invented before the text
  remove_extra_whitespaces=False     runs of spaces, leading/trailing spaces survive
  allow_whitespace_only_pieces=True  indentation runs can be learned as single tokens ('▁'*4,
                                     *8, *12, ...); without it every space of an indent is its
                                     own token (docs/measurements.md: bytes per token)
  user_defined_symbols=('\\n',)       '\\n' is always exactly one token, so every line starts on a
                                     token boundary (prompts ending in a newline tokenize as in
                                     training); without it pieces like '):\\n', '\\n#' appear
  byte_fallback=True                 characters outside the vocabulary (rare unicode, emoji, tabs
                                     and '\\r' in a corpus without them) become <0xNN> byte
                                     tokens instead of <unk>
  split_digits=True                  numbers are spelled digit by digit

Training: documents are cut at line ends into chunks of at most `max_sentence_length` bytes (the
SentencePiece trainer silently skips longer "sentences"; since '\\n' is an atomic symbol no
piece spans lines, so cutting at line ends changes nothing that BPE counts; only a single line
longer than the limit is cut inside, before a space where it can be). A sample bounded by
`max_documents` and `max_chars` is drawn from them with `seed`. The trainer is deterministic for
the same sample, options and `num_threads` (checked: repeated runs give identical bytes), but the
model can differ between thread counts (seen with 1M chars, not with 0.3M; presumably ties
between equal pair counts break differently), hence the fixed default `num_threads=1`. The
.model file appears only complete (`phi_jax.files.write_atomic`), locally or on gs://."""

from __future__ import annotations

import hashlib
import io
import json
import random
import re
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import sentencepiece as spm
from etils import epath
from sentencepiece import sentencepiece_model_pb2

from phi_jax import files
from phi_jax.vocabularies import EOT_ID, EOT_PIECE, PAD_ID, UNK_ID

_LINES = re.compile(r"[^\n]*\n|[^\n]+")  # lines with their '\n' (only '\n' ends a line here)

# Defaults for train_sentencepiece (kwargs, so a config dict can be splatted in).
DEFAULTS = dict(
  vocab_size=32768,
  model_type="bpe",
  max_documents=50_000,
  max_chars=20_000_000,
  max_sentence_length=8192,
  character_coverage=0.9999,
  user_defined_symbols=("\n",),
  split_digits=True,
  max_sentencepiece_length=16,
  seed=0,
  num_threads=1,
)


def split_for_training(text: str, max_bytes: int) -> Iterator[str]:
  """Chunks of `text` of at most `max_bytes` UTF-8 bytes, cut after '\n's.

  (The trainer keeps a sentence of exactly `max_sentence_length` bytes and drops a longer one.)

  A single line longer than `max_bytes` is cut before a space where possible (a word boundary
  for the trainer), else at a character boundary. The chunks concatenate back to `text`.
  """
  if max_bytes < 4:
    raise ValueError(f"max_bytes={max_bytes} cannot hold a UTF-8 character")
  buf: list[str] = []
  size = 0
  for line in _LINES.findall(text):
    n = len(line.encode("utf-8"))
    if size + n > max_bytes and buf:
      yield "".join(buf)
      buf, size = [], 0
    if n > max_bytes:
      yield from _split_long_line(line, max_bytes)
      continue
    buf.append(line)
    size += n
  if buf:
    yield "".join(buf)


def _split_long_line(line: str, max_bytes: int) -> Iterator[str]:
  data = line.encode("utf-8")
  while len(data) > max_bytes:
    cut = max_bytes
    while cut > 0 and (data[cut] & 0xC0) == 0x80:  # not in the middle of a UTF-8 character
      cut -= 1
    space = data.rfind(b" ", 1, cut + 1)
    if space > 0:
      cut = space
    yield data[:cut].decode("utf-8")
    data = data[cut:]
  if data:
    yield data.decode("utf-8")


def training_sample(
  texts: Iterable[str | dict],
  *,
  max_documents: int,
  max_chars: int,
  max_sentence_length: int,
  seed: int,
) -> tuple[list[str], dict]:
  """(chunks, stats): the bounded training sample.

  The first `max_documents` documents of `texts` (strings or corpus dicts with 'text') are cut
  into chunks; if they hold more than `max_chars` characters, chunks are drawn at random (`seed`)
  until `max_chars` is reached, and kept in corpus order.
  """
  chunks: list[str] = []
  n_docs = 0
  for item in texts:
    if n_docs >= max_documents:
      break
    text = item["text"] if isinstance(item, dict) else item
    if not isinstance(text, str):
      raise TypeError(f"expected str documents, got {type(text).__name__}")
    n_docs += 1
    chunks.extend(c for c in split_for_training(text, max_sentence_length) if c)
  total = sum(map(len, chunks))
  if total > max_chars:
    order = list(range(len(chunks)))
    random.Random(seed).shuffle(order)
    keep, size = [], 0
    for i in order:
      if size >= max_chars:
        break
      keep.append(i)
      size += len(chunks[i])
    chunks = [chunks[i] for i in sorted(keep)]
  stats = {
    "documents": n_docs,
    "chunks": len(chunks),
    "chars": sum(map(len, chunks)),
    "chars_before_sampling": total,
  }
  return chunks, stats


def trainer_options(
  *,
  vocab_size: int,
  model_type: str,
  max_sentence_length: int,
  character_coverage: float,
  user_defined_symbols: Sequence[str],
  split_digits: bool,
  max_sentencepiece_length: int,
  num_threads: int,
) -> dict[str, Any]:
  """The SentencePiece trainer options (see the module docstring for why each is set)."""
  return dict(
    vocab_size=vocab_size,
    model_type=model_type,
    normalization_rule_name="identity",
    add_dummy_prefix=False,
    remove_extra_whitespaces=False,
    split_by_whitespace=True,
    allow_whitespace_only_pieces=True,
    split_digits=split_digits,
    byte_fallback=True,
    character_coverage=character_coverage,
    user_defined_symbols=list(user_defined_symbols),
    max_sentence_length=max_sentence_length,
    max_sentencepiece_length=max_sentencepiece_length,
    pad_id=PAD_ID,
    pad_piece="<pad>",
    eos_id=EOT_ID,
    eos_piece=EOT_PIECE,
    unk_id=UNK_ID,
    unk_piece="<unk>",
    bos_id=-1,
    input_sentence_size=0,  # we sample ourselves (training_sample)
    shuffle_input_sentence=False,
    num_threads=num_threads,
    minloglevel=2,
  )


def train_sentencepiece(
  texts: Iterable[str | dict], out_dir: epath.PathLike, *, name: str = "tokenizer", **options
) -> epath.Path:
  """Trains a SentencePiece model on corpus documents; returns the path of `<out_dir>/<name>.model`.

  `out_dir` may be local or remote (gs://...): the trainer writes the model into memory.

  `texts`: strings or corpus documents (dicts with 'text'). `options` override `DEFAULTS`
  (vocab_size, model_type, max_documents, max_chars, max_sentence_length, character_coverage,
  user_defined_symbols, split_digits, max_sentencepiece_length, seed, num_threads).
  Beside the model, `<name>.train.json` records the options, the sample's size and the model's
  sha256 (written just before the model; the hash tells whether the two belong together).
  """
  unknown = set(options) - set(DEFAULTS)
  if unknown:
    raise TypeError(f"unknown options {sorted(unknown)}; known: {sorted(DEFAULTS)}")
  opts = {**DEFAULTS, **options}
  chunks, stats = training_sample(
    texts,
    max_documents=opts["max_documents"],
    max_chars=opts["max_chars"],
    max_sentence_length=opts["max_sentence_length"],
    seed=opts["seed"],
  )
  if not chunks:
    raise ValueError("no training text: every document was empty")
  spm_opts = trainer_options(
    **{
      k: opts[k]
      for k in (
        "vocab_size",
        "model_type",
        "max_sentence_length",
        "character_coverage",
        "user_defined_symbols",
        "split_digits",
        "max_sentencepiece_length",
        "num_threads",
      )
    }
  )
  spm.set_random_generator_seed(int(opts["seed"]))
  start = time.perf_counter()
  writer = io.BytesIO()
  spm.SentencePieceTrainer.train(sentence_iterator=iter(chunks), model_writer=writer, **spm_opts)
  seconds = time.perf_counter() - start
  model = writer.getvalue()
  _check_model(model, opts["vocab_size"])

  out = epath.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  path = out / f"{name}.model"
  meta = {
    "options": {k: (list(v) if isinstance(v, tuple) else v) for k, v in opts.items()},
    "sample": stats,
    "train_seconds": round(seconds, 3),
    "sentencepiece_version": spm.__version__,
    "model_sha256": hashlib.sha256(model).hexdigest(),
  }
  files.write_atomic(out / f"{name}.train.json", json.dumps(meta, indent=2).encode())
  files.write_atomic(path, model)  # last: the .model appearing means everything is written
  return path


def _check_model(model: bytes, vocab_size: int) -> None:
  proto = sentencepiece_model_pb2.ModelProto.FromString(model)
  sp = spm.SentencePieceProcessor(model_proto=model)
  got = (sp.pad_id(), sp.eos_id(), sp.unk_id(), sp.bos_id(), sp.id_to_piece(EOT_ID))
  if got != (PAD_ID, EOT_ID, UNK_ID, -1, EOT_PIECE) or sp.get_piece_size() != vocab_size:
    raise RuntimeError(
      f"trained model has unexpected specials/size: {got}, {sp.get_piece_size()} pieces"
    )
  if not proto.trainer_spec.byte_fallback:
    raise RuntimeError("trained model lacks byte fallback")


# ---------------------------------------------------------------------------------------------
# Vocabularies
