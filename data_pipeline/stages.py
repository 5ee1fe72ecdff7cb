"""Stage bookkeeping for `data_pipeline.build`: atomic stage directories, JSONL shards, counters.

A stage writes into `OUT/.<name>.tmp/` and is renamed to `OUT/<name>/` only once complete, with
`stage.json` (its counters) inside; a finished stage is never recomputed and a half-written one
is never read. Documents travel between Beam stages as sharded JSONL.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

import apache_beam as beam
from apache_beam.metrics.metric import MetricsFilter

NAMESPACE = "phi1_data"


def counter(name: str):
  return beam.metrics.Metrics.counter(NAMESPACE, name)


class EmptyStageError(RuntimeError):
  """A stage produced nothing: never hand an empty dataset to the trainer."""


def done(out: Path, name: str) -> dict | None:
  """The counters of a completed stage, or None."""
  marker = out / name / "stage.json"
  return json.loads(marker.read_text()) if marker.exists() else None


def run_stage(out: Path, name: str, body: Callable[[Path], dict[str, Any]]) -> dict:
  """Runs `body(tmp_dir) -> counters` unless the stage is already complete; atomic rename."""
  previous = done(out, name)
  if previous is not None:
    return previous
  tmp = out / f".{name}.tmp"
  shutil.rmtree(tmp, ignore_errors=True)
  tmp.mkdir(parents=True)
  counters = body(tmp)
  (tmp / "stage.json").write_text(json.dumps(counters, indent=2, sort_keys=True))
  final = out / name
  shutil.rmtree(final, ignore_errors=True)
  tmp.rename(final)
  return counters


def write_atomic(path: Path, data: bytes) -> None:
  """Writes `path` so that it appears only complete: a temp file beside it, fsync, rename."""
  path = Path(path)
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
  try:
    with os.fdopen(fd, "wb") as f:
      f.write(data)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise


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


def read_docs(pipeline: beam.Pipeline, directory: Path, label: str):
  return (pipeline | f"Read {label}" >> beam.io.ReadFromText(str(directory / "docs-*.jsonl"))
          | f"Parse {label}" >> beam.Map(json.loads))


def write_docs(docs, directory: Path, label: str, num_shards: int = 0):
  return (docs | f"Serialize {label}" >> beam.Map(
      lambda d: json.dumps(d, sort_keys=True, default=_jsonable))
          | f"Write {label}" >> beam.io.WriteToText(str(directory / "docs"), ".jsonl",
                                                    num_shards=num_shards))


def _jsonable(value):
  """numpy arrays and scalars (embeddings, scores) as plain JSON."""
  return value.tolist()


def iter_docs(directory: Path):
  for shard in sorted(directory.glob("docs-*.jsonl")):
    with shard.open() as f:
      for line in f:
        yield json.loads(line)


def require_documents(counters: dict, key: str, stage: str, hint: str) -> None:
  if counters.get(key, 0) <= 0:
    raise EmptyStageError(f"stage '{stage}' kept no documents ({key}=0): {hint}")
