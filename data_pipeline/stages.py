"""Stage bookkeeping for `data_pipeline.build`: completion markers, file copies, JSONL shards,
counters.

Paths are `etils.epath` paths, so OUT is a local directory or an object-store prefix (gs://...).
Object stores have no atomic directory rename, so completion is a marker: a stage writes
straight into `OUT/<name>/` and writes `stage.json` (its counters) last. A stage directory with
the marker is complete and never recomputed; one without it (a run killed mid-write) is wiped
and recomputed on the next run, and `completed` refuses to hand it to a reader. Single files
appear whole (`write_atomic`). Documents travel between Beam stages as sharded JSONL.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Any, Callable

import apache_beam as beam
from apache_beam.metrics.metric import MetricsFilter
from etils import epath

from phi_jax.files import write_atomic

NAMESPACE = "phi1_data"
MARKER = "stage.json"


def counter(name: str):
  return beam.metrics.Metrics.counter(NAMESPACE, name)


class EmptyStageError(RuntimeError):
  """A stage produced nothing: never hand an empty dataset to the trainer."""


class IncompleteStageError(RuntimeError):
  """A stage directory without its completion marker: a run died while writing it."""


def done(out: epath.PathLike, name: str) -> dict | None:
  """The counters of a completed stage, or None."""
  marker = epath.Path(out) / name / MARKER
  return json.loads(marker.read_text()) if marker.exists() else None


def require_complete(stage: epath.PathLike) -> epath.Path:
  """`stage` if its completion marker is there; IncompleteStageError otherwise."""
  stage = epath.Path(stage)
  if not (stage / MARKER).exists():
    raise IncompleteStageError(
        f"{stage} has no {MARKER}: it was not finished (a build died while writing it, or is "
        "still running); rerun `python -m data_pipeline.build` with the same --out")
  return stage


def completed(out: epath.PathLike, name: str) -> epath.Path:
  """The directory of stage `name` under `out`, for reading: only once it is complete."""
  return require_complete(epath.Path(out) / name)


def run_stage(out: epath.PathLike, name: str, body: Callable[[epath.Path], dict[str, Any]]
              ) -> dict:
  """Runs `body(stage_dir) -> counters` unless the stage is complete; the marker goes last.

  Leftovers of an unfinished run are wiped first, so no stale shard joins the new output. A
  body that raises takes its partial output with it (a killed one leaves it to the next run).
  """
  previous = done(out, name)
  if previous is not None:
    return previous
  stage = epath.Path(out) / name
  if stage.exists():
    stage.rmtree()
  stage.mkdir(parents=True)
  try:
    counters = body(stage)
  except BaseException:
    if stage.exists():
      stage.rmtree()
    raise
  write_atomic(stage / MARKER, json.dumps(counters, indent=2, sort_keys=True).encode())
  return counters


def copy_file(src: epath.PathLike, dst: epath.PathLike) -> None:
  """Copies one file between any two filesystems epath reaches (local <-> gs://, ...)."""
  dst = epath.Path(dst)
  dst.parent.mkdir(parents=True, exist_ok=True)
  with epath.Path(src).open("rb") as reader, dst.open("wb") as writer:
    shutil.copyfileobj(reader, writer, 16 << 20)


def copy_tree(src: epath.PathLike, dst: epath.PathLike) -> None:
  """Copies every file under `src` to the same relative path under `dst`, across filesystems:
  how local-only tools (trainers, orbax) hand their outputs to a remote stage and back."""
  src, dst = epath.Path(src), epath.Path(dst)
  if not src.is_dir():
    raise FileNotFoundError(f"no directory at {src}")
  for child in src.iterdir():  # (not epath's walk: its gcsfs backend drops the gs:// scheme)
    if child.is_dir():
      copy_tree(child, dst / child.name)
    else:
      copy_file(child, dst / child.name)


def pipeline_counters(result) -> dict[str, int]:
  """{counter name: committed value} of the phi1_data namespace from a finished pipeline."""
  totals: dict[str, int] = {}
  for item in result.metrics().query(MetricsFilter().with_namespace(NAMESPACE))["counters"]:
    value = item.committed if item.committed is not None else item.attempted
    totals[item.key.metric.name] = totals.get(item.key.metric.name, 0) + int(value)
  return totals


def run_pipeline(build: Callable[[beam.Pipeline], None], options: list[str] | None = None
                 ) -> dict[str, int]:
  """Runs a Beam pipeline (DirectRunner unless `options` say otherwise); returns its counters."""
  pipeline_options = beam.options.pipeline_options.PipelineOptions(options or [])
  pipeline = beam.Pipeline(options=pipeline_options)
  build(pipeline)
  result = pipeline.run()
  result.wait_until_finish()
  return pipeline_counters(result)


def read_docs(pipeline: beam.Pipeline, directory: epath.PathLike, label: str):
  pattern = os.fspath(epath.Path(directory) / "docs-*.jsonl")
  return (pipeline | f"Read {label}" >> beam.io.ReadFromText(pattern)
          | f"Parse {label}" >> beam.Map(json.loads))


def write_docs(docs, directory: epath.PathLike, label: str, num_shards: int = 0):
  prefix = os.fspath(epath.Path(directory) / "docs")
  return (docs | f"Serialize {label}" >> beam.Map(
      lambda d: json.dumps(d, sort_keys=True, default=_jsonable))
          | f"Write {label}" >> beam.io.WriteToText(prefix, ".jsonl", num_shards=num_shards))


def _jsonable(value):
  """numpy arrays and scalars (embeddings, scores) as plain JSON."""
  return value.tolist()


def iter_docs(directory: epath.PathLike):
  for shard in sorted(epath.Path(directory).glob("docs-*.jsonl")):
    with shard.open() as f:
      for line in f:
        yield json.loads(line)


def require_documents(counters: dict, key: str, stage: str, hint: str) -> None:
  if counters.get(key, 0) <= 0:
    raise EmptyStageError(f"stage '{stage}' kept no documents ({key}=0): {hint}")
