"""The random-access form of a built task split, which the trainer reads: tokenized documents in
ArrayRecord files plus an index of their lengths.

    DATA_DIR/records/<part>/<split>-SSSSS-of-NNNNN.array_record   one record per document:
                                                                  its int32 tokens (EOT
                                                                  included), little-endian
    DATA_DIR/records/<part>/<split>-SSSSS-of-NNNNN.index.npy      [documents, 2] int64:
                                                                  tokens, prompt tokens
    DATA_DIR/records/<part>/<split>.json                          the shards in order, with counts
    DATA_DIR/records/stage.json                                   written last (phi_jax.files)

A <part> is a task's part (phi_jax.tasks: `<task>:filtered`, `<task>:synthetic`); a task's
documents are its parts' in order. Document i of a split is record i of its shards read in order. The prompt tokens of an exercise
(signature + docstring) lead its tokens; `data.mask_prompt` is applied when rows are cut, so one
build serves both settings. data_pipeline.build's `records` stage writes this from the seqio
tasks' own preprocessing (phi_jax.tasks).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
from collections.abc import Iterable

import numpy as np
from etils import epath

from phi_jax import files

STAGE = "records"
FORMAT = 2  # 2: one directory per task part


def part_dir(data_dir: epath.PathLike, part: str) -> epath.Path:
  return epath.Path(data_dir) / STAGE / part


def parts_of(data_dir: epath.PathLike, name: str) -> list[epath.Path]:
  """The directories holding `name`'s documents: a part's own, or a task's parts in order."""
  if ":" in name:
    return [part_dir(data_dir, name)]
  return sorted((epath.Path(data_dir) / STAGE).glob(f"{name}:*"))


def shard_name(split: str, shard: int, num_shards: int) -> str:
  return f"{split}-{shard:05d}-of-{num_shards:05d}"


def write_shard(
  directory: epath.PathLike, name: str, documents: Iterable[tuple[np.ndarray, int]]
) -> tuple[int, int]:
  """Writes (tokens, prompt length) documents as shard `name` in `directory` (local or remote);
  returns (documents, tokens). ArrayRecord writes only local files, so the shard is written in a
  local temporary directory and copied; its index goes last."""
  from array_record.python import array_record_module  # only the build writes records

  directory = epath.Path(directory)
  index = []
  with tempfile.TemporaryDirectory(prefix="phi1_records_") as local:
    path = os.path.join(local, f"{name}.array_record")
    writer = array_record_module.ArrayRecordWriter(path, "group_size:1")  # random access per doc
    for tokens, prompt_length in documents:
      tokens = np.asarray(tokens, "<i4")
      writer.write(tokens.tobytes())
      index.append((len(tokens), prompt_length))
    writer.close()
    files.copy_file(path, directory / f"{name}.array_record")
  buffer = io.BytesIO()
  np.save(buffer, np.asarray(index, np.int64).reshape(-1, 2))
  files.write_atomic(directory / f"{name}.index.npy", buffer.getvalue())
  return len(index), int(sum(n for n, _ in index))


def write_split_index(directory: epath.PathLike, split: str, num_shards: int) -> dict:
  """After every shard of `split` is written: `<split>.json`, naming the non-empty shards in
  order (a shard no document hashed to has no files). Returns its counts."""
  directory = epath.Path(directory)
  shards, documents, tokens, digest = [], 0, 0, hashlib.sha256()
  for shard in range(num_shards):
    name = shard_name(split, shard, num_shards)
    if not (directory / f"{name}.index.npy").exists():
      continue
    index = _load_index(directory / f"{name}.index.npy")
    digest.update(index.tobytes())
    shards.append({"name": name, "documents": len(index), "tokens": int(index[:, 0].sum())})
    documents += len(index)
    tokens += int(index[:, 0].sum())
  summary = {"format": FORMAT, "shards": shards, "documents": documents, "tokens": tokens}
  files.write_atomic(directory / f"{split}.json", json.dumps(summary, indent=2))
  return {
    f"{split}_documents": documents,
    f"{split}_tokens": tokens,
    f"{split}_index_sha256": digest.hexdigest(),
  }


def _load_index(path: epath.Path) -> np.ndarray:
  return np.load(io.BytesIO(path.read_bytes()))


def require_built(data_dir: str) -> dict:
  """The records stage's summary; a clear error naming the command when it is not there."""
  if files.is_remote(data_dir):
    raise ValueError(
      f"data.dir={data_dir}: ArrayRecord (array_record 0.8) reads local files only "
      "(google/array_record#120). Mount the bucket with gcsfuse (`gcsfuse --implicit-dirs "
      "BUCKET /mnt/BUCKET`) on every host and set data.dir to the mounted path"
    )
  if not epath.Path(data_dir).exists():
    raise FileNotFoundError(
      f"data.dir={data_dir} does not exist: build it with `python -m data_pipeline.build "
      f"--config=CONFIG --out={data_dir}`, or set --config.data.dir to a built corpus"
    )
  summary = files.done(data_dir, STAGE)
  if summary is None or summary.get("format") != FORMAT:
    raise FileNotFoundError(
      f"data.dir={data_dir} has no finished `{STAGE}` stage (the random-access documents the "
      "trainer reads; builds from before 2026-12 lack it): run `python -m data_pipeline.build "
      f"--config=CONFIG --out={data_dir}` with the config it was built with; the finished "
      "stages are reused and only the missing ones run"
    )
  return summary


def fingerprint(data_dir: str) -> str:
  """Identifies the built documents (their counts and index digests): part of a run's stream."""
  summary = json.dumps(require_built(data_dir), sort_keys=True)
  return hashlib.sha256(summary.encode()).hexdigest()[:16]


def documents_in(data_dir: epath.PathLike, name: str, split: str) -> int:
  """How many documents `name` (a task or a part) has in `split` (0 when it has no such split)."""
  summaries = [d / f"{split}.json" for d in parts_of(data_dir, name)]
  return sum(json.loads(s.read_text())["documents"] for s in summaries if s.exists())


class Documents:
  """The documents of one task split: `lengths`, `prompt_lengths` and `tokens(i)`."""

  def __init__(self, data_dir: str, task: str, split: str):
    summaries = []
    for directory in parts_of(data_dir, task):
      if (directory / f"{split}.json").exists():
        summaries.append((directory, json.loads((directory / f"{split}.json").read_text())))
    if not summaries:
      raise FileNotFoundError(
        f"{part_dir(data_dir, task)}/{split}.json is missing: {task} has no split {split!r} in "
        f"{data_dir}'s records"
      )
    summaries = [(d, s) for d, s in summaries if s["documents"]]
    if not summaries:
      raise ValueError(
        f"{task} has no documents in split {split!r} of {data_dir} (a corpus too small "
        "for corpus.validation_fraction?): rebuild with more data or a larger fraction, drop "
        "it from the mixture, or (for the held-out loss) set eval.every_steps=0"
      )
    shards = [
      (d / s["name"], s["documents"]) for d, summary in summaries for s in summary["shards"]
    ]
    index = np.concatenate([_load_index(epath.Path(f"{path}.index.npy")) for path, _ in shards])
    self.lengths, self.prompt_lengths = index[:, 0], index[:, 1]
    self.tokens_total = sum(int(summary["tokens"]) for _, summary in summaries)
    self._paths = [f"{path}.array_record[0:{count}]" for path, count in shards]
    self._source = None

  def __len__(self) -> int:
    return len(self.lengths)

  def tokens(self, index: int) -> np.ndarray:
    if self._source is None:  # opened lazily, so that the object pickles to reader processes
      import grain  # the trainer's reader; the build, which only writes, never loads it

      self._source = grain.sources.ArrayRecordDataSource(self._paths)
    return np.frombuffer(self._source[int(index)], "<i4")

  def __getstate__(self):
    return {**self.__dict__, "_source": None}
