"""Test setup: 8 simulated CPU devices, so sharded code runs on any machine."""

import os

import xla_env

os.environ.setdefault("XLA_FLAGS", xla_env.flags(8))
os.environ.setdefault("JAX_PLATFORMS", "cpu")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
  if not SHARED_DATA.exists():
    pytest.fail(f"{SHARED_DATA} is missing: tests expect the project's shared/ beside the checkout")
  return SHARED_DATA


@pytest.fixture
def beam_run(tmp_path):
  """run(docs, transform) -> (list of output docs per output, {phi1_data counter: value}).

  Runs `beam.Create(docs) | transform` on the DirectRunner; the transform may return one
  PCollection or a tuple of them. Outputs come back through JSON-lines files.
  """
  import json

  import apache_beam as beam
  from apache_beam.metrics.metric import MetricsFilter

  def run(docs, transform):
    out_dir = tmp_path / f"beam{len(list(tmp_path.iterdir()))}"
    pipeline = beam.Pipeline(runner="DirectRunner")
    outputs = pipeline | beam.Create(docs) | transform
    single = not isinstance(outputs, tuple)
    outputs = (outputs,) if single else outputs
    for k, pcoll in enumerate(outputs):
      (
        pcoll
        | f"Json{k}" >> beam.Map(json.dumps, sort_keys=True)
        | f"Write{k}" >> beam.io.WriteToText(str(out_dir / f"out{k}"), file_name_suffix=".jsonl")
      )
    result = pipeline.run()
    result.wait_until_finish()
    counters = {}
    for metric in result.metrics().query(MetricsFilter().with_namespace("phi1_data"))["counters"]:
      counters[metric.key.metric.name] = counters.get(metric.key.metric.name, 0) + metric.result
    collected = []
    for k in range(len(outputs)):
      rows = [
        json.loads(line)
        for f in sorted(out_dir.glob(f"out{k}*.jsonl"))
        for line in f.read_text().splitlines()
        if line
      ]
      collected.append(rows)
    return (collected[0] if single else collected), counters

  return run


@pytest.fixture(scope="session", autouse=True)
def compilation_cache(tmp_path_factory, worker_id) -> Path:
  """XLA's persistent compilation cache, shared by this session's workers and the processes its
  tests start (through the environment): a program compiled once is loaded after, and loading
  gives the executable the compiler gave. Bounded in size, so that jax locks the directory
  between processes."""
  import jax  # after the environment above is set
  from jax.experimental.compilation_cache import compilation_cache as cache

  root = tmp_path_factory.getbasetemp()
  if worker_id != "master":
    root = root.parent  # this session's directory, shared by its xdist workers
  settings = {
    "jax_compilation_cache_dir": str(root / "xla_cache"),
    "jax_persistent_cache_min_compile_time_secs": 0,
    "jax_persistent_cache_min_entry_size_bytes": 0,
    "jax_compilation_cache_max_size": 4 << 30,
  }
  for name, value in settings.items():
    jax.config.update(name, value)
    os.environ[name.upper()] = str(value)
  cache.reset_cache()
  return root / "xla_cache"


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory, worker_id) -> Path:
  """A corpus built by data_pipeline.build from 150 of this machine's Python files (configs/tiny.py,
  ~1 min on 2 cores): its records feed the trainer's seqio source. Built once per test session:
  the first worker to ask builds it under a lock, the others wait and read the same build."""
  import fcntl  # the lock that makes xdist's workers share one build

  from data_pipeline import build
  from phi_jax import configs

  root = tmp_path_factory.getbasetemp()
  if worker_id != "master":
    root = root.parent  # this session's directory, shared by its xdist workers
  out = root / "tiny_corpus" / "data"
  with open(root / "tiny_corpus.lock", "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    if not (out / "manifest.json").exists():  # the build writes it last
      cfg = configs.get("tiny")
      cfg.corpus.update(max_files=150, quality_model_steps=5, tokenizer_max_documents=500)
      cfg.logging.progress_bar = False
      build.run(cfg, out)
  return out


@pytest.fixture(scope="session")
def math_runner():
  """Runs PoT programs as math evaluation does (the tiny config's sandbox), 2 s each."""
  # Imported here, as the fixtures above import phi_jax: after the environment is set.
  from phi_jax import configs
  from phi_jax.evaluation import math_eval

  cfg = configs.get("tiny")
  cfg.eval.program_timeout_s = 2.0
  return math_eval.program_runner(cfg.eval)
