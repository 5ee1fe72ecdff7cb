"""Annotators: a text's educational value for learning to code, as a score in [0, 1] and a label.

phi-1 had an LLM annotate ~100k samples for "educational value for a student whose goal is to
learn basic coding concepts" (Gunasekar et al. 2023, section 2.1). `Annotator` is the interface
every annotator implements (score, and label = score >= threshold); `HeuristicAnnotator`, the
default and no LLM needed, scores a documented rubric computed from the source.
`data_pipeline.llm_judge` asks an LLM instead.
"""

from __future__ import annotations

import abc
import ast
import dataclasses
import io
import math
import re
import statistics
import tokenize
from collections.abc import Mapping

EDUCATIONAL_VALUE_QUESTION = (
  "educational value for a student whose goal is to learn basic coding concepts"
)


@dataclasses.dataclass(frozen=True)
class Annotation:
  score: float  # in [0, 1]
  label: bool  # score >= the annotator's threshold


class Annotator(abc.ABC):
  """One interface for every annotator: text -> score in [0, 1], label = score >= threshold.

  Subclasses implement `score`; they must be picklable (Beam ships them to workers).
  """

  threshold: float = 0.5

  @abc.abstractmethod
  def score(self, text: str) -> float:
    """The text's educational value in [0, 1]."""

  def annotate(self, text: str) -> Annotation:
    score = float(self.score(text))
    if not 0.0 <= score <= 1.0 or math.isnan(score):
      raise ValueError(f"{type(self).__name__}.score returned {score}, not in [0, 1]")
    return Annotation(score=score, label=score >= self.threshold)


# Short names that are conventional, so not counted against "meaningful identifiers".
_CONVENTIONAL_SHORT_NAMES = frozenset(
  "_ i j k n m x y z a b c d e f s t v fn fp io os re ok op db id ch".split()
)
# Numbers that are not "magic": loop bounds, halves, percentages.
_PLAIN_NUMBERS = frozenset([0, 1, 2, -1, 10, 100, 0.5, 1.0, 0.0, 2.0])
_GENERATED_MARKER = re.compile(
  r"auto-?generated|generated (?:by|from|automatically|with)|do not edit|don't edit|"
  r"machine[- ]generated|this file was generated",
  re.IGNORECASE,
)
_LARGE_LITERAL_ELEMENTS = 256  # a container literal this big is a data table
_HUGE_LINE_CHARS = 1000  # a line this long is data (or minified), not code


def _ramp(value: float, zero_at: float, one_at: float) -> float:
  """Linear in value from 0 (at zero_at) to 1 (at one_at), clipped; either direction."""
  if one_at == zero_at:
    return 1.0 if value >= one_at else 0.0
  return float(min(1.0, max(0.0, (value - zero_at) / (one_at - zero_at))))


def _docstring(node: ast.AST) -> ast.Constant | None:
  body = node.body
  if (
    body
    and isinstance(body[0], ast.Expr)
    and isinstance(body[0].value, ast.Constant)
    and isinstance(body[0].value.value, str)
  ):
    return body[0].value
  return None


def _comment_lines(text: str) -> set[int] | None:
  try:
    return {
      tok.start[0]
      for tok in tokenize.generate_tokens(io.StringIO(text).readline)
      if tok.type == tokenize.COMMENT
    }
  except (tokenize.TokenError, IndentationError, SyntaxError):
    return None


def _literal_chars(node: ast.Constant, line_lengths: list[int]) -> int:
  if node.lineno == node.end_lineno:
    return max(0, node.end_col_offset - node.col_offset)
  first = line_lengths[node.lineno - 1] - node.col_offset
  middle = sum(line_lengths[node.lineno : node.end_lineno - 1])
  return max(0, first + middle + node.end_col_offset)


def heuristic_features(text: str) -> dict[str, float]:
  """The raw measurements behind `HeuristicAnnotator` (see its docstring), from the source."""
  lines = re.split(r"\r\n|\r|\n", text)  # the line breaks ast numbers lines by
  nonblank = [i + 1 for i, line in enumerate(lines) if line.strip()]
  n_nonblank = len(nonblank)
  features = {"nonblank_lines": float(n_nonblank)}
  try:
    tree = ast.parse(text)
  except (SyntaxError, ValueError):
    tree = None
  features["parses"] = float(tree is not None)

  comments = _comment_lines(text)
  if comments is None:
    comments = {i + 1 for i, line in enumerate(lines) if line.lstrip().startswith("#")}
  doc_lines = set(comments)
  defs, funcs, docstrings = [], [], []
  identifiers: list[str] = []
  n_imports = 0
  literal_chars = 0
  magic_numbers = 0
  largest_literal = 0
  if tree is not None:
    docstring_ids = set()
    line_lengths = [len(line) + 1 for line in lines]
    for node in ast.walk(tree):  # breadth first: a def is seen before its docstring constant
      if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        docstring = _docstring(node)
        if docstring is not None:
          docstrings.append((node, docstring))
          docstring_ids.add(id(docstring))
          doc_lines.update(range(docstring.lineno, docstring.end_lineno + 1))
        if isinstance(node, ast.Module):
          continue
        defs.append(node)
        identifiers.append(node.name)
        if not isinstance(node, ast.ClassDef):
          funcs.append(node)
      elif isinstance(node, ast.arg):
        identifiers.append(node.arg)
      elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
        identifiers.append(node.id)
      elif isinstance(node, ast.Import):
        n_imports += len(node.names)
      elif isinstance(node, ast.ImportFrom):
        n_imports += 1
      elif isinstance(node, (ast.List, ast.Tuple, ast.Set)):
        largest_literal = max(largest_literal, len(node.elts))
      elif isinstance(node, ast.Dict):
        largest_literal = max(largest_literal, len(node.keys))
      elif isinstance(node, ast.Constant) and id(node) not in docstring_ids:
        value = node.value
        if isinstance(value, (str, bytes)):
          literal_chars += _literal_chars(node, line_lengths)
        elif isinstance(value, (int, float, complex)) and not isinstance(value, bool):
          literal_chars += _literal_chars(node, line_lengths)
          if value not in _PLAIN_NUMBERS:
            magic_numbers += 1
  documented = {id(node) for node, _ in docstrings}
  doctest_docs = sum(
    any(line.lstrip().startswith(">>>") for line in c.value.splitlines()) for _, c in docstrings
  )
  code_lines = max(1, n_nonblank - len(doc_lines & set(nonblank)))
  meaningful = [
    name for name in identifiers if len(name.strip("_")) >= 3 or name in _CONVENTIONAL_SHORT_NAMES
  ]
  func_lengths = [node.end_lineno - node.lineno + 1 for node in funcs]
  total_chars = max(1, len(text))
  features.update(
    doc_line_ratio=len(doc_lines & set(nonblank)) / max(1, n_nonblank),
    n_defs=float(len(defs)),
    documented_def_ratio=(sum(id(d) in documented for d in defs) / len(defs)) if defs else 0.0,
    doctest_docstrings=float(doctest_docs),
    meaningful_identifier_ratio=(len(meaningful) / len(identifiers)) if identifiers else -1.0,
    median_function_lines=float(statistics.median(func_lengths)) if func_lengths else -1.0,
    literal_char_ratio=literal_chars / total_chars,
    magic_numbers_per_code_line=magic_numbers / code_lines,
    short_line_ratio=(
      sum(len(lines[i - 1]) <= 100 for i in nonblank) / n_nonblank if n_nonblank else 0.0
    ),
    max_line_chars=float(max((len(line) for line in lines), default=0)),
    n_imports=float(n_imports),
    largest_literal_elements=float(largest_literal),
    generated_marker=float(bool(_GENERATED_MARKER.search(text))),
  )
  return features


class HeuristicAnnotator(Annotator):
  """A computable rubric for "educational value for a student whose goal is to learn basic
  coding concepts": clear, self-contained, documented code that teaches, over data and
  generated code. No LLM; the default annotator.

  score = (sum of weight x sub-score) x penalties, each sub-score in [0, 1]:

  | feature (from `heuristic_features`) | direction | sub-score | weight |
  |---|---|---|---|
  | share of non-blank lines that are comments or docstrings | more is better, up to a point | 0 at 0, 1 from 0.3 to 0.7, 0.4 at 1.0 (no code left) | 0.20 |
  | share of functions/classes with a docstring | more is better | the share (0 without defs) | 0.20 |
  | docstrings with doctest examples (`>>>`) | more is better | doctest docstrings / (25% of defs, at least 1), capped at 1 | 0.10 |
  | share of meaningful identifiers (>= 3 chars, or conventional i, j, x, fn, ...) | more is better | the share (0.5 if none) | 0.10 |
  | median function length in lines | moderate is better | 0.6 below 3, 1 for 3-30, falls to 0 at 150 (0.5 if no functions) | 0.10 |
  | share of characters in literals (strings and numbers, docstrings excluded) | less is better | 1 up to 0.25, 0 from 0.6 (data blobs) | 0.15 |
  | magic numbers (not 0, 1, 2, -1, 10, 100, 0.5) per code line | fewer is better | 1 at 0, 0 from 0.5 | 0.05 |
  | share of non-blank lines <= 100 characters | more is better | the share | 0.05 |
  | imported names | fewer is better (self-contained) | 1 up to 5, 0 from 25 | 0.05 |

  Penalties (multiplied in): x `generated_factor` (0.3) for generated code or data tables (a
  "generated by"/"do not edit" marker, a container literal of >= 256 elements, or a line of
  >= 1000 characters); x min(1, non-blank lines / 10) for stubs (an `__init__.py` of imports
  teaches little); x 0.5 when the text is not valid Python (the rubric is for code).

  The share of files the default threshold (0.6) labels positive is in docs/measurements.md; the
  paper does not say what share its LLM labelled positive. The weights are a judgement call, not
  fitted to LLM labels.
  """

  WEIGHTS = {
    "doc_lines": 0.20,
    "documented_defs": 0.20,
    "doctests": 0.10,
    "identifiers": 0.10,
    "function_length": 0.10,
    "few_literals": 0.15,
    "few_magic_numbers": 0.05,
    "short_lines": 0.05,
    "few_imports": 0.05,
  }

  def __init__(self, threshold: float = 0.6, generated_factor: float = 0.3):
    self.threshold = threshold
    self.generated_factor = generated_factor

  def __repr__(self):
    return (
      f"HeuristicAnnotator(threshold={self.threshold}, generated_factor={self.generated_factor})"
    )

  @staticmethod
  def sub_scores(features: Mapping[str, float]) -> dict[str, float]:
    f = features
    doc = f["doc_line_ratio"]
    doc_score = _ramp(doc, 0.0, 0.3) if doc <= 0.7 else 1.0 - 0.6 * _ramp(doc, 0.7, 1.0)
    median = f["median_function_lines"]
    if median < 0:
      length_score = 0.5
    elif median < 3:
      length_score = 0.6
    else:
      length_score = 1.0 - _ramp(median, 30, 150)
    return {
      "doc_lines": doc_score,
      "documented_defs": f["documented_def_ratio"],
      "doctests": min(1.0, f["doctest_docstrings"] / max(1.0, 0.25 * f["n_defs"])),
      "identifiers": 0.5
      if f["meaningful_identifier_ratio"] < 0
      else f["meaningful_identifier_ratio"],
      "function_length": length_score,
      "few_literals": 1.0 - _ramp(f["literal_char_ratio"], 0.25, 0.6),
      "few_magic_numbers": 1.0 - _ramp(f["magic_numbers_per_code_line"], 0.0, 0.5),
      "short_lines": f["short_line_ratio"],
      "few_imports": 1.0 - _ramp(f["n_imports"], 5, 25),
    }

  def penalty(self, features: Mapping[str, float]) -> float:
    factor = 1.0
    if (
      features["generated_marker"]
      or features["largest_literal_elements"] >= _LARGE_LITERAL_ELEMENTS
      or features["max_line_chars"] >= _HUGE_LINE_CHARS
    ):
      factor *= self.generated_factor
    factor *= min(1.0, features["nonblank_lines"] / 10.0)
    if not features["parses"]:
      factor *= 0.5
    return factor

  def score(self, text: str) -> float:
    features = heuristic_features(text)
    subs = self.sub_scores(features)
    weighted = sum(self.WEIGHTS[name] * subs[name] for name in self.WEIGHTS)
    return float(min(1.0, max(0.0, weighted * self.penalty(features))))
