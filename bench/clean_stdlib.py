"""Dedup + decontamination of the machine's stdlib corpus (data_pipeline.sources): counts, speed.

    PYTHONPATH=. python bench/clean_stdlib.py [--corpus=stdlib.jsonl] [--beam] [--ast_all]

Prints one JSON object: documents per kind; dedup removals and time; for each tau in
{0.95, 0.9, 0.85, 0.8} the exercises the AST rule removes (with benchmark, task and match rate)
and the time; the 13-gram removals over all documents; with --beam, the same two stages on
Beam's DirectRunner with their counters, checked against the in-memory result.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from data_pipeline import decontaminate as dc
from data_pipeline import dedup, sources


def stdlib_corpus() -> list[dict]:
  docs = []
  for source, path in sources.python_files(sources.python_roots(["stdlib"])):
    text, _ = sources.read_source(path.read_bytes(), 1 << 20)
    if text is not None:
      docs += sources.documents_from_source(source, text)
  docs += sources.topic_documents()
  return docs


def main(argv=None):
  parser = argparse.ArgumentParser()
  parser.add_argument("--corpus", help="JSON-lines cache of the corpus (written if missing)")
  parser.add_argument("--beam", action="store_true", help="also run both stages on Beam")
  parser.add_argument("--ast_all", action="store_true", help="also time ast_scope=all")
  args = parser.parse_args(argv)

  report = {}
  t = time.perf_counter()
  if args.corpus and Path(args.corpus).exists():
    docs = [json.loads(line) for line in Path(args.corpus).read_text().splitlines()]
  else:
    docs = stdlib_corpus()
    if args.corpus:
      Path(args.corpus).write_text("".join(json.dumps(d) + "\n" for d in docs))
  report["corpus_s"] = round(time.perf_counter() - t, 2)
  report["documents"] = {
    k: sum(d["kind"] == k for d in docs) for k in ("code", "textbook", "exercise")
  }
  report["characters"] = sum(len(d["text"]) for d in docs)

  t = time.perf_counter()
  unique, stats = dedup.deduplicate(docs)
  report["dedup"] = {**stats, "kept": len(unique), "seconds": round(time.perf_counter() - t, 2)}

  t = time.perf_counter()
  references = dc.load_references()
  index = dc.ReferenceIndex(references, ngram=13)
  report["references"] = {
    "records": len(references),
    "ngrams": len(index.ngram_owner),
    "ast_sequences": len(index.ast_seqs),
    "seconds": round(time.perf_counter() - t, 2),
  }

  exercises = [d for d in docs if d["kind"] == "exercise"]
  report["ast_exercises"] = {}
  for tau in (0.95, 0.9, 0.85, 0.8):
    t = time.perf_counter()
    _, removed, stats = dc.decontaminate(exercises, index, tau=tau, ngram=0)
    report["ast_exercises"][str(tau)] = {
      "exercises": len(exercises),
      "removed": len(removed),
      "seconds": round(time.perf_counter() - t, 2),
      "which": [
        f"{d['source']} ~ {d['contamination']['task_id']} ({d['contamination']['match_rate']:.3f})"
        for d in removed
      ],
    }

  t = time.perf_counter()
  _, removed, stats = dc.decontaminate(docs, index, ast_scope="none")
  report["ngram_all_documents"] = {
    "documents": len(docs),
    "removed": len(removed),
    "seconds": round(time.perf_counter() - t, 2),
    "which": [
      f"{d['source']} ~ {d['contamination']['task_id']}: {d['contamination']['ngram']}"
      for d in removed
    ],
  }

  if args.ast_all:
    t = time.perf_counter()
    _, removed, stats = dc.decontaminate(docs, index, ast_scope="all", ngram=0)
    report["ast_all_documents_tau_0.95"] = {
      "removed": len(removed),
      "by_kind": {
        k: sum(d["kind"] == k for d in removed) for k in ("code", "textbook", "exercise")
      },
      "seconds": round(time.perf_counter() - t, 2),
    }

  if args.beam:
    import tempfile

    import apache_beam as beam
    from apache_beam.metrics.metric import MetricsFilter

    t = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
      pipeline = beam.Pipeline(runner="DirectRunner")
      (
        pipeline
        | beam.Create(docs)
        | dedup.Deduplicate()
        | dc.Decontaminate(references)
        | beam.Map(lambda d: d["id"])
        | beam.io.WriteToText(f"{tmp}/ids")
      )
      result = pipeline.run()
      result.wait_until_finish()
      out = sorted(line for f in Path(tmp).glob("ids*") for line in f.read_text().splitlines())
    counters = {
      m.key.metric.name: m.result
      for m in result.metrics().query(MetricsFilter().with_namespace(dedup.NAMESPACE))["counters"]
    }
    pure_kept, _, _ = dc.decontaminate(unique, index)
    report["beam_direct_runner"] = {
      "seconds": round(time.perf_counter() - t, 2),
      "counters": counters,
      "kept": len(out),
      "same_as_in_memory": out == sorted(d["id"] for d in pure_kept),
    }

  json.dump(report, sys.stdout, indent=1)
  print()


if __name__ == "__main__":
  main()
