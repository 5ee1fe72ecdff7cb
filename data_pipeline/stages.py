"""Beam helpers of the corpus build's stages: counters, running a pipeline, and documents as
sharded JSONL between stages. Stage directories themselves (completion markers, copies across
filesystems) are `phi_jax.files`'.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable

import apache_beam as beam
from apache_beam.metrics.metric import MetricsFilter
from etils import epath

NAMESPACE = "phi1_data"


def counter(name: str):
  return beam.metrics.Metrics.counter(NAMESPACE, name)


class EmptyStageError(RuntimeError):
  """A stage produced nothing: never hand an empty dataset to the trainer."""


def pipeline_counters(result) -> dict[str, int]:
  """{counter name: committed value} of the phi1_data namespace from a finished pipeline."""
  totals: dict[str, int] = {}
  for item in result.metrics().query(MetricsFilter().with_namespace(NAMESPACE))["counters"]:
    value = item.committed if item.committed is not None else item.attempted
    totals[item.key.metric.name] = totals.get(item.key.metric.name, 0) + int(value)
  return totals


def run_pipeline(
  build: Callable[[beam.Pipeline], None], options: list[str] | None = None
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
  return (
    pipeline
    | f"Read {label}" >> beam.io.ReadFromText(pattern)
    | f"Parse {label}" >> beam.Map(json.loads)
  )


def write_docs(docs, directory: epath.PathLike, label: str, num_shards: int = 0):
  prefix = os.fspath(epath.Path(directory) / "docs")
  return (
    docs
    | f"Serialize {label}" >> beam.Map(lambda d: json.dumps(d, sort_keys=True, default=_jsonable))
    | f"Write {label}" >> beam.io.WriteToText(prefix, ".jsonl", num_shards=num_shards)
  )


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
