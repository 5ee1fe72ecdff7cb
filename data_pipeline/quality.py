"""The paper's quality classifier: annotate a sample, embed with a code model, random forest.

phi-1 filtered The Stack + StackOverflow down to ~6B "textbook quality" tokens this way
(Gunasekar et al. 2023, section 2.1): an LLM annotated ~100k samples for "educational value for
a student whose goal is to learn basic coding concepts"; a random forest on a pretrained code
model's output embeddings predicted that judgement for the rest. Here, in three stages:

1. Annotation: an `Annotator` maps a text to a score in [0, 1] and a binary label at its
   threshold. `HeuristicAnnotator` (the default; no LLM needed) scores a documented rubric
   computed from the source; `LLMJudgeAnnotator` asks any OpenAI-compatible chat endpoint the
   paper's question.
2. Embedding: `embed_texts` is the mean of a phi_jax model's final-LayerNorm hidden states over
   the real tokens of each text (padding masked out), jitted on fixed, bucketed shapes.
3. Classification: `train_classifier` fits a scikit-learn RandomForestClassifier on the
   embeddings of the annotated sample and reports held-out precision/recall; `select` scores
   and thresholds the rest; `save_classifier`/`load_classifier` move it between stages.

The same stages as Apache Beam transforms, for the whole corpus on Dataflow or locally on the
DirectRunner: `Annotate`, `Embed`, `ScoreAndFilter` (plus `ToTrainingExample` and
`read_training_examples` to bring an annotated, embedded sample back to the trainer). Every
per-document step is a function of the document and the transform's arguments: heavy state (the
model, the classifier) is loaded once per worker in `DoFn.setup`, and nothing lives in module
globals but a compile cache. Counters go to the Beam namespace `phi1_data` (`stages.pipeline_counters`
reads them back).

Documents are the dicts of `data_pipeline.sources` (id, kind, source, text); the transforms add
`quality_annotation` (score) and `quality_label` (bool), `embedding` (float32 [d_model]) and
`quality_score` (the classifier's probability of the positive class).
"""

from __future__ import annotations

import abc
import ast
import dataclasses
import functools
import hashlib
import io
import json
import math
import os
import re
import statistics
import tempfile
import time
import tokenize
import urllib.error
import urllib.request
from typing import Any, Callable, Mapping, Sequence

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystems import FileSystems
from etils import epath

from data_pipeline import stages
from phi_jax import files


# ------------------------------------------------------------------------------------------------
# Annotators
# ------------------------------------------------------------------------------------------------

EDUCATIONAL_VALUE_QUESTION = (
    "educational value for a student whose goal is to learn basic coding concepts")


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
    "_ i j k n m x y z a b c d e f s t v fn fp io os re ok op db id ch".split())
# Numbers that are not "magic": loop bounds, halves, percentages.
_PLAIN_NUMBERS = frozenset([0, 1, 2, -1, 10, 100, 0.5, 1.0, 0.0, 2.0])
_GENERATED_MARKER = re.compile(
    r"auto-?generated|generated (?:by|from|automatically|with)|do not edit|don't edit|"
    r"machine[- ]generated|this file was generated", re.IGNORECASE)
_LARGE_LITERAL_ELEMENTS = 256  # a container literal this big is a data table
_HUGE_LINE_CHARS = 1000  # a line this long is data (or minified), not code


def _ramp(value: float, zero_at: float, one_at: float) -> float:
  """Linear in value from 0 (at zero_at) to 1 (at one_at), clipped; either direction."""
  if one_at == zero_at:
    return 1.0 if value >= one_at else 0.0
  return float(min(1.0, max(0.0, (value - zero_at) / (one_at - zero_at))))


def _docstring(node: ast.AST) -> ast.Constant | None:
  body = node.body
  if (body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
      and isinstance(body[0].value.value, str)):
    return body[0].value
  return None


def _comment_lines(text: str) -> set[int] | None:
  try:
    return {tok.start[0] for tok in tokenize.generate_tokens(io.StringIO(text).readline)
            if tok.type == tokenize.COMMENT}
  except (tokenize.TokenError, IndentationError, SyntaxError):
    return None


def _literal_chars(node: ast.Constant, line_lengths: list[int]) -> int:
  if node.lineno == node.end_lineno:
    return max(0, node.end_col_offset - node.col_offset)
  first = line_lengths[node.lineno - 1] - node.col_offset
  middle = sum(line_lengths[node.lineno:node.end_lineno - 1])
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
  doctest_docs = sum(any(line.lstrip().startswith(">>>") for line in c.value.splitlines())
                     for _, c in docstrings)
  code_lines = max(1, n_nonblank - len(doc_lines & set(nonblank)))
  meaningful = [name for name in identifiers
                if len(name.strip("_")) >= 3 or name in _CONVENTIONAL_SHORT_NAMES]
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
      short_line_ratio=(sum(len(lines[i - 1]) <= 100 for i in nonblank) / n_nonblank
                        if n_nonblank else 0.0),
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

  The default threshold, 0.6, labels 39% of CPython 3.11's 1751 stdlib files positive (0.5:
  72%); the paper does not say what share its LLM labelled positive. The weights are a
  judgement call, not fitted to LLM labels.
  """

  WEIGHTS = {
      "doc_lines": 0.20, "documented_defs": 0.20, "doctests": 0.10, "identifiers": 0.10,
      "function_length": 0.10, "few_literals": 0.15, "few_magic_numbers": 0.05,
      "short_lines": 0.05, "few_imports": 0.05,
  }

  def __init__(self, threshold: float = 0.6, generated_factor: float = 0.3):
    self.threshold = threshold
    self.generated_factor = generated_factor

  def __repr__(self):
    return f"HeuristicAnnotator(threshold={self.threshold}, generated_factor={self.generated_factor})"

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
        "identifiers": 0.5 if f["meaningful_identifier_ratio"] < 0 else f["meaningful_identifier_ratio"],
        "function_length": length_score,
        "few_literals": 1.0 - _ramp(f["literal_char_ratio"], 0.25, 0.6),
        "few_magic_numbers": 1.0 - _ramp(f["magic_numbers_per_code_line"], 0.0, 0.5),
        "short_lines": f["short_line_ratio"],
        "few_imports": 1.0 - _ramp(f["n_imports"], 5, 25),
    }

  def penalty(self, features: Mapping[str, float]) -> float:
    factor = 1.0
    if (features["generated_marker"] or features["largest_literal_elements"] >= _LARGE_LITERAL_ELEMENTS
        or features["max_line_chars"] >= _HUGE_LINE_CHARS):
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


class LLMJudgeError(RuntimeError):
  """The LLM judge could not produce a score (HTTP failure after retries, or an unparseable reply)."""


LLM_JUDGE_SYSTEM_PROMPT = (
    "You are an expert programming teacher who rates source code for its educational value.")
LLM_JUDGE_PROMPT = (
    "Determine the {question} of the following code.\n"
    "Code that is clear, self-contained, well documented and teaches algorithms or language "
    "concepts has high value; configuration, boilerplate, data tables, generated code and code "
    "that mostly calls external systems have low value.\n"
    "Answer on the first line with 'Score: N', N an integer from 0 (none) to 10 (excellent), "
    "then at most one sentence of justification.\n\n"
    "```python\n{code}\n```")

_SCORE_PATTERN = re.compile(
    r"score\W{0,3}(?:is\W{0,3})?(-?\d+(?:\.\d+)?)(?:\s*(?:/|out of)\s*(\d+(?:\.\d+)?))?", re.IGNORECASE)
_FRACTION_PATTERN = re.compile(r"(-?\d+(?:\.\d+)?)\s*(?:/|out of)\s*(\d+(?:\.\d+)?)", re.IGNORECASE)
_NUMBER_PATTERN = re.compile(r"-?\d+(?:\.\d+)?")
_YES_NO_PATTERN = re.compile(r"^\W*(yes|no)\b", re.IGNORECASE)


def parse_judgement(reply: str, scale: float = 10.0) -> float:
  """The score in [0, 1] of a judge's reply.

  Understands 'Score: 7', 'score = 7/10', '7 out of 10', a bare leading number (on the 0..scale
  range asked for), and a leading 'yes'/'no' (1.0/0.0). Raises ValueError on anything else or a
  number out of range.
  """
  text = reply.strip()
  match = _SCORE_PATTERN.search(text) or _FRACTION_PATTERN.search(text)
  if match:
    value = float(match.group(1))
    denominator = float(match.group(2)) if match.group(2) else scale
  else:
    yes_no = _YES_NO_PATTERN.match(text)
    if yes_no:
      return 1.0 if yes_no.group(1).lower() == "yes" else 0.0
    number = _NUMBER_PATTERN.match(text)
    if not number:
      raise ValueError(f"no score in the judge's reply: {text[:200]!r}")
    value, denominator = float(number.group(0)), scale
  if denominator <= 0 or not 0.0 <= value <= denominator:
    raise ValueError(f"score {value} out of range 0..{denominator} in reply {text[:200]!r}")
  return value / denominator


class LLMJudgeAnnotator(Annotator):
  """The paper's annotation by an LLM, through any OpenAI-compatible chat endpoint.

  POSTs `{base_url}/chat/completions` with `model` and a prompt asking for the educational
  value on a 0-10 scale, and parses the reply with `parse_judgement` (a yes/no answer also
  works). The API key is read from the environment variable `api_key_env` at request time (so
  it is never pickled into a pipeline); no key, no Authorization header (local servers).
  Connection errors, timeouts, HTTP 429 and 5xx are retried `max_retries` times with
  exponential backoff (`backoff_s` x 2^attempt); other HTTP errors and unparseable replies
  raise `LLMJudgeError` at once. Code longer than `max_chars` is cut.
  """

  def __init__(self, base_url: str, model: str, *, api_key_env: str = "OPENAI_API_KEY",
               timeout: float = 60.0, max_retries: int = 3, backoff_s: float = 1.0,
               threshold: float = 0.5, max_chars: int = 12_000, temperature: float = 0.0,
               max_tokens: int = 64):
    self.base_url = base_url.rstrip("/")
    self.model = model
    self.api_key_env = api_key_env
    self.timeout = timeout
    self.max_retries = max_retries
    self.backoff_s = backoff_s
    self.threshold = threshold
    self.max_chars = max_chars
    self.temperature = temperature
    self.max_tokens = max_tokens

  def __repr__(self):
    return f"LLMJudgeAnnotator(base_url={self.base_url!r}, model={self.model!r})"

  @property
  def url(self) -> str:
    return f"{self.base_url}/chat/completions"

  def messages(self, text: str) -> list[dict]:
    prompt = LLM_JUDGE_PROMPT.format(question=EDUCATIONAL_VALUE_QUESTION, code=text[:self.max_chars])
    return [{"role": "system", "content": LLM_JUDGE_SYSTEM_PROMPT},
            {"role": "user", "content": prompt}]

  def _request(self, text: str) -> urllib.request.Request:
    body = json.dumps({"model": self.model, "messages": self.messages(text),
                       "temperature": self.temperature, "max_tokens": self.max_tokens}).encode()
    headers = {"Content-Type": "application/json"}
    key = os.environ.get(self.api_key_env) if self.api_key_env else None
    if key:
      headers["Authorization"] = f"Bearer {key}"
    return urllib.request.Request(self.url, data=body, headers=headers, method="POST")

  def complete(self, text: str) -> str:
    """The judge's raw reply for `text`."""
    last_error = None
    for attempt in range(self.max_retries + 1):
      if attempt:
        time.sleep(self.backoff_s * 2 ** (attempt - 1))
      try:
        with urllib.request.urlopen(self._request(text), timeout=self.timeout) as response:
          payload = json.loads(response.read().decode("utf-8"))
      except urllib.error.HTTPError as error:
        detail = error.read().decode("utf-8", "replace")[:500]
        last_error = f"HTTP {error.code} from {self.url}: {detail}"
        if error.code == 429 or error.code >= 500:
          continue
        raise LLMJudgeError(last_error) from error
      except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as error:
        last_error = f"cannot reach {self.url}: {error}"
        continue
      except json.JSONDecodeError as error:
        raise LLMJudgeError(f"{self.url} did not return JSON: {error}") from error
      try:
        return payload["choices"][0]["message"]["content"]
      except (KeyError, IndexError, TypeError) as error:
        raise LLMJudgeError(
            f"{self.url} returned no choices[0].message.content: {json.dumps(payload)[:500]}"
        ) from error
    raise LLMJudgeError(f"gave up after {self.max_retries + 1} attempts: {last_error}")

  def score(self, text: str) -> float:
    reply = self.complete(text)
    try:
      return parse_judgement(reply)
    except ValueError as error:
      raise LLMJudgeError(f"{self.model} at {self.url}: {error}") from error


# ------------------------------------------------------------------------------------------------
# Embeddings
# ------------------------------------------------------------------------------------------------

def length_buckets(max_len: int, smallest: int = 32) -> tuple[int, ...]:
  """Padded lengths: powers of two from `smallest` below max_len, then max_len itself."""
  buckets = []
  length = smallest
  while length < max_len:
    buckets.append(length)
    length *= 2
  return tuple(buckets) + (max_len,)


@functools.lru_cache(maxsize=16)
def _pooled_hidden_fn(model_config):
  """jit(params, tokens, mask) -> mean of final hidden states over mask; one per config."""
  import jax
  import jax.numpy as jnp

  from phi_jax import model as model_lib

  def pooled(params, tokens, mask):
    # Padding is segment 0: real tokens (segment 1) never attend to it; right padding and the
    # causal mask keep it out anyway.
    hidden = model_lib.forward(model_config, params, tokens, segment_ids=mask.astype(jnp.int32),
                               return_hidden=True).astype(jnp.float32)
    weights = mask.astype(jnp.float32)[..., None]
    count = jnp.maximum(weights.sum(axis=1), 1.0)
    return (hidden * weights).sum(axis=1) / count

  return jax.jit(pooled)


def embed_texts(model_config: Any, params: Any, encode_fn: Callable[[str], Sequence[int]],
                texts: Sequence[str], max_len: int = 512, batch_size: int = 8,
                buckets: Sequence[int] | None = None) -> np.ndarray:
  """float32 [len(texts), d_model]: each text's mean final-LayerNorm hidden state over its tokens.

  Texts are encoded with `encode_fn` (text -> token ids), cut to `max_len` tokens, sorted by
  length, and run `batch_size` at a time; every batch is padded to exactly `batch_size` rows and
  to the smallest of `buckets` (default `length_buckets(max_len)`) that holds its longest text,
  so the jitted forward compiles once per bucket. Padding is masked out of the mean, so a text's
  embedding does not depend on its batch. A text with no tokens gets the zero vector.
  """
  from phi_jax import model as model_lib

  config = model_lib.as_model_config(model_config)
  buckets = tuple(sorted(buckets)) if buckets else length_buckets(max_len)
  if buckets[-1] < max_len:
    raise ValueError(f"largest bucket {buckets[-1]} < max_len {max_len}")
  encoded = []
  for text in texts:
    ids = np.asarray(list(encode_fn(text))[:max_len], dtype=np.int64)
    if ids.size and (ids.min() < 0 or ids.max() >= config.vocab_size):
      raise ValueError(f"encode_fn produced token id {int(ids.max() if ids.max() >= 0 else ids.min())}"
                       f" outside the model's vocabulary [0, {config.vocab_size})")
    encoded.append(ids.astype(np.int32))
  out = np.zeros((len(texts), config.d_model), np.float32)
  fn = _pooled_hidden_fn(config)
  order = sorted(range(len(texts)), key=lambda i: len(encoded[i]))
  for start in range(0, len(order), batch_size):
    rows = order[start:start + batch_size]
    longest = max(len(encoded[i]) for i in rows)
    if longest == 0:
      continue
    length = next(b for b in buckets if b >= longest)
    tokens = np.zeros((batch_size, length), np.int32)
    mask = np.zeros((batch_size, length), bool)
    for r, i in enumerate(rows):
      tokens[r, :len(encoded[i])] = encoded[i]
      mask[r, :len(encoded[i])] = True
    pooled = np.asarray(fn(params, tokens, mask))
    out[rows] = pooled[:len(rows)]
  return out


def byte_encode_fn(vocab_size: int, max_len: int | None = None) -> Callable[[str], list[int]]:
  """A trivial byte-level encode_fn (UTF-8 bytes mod vocab_size), for tests and quick runs."""
  return functools.partial(_byte_encode, vocab_size=vocab_size, max_len=max_len)


def _byte_encode(text: str, vocab_size: int, max_len: int | None) -> list[int]:
  data = text.encode("utf-8")[:max_len]
  return [b % vocab_size for b in data]


# ------------------------------------------------------------------------------------------------
# The classifier
# ------------------------------------------------------------------------------------------------

def train_classifier(embeddings: np.ndarray, labels: Sequence[bool] | np.ndarray, seed: int = 0,
                     holdout_fraction: float = 0.2, *, n_estimators: int = 200,
                     max_depth: int | None = None, min_samples_leaf: int = 1,
                     max_features: str | float | int | None = "sqrt",
                     class_weight: str | None = None, n_jobs: int | None = 1
                     ) -> tuple[Any, dict]:
  """(RandomForestClassifier fitted on the training split, held-out report).

  The split is stratified by label (when each class has >= 2 members) and deterministic in
  `seed`. The report: precision, recall, f1 and accuracy of the positive class on the held-out
  split (threshold 0.5 on the forest's probability), n_train, n_heldout, positive_rate (of all
  labels), heldout_positive_rate and predicted_positive_rate. The classifier is not refitted on
  the held-out part, so the report describes exactly the model returned.
  """
  from sklearn.ensemble import RandomForestClassifier
  from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score
  from sklearn.model_selection import train_test_split

  x = np.asarray(embeddings, np.float32)
  y = np.asarray(labels).astype(bool)
  if x.ndim != 2 or len(x) != len(y):
    raise ValueError(f"embeddings {x.shape} and labels {y.shape} do not match")
  if not 0.0 < holdout_fraction < 1.0:
    raise ValueError(f"holdout_fraction={holdout_fraction} must be in (0, 1)")
  counts = np.bincount(y.astype(int), minlength=2)
  stratify = y if counts.min() >= 2 else None
  x_train, x_test, y_train, y_test = train_test_split(
      x, y, test_size=holdout_fraction, random_state=seed, stratify=stratify)
  classifier = RandomForestClassifier(
      n_estimators=n_estimators, max_depth=max_depth, min_samples_leaf=min_samples_leaf,
      max_features=max_features, class_weight=class_weight, n_jobs=n_jobs, random_state=seed)
  classifier.fit(x_train, y_train)
  _, predicted = select(classifier, x_test, 0.5)
  predicted = predicted >= 0.5
  report = {
      "precision": float(precision_score(y_test, predicted, zero_division=0)),
      "recall": float(recall_score(y_test, predicted, zero_division=0)),
      "f1": float(f1_score(y_test, predicted, zero_division=0)),
      "accuracy": float(accuracy_score(y_test, predicted)),
      "n_train": int(len(y_train)),
      "n_heldout": int(len(y_test)),
      "positive_rate": float(y.mean()),
      "heldout_positive_rate": float(y_test.mean()),
      "predicted_positive_rate": float(predicted.mean()),
      "seed": seed,
      "n_estimators": n_estimators,
  }
  return classifier, report


def positive_scores(classifier: Any, embeddings: np.ndarray) -> np.ndarray:
  """The classifier's probability of the positive class (label True/1) per row."""
  x = np.asarray(embeddings, np.float32)
  if x.ndim == 1:
    x = x[None]
  classes = list(classifier.classes_)
  probabilities = classifier.predict_proba(x)
  positive = [i for i, c in enumerate(classes) if bool(c)]
  if not positive:  # trained on negatives only
    return np.zeros(len(x), np.float64)
  return probabilities[:, positive[0]].astype(np.float64)


def select(classifier: Any, embeddings: np.ndarray, threshold: float = 0.5
           ) -> tuple[np.ndarray, np.ndarray]:
  """(keep mask = score >= threshold, scores): scores are P(positive) per row."""
  scores = positive_scores(classifier, embeddings)
  return scores >= threshold, scores


def save_classifier(path: epath.PathLike, classifier: Any, report: Mapping | None = None) -> None:
  """Writes {classifier, report, versions} with joblib, locally or remotely (gs://...); the
  file appears only once complete (`phi_jax.files.write_atomic`)."""
  import joblib
  import sklearn

  bundle = {"format": 1, "classifier": classifier, "report": dict(report or {}),
            "sklearn_version": sklearn.__version__}
  path = epath.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  buffer = io.BytesIO()
  joblib.dump(bundle, buffer)
  files.write_atomic(path, buffer.getvalue())


def load_classifier(path: epath.PathLike) -> tuple[Any, dict]:
  """(classifier, report) saved by `save_classifier` (local or remote path).

  joblib files are pickles: load only files you trust.
  """
  import joblib

  path = epath.Path(path)
  if not path.exists():
    raise FileNotFoundError(f"no quality classifier at {path}")
  bundle = joblib.load(io.BytesIO(path.read_bytes()))
  if not isinstance(bundle, dict) or bundle.get("format") != 1:
    raise ValueError(f"{path} is not a classifier written by save_classifier")
  return bundle["classifier"], bundle["report"]


# ------------------------------------------------------------------------------------------------
# Beam
# ------------------------------------------------------------------------------------------------

def in_sample(doc_id: str, fraction: float, seed: int = 0) -> bool:
  """Deterministic Bernoulli(fraction) draw from a hash of (seed, id): same on every worker."""
  if fraction >= 1.0:
    return True
  digest = hashlib.sha256(f"{seed}\0{doc_id}".encode()).digest()
  return int.from_bytes(digest[:8], "big") / 2.0 ** 64 < fraction


def _kind_matches(doc: Mapping, kinds: tuple[str, ...] | None) -> bool:
  return kinds is None or doc.get("kind") in kinds


class _AnnotateFn(beam.DoFn):

  def __init__(self, annotator: Annotator, fraction: float, seed: int,
               kinds: tuple[str, ...] | None, on_error: str):
    self.annotator, self.fraction, self.seed = annotator, fraction, seed
    self.kinds, self.on_error = kinds, on_error
    self.seen = stages.counter("quality_annotate_seen")
    self.sampled = stages.counter("quality_annotate_sampled")
    self.positive = stages.counter("quality_annotate_positive")
    self.negative = stages.counter("quality_annotate_negative")
    self.errors = stages.counter("quality_annotate_errors")

  def process(self, doc):
    self.seen.inc()
    if not _kind_matches(doc, self.kinds) or not in_sample(doc["id"], self.fraction, self.seed):
      return
    self.sampled.inc()
    try:
      annotation = self.annotator.annotate(doc["text"])
    except Exception:
      self.errors.inc()
      if self.on_error == "raise":
        raise
      return
    (self.positive if annotation.label else self.negative).inc()
    yield {**doc, "quality_annotation": annotation.score, "quality_label": annotation.label}


class _EmbedFn(beam.DoFn):

  def __init__(self, model_loader, encode_fn, max_len: int, batch_size: int, field: str,
               vocab_size: int | None):
    self.model_loader, self.encode_fn = model_loader, encode_fn
    self.max_len, self.batch_size, self.field = max_len, batch_size, field
    self.vocab_size = vocab_size
    self.documents = stages.counter("quality_embed_documents")
    self.batches = stages.counter("quality_embed_batches")
    self._model = None

  def setup(self):
    import jax
    # (model config, params), once per worker; params go to the device once, not per batch.
    model_config, params = tuple(self.model_loader())[:2]
    check_vocabulary_fits(self.vocab_size, model_config, self.encode_fn, self.model_loader)
    self._model = (model_config, jax.device_put(params))

  def process(self, batch):
    model_config, params = self._model
    vectors = embed_texts(model_config, params, self.encode_fn, [d["text"] for d in batch],
                          max_len=self.max_len, batch_size=self.batch_size)
    self.batches.inc()
    self.documents.inc(len(batch))
    for doc, vector in zip(batch, vectors):
      yield {**doc, self.field: vector}


class _ScoreFn(beam.DoFn):

  def __init__(self, classifier_path: str, threshold: float, field: str, drop_embedding: bool):
    self.classifier_path, self.threshold = classifier_path, threshold
    self.field, self.drop_embedding = field, drop_embedding
    self.scored = stages.counter("quality_score_scored")
    self.kept = stages.counter("quality_score_kept")
    self.removed = stages.counter("quality_score_removed")
    self._classifier = None

  def setup(self):
    self._classifier, _ = load_classifier(self.classifier_path)

  def process(self, batch):
    missing = [d.get("id") for d in batch if self.field not in d]
    if missing:
      raise KeyError(f"documents without '{self.field}' (run Embed first): {missing[:5]}")
    keep, scores = select(self._classifier, np.stack([np.asarray(d[self.field]) for d in batch]),
                          self.threshold)
    self.scored.inc(len(batch))
    for doc, keep_it, score in zip(batch, keep, scores):
      if not keep_it:
        self.removed.inc()
        continue
      self.kept.inc()
      out = {k: v for k, v in doc.items() if not (self.drop_embedding and k == self.field)}
      out["quality_score"] = float(score)
      yield out


class _PassThroughFn(beam.DoFn):

  def __init__(self, counter_name: str):
    self.count = stages.counter(counter_name)

  def process(self, doc):
    self.count.inc()
    yield doc


def check_vocabulary_fits(vocab_size: int | None, model_config: Any, encoder: Any, model: Any
                          ) -> None:
  """ValueError unless `encoder`'s `vocab_size` ids (None: unknown, not checked) fit the
  embedding table of `model`: an id past it has no embedding row."""
  from phi_jax import model as model_lib
  model_vocab = model_lib.as_model_config(model_config).vocab_size
  if vocab_size is not None and vocab_size > model_vocab:
    raise ValueError(
        f"{encoder!r} has {vocab_size} token ids but the model from {model!r} embeds only "
        f"{model_vocab} (its vocab_size): encode documents with the model's own tokenizer "
        "(corpus.quality_tokenizer, or a tokenizer.json in the checkpoint workdir)")


def restore_checkpoint(workdir: str, step: int | None = None) -> tuple[Any, Any]:
  """(model config, params) of a phi_jax checkpoint workdir (`DIR/checkpoints/<step>/`), local
  or remote, through `phi_jax.checkpoint.restore_params`. That reads local directories, so a
  remote workdir's `checkpoints/` (every step in it) is first copied to a local temporary one."""
  import jax

  from phi_jax import checkpoint
  if not files.is_remote(workdir):
    return checkpoint.restore_params(workdir, step)
  with tempfile.TemporaryDirectory(prefix="phi1_quality_model_") as local:
    stages.copy_tree(epath.Path(workdir) / "checkpoints", os.path.join(local, "checkpoints"))
    model_config, params = checkpoint.restore_params(local, step)
    return model_config, jax.block_until_ready(params)  # read before the copy is deleted


class CheckpointLoader:
  """A picklable model_loader for `Embed`: restores (model config, params) from a phi_jax
  checkpoint workdir, local or remote (`restore_checkpoint`), on each worker."""

  def __init__(self, workdir: str, step: int | None = None):
    self.workdir, self.step = workdir, step

  def __repr__(self):
    return f"CheckpointLoader({self.workdir!r})"

  def __call__(self):
    return restore_checkpoint(self.workdir, self.step)


def _split_by_kind(pcoll, kinds, label):
  if kinds is None:
    return pcoll, None
  return pcoll | f"{label}SplitKinds" >> beam.Partition(_kind_partition, 2, kinds)


def _kind_partition(doc, n_partitions, kinds):
  del n_partitions
  return 0 if _kind_matches(doc, kinds) else 1


class Annotate(beam.PTransform):
  """Annotates a deterministic sample of the documents: outputs only the sampled ones.

  A document of a kind in `kinds` (None = all) is sampled when `in_sample(id, fraction, seed)`,
  and comes out with `quality_annotation` (score) and `quality_label` (bool). Counters:
  quality_annotate_{seen,sampled,positive,negative,errors}. on_error='raise' fails the bundle
  on an annotator error (Beam retries it); 'skip' drops the document and counts it.
  """

  def __init__(self, annotator: Annotator | None = None, fraction: float = 1.0, seed: int = 0,
               kinds: Sequence[str] | None = ("code",), on_error: str = "raise"):
    super().__init__()
    if on_error not in ("raise", "skip"):
      raise ValueError(f"on_error={on_error!r} is not 'raise' or 'skip'")
    if not 0.0 <= fraction <= 1.0:
      raise ValueError(f"fraction={fraction} must be in [0, 1]")
    self.annotator = annotator or HeuristicAnnotator()
    self.fraction, self.seed, self.on_error = fraction, seed, on_error
    self.kinds = None if kinds is None else tuple(kinds)

  def expand(self, pcoll):
    return pcoll | "Annotate" >> beam.ParDo(
        _AnnotateFn(self.annotator, self.fraction, self.seed, self.kinds, self.on_error))


class Embed(beam.PTransform):
  """Adds `embedding` (float32 [d_model], `embed_texts`) to documents of `kinds` (None = all).

  `model_loader()` -> (model config, params) runs once per worker in DoFn.setup (e.g.
  `CheckpointLoader(workdir)`); `encode_fn` (text -> token ids) must be picklable, and
  `vocab_size` (its number of ids, if known) is checked there against the model's. Elements are
  grouped with beam.BatchElements (up to `max_group`), then run `batch_size` rows at a time on
  fixed shapes. Documents of other kinds pass through untouched. Counters:
  quality_embed_{documents,batches,passthrough}.
  """

  def __init__(self, model_loader: Callable[[], tuple], encode_fn: Callable[[str], Sequence[int]],
               max_len: int = 512, batch_size: int = 8, kinds: Sequence[str] | None = ("code",),
               field: str = "embedding", max_group: int | None = None,
               vocab_size: int | None = None):
    super().__init__()
    self.model_loader, self.encode_fn, self.vocab_size = model_loader, encode_fn, vocab_size
    self.max_len, self.batch_size, self.field = max_len, batch_size, field
    self.kinds = None if kinds is None else tuple(kinds)
    self.max_group = max_group or 8 * batch_size

  def expand(self, pcoll):
    selected, others = _split_by_kind(pcoll, self.kinds, "Embed")
    embedded = (selected
                | "Batch" >> beam.BatchElements(min_batch_size=1, max_batch_size=self.max_group)
                | "Embed" >> beam.ParDo(_EmbedFn(self.model_loader, self.encode_fn, self.max_len,
                                                 self.batch_size, self.field, self.vocab_size)))
    if others is None:
      return embedded
    others = others | "PassThrough" >> beam.ParDo(_PassThroughFn("quality_embed_passthrough"))
    return (embedded, others) | "Merge" >> beam.Flatten()


class ScoreAndFilter(beam.PTransform):
  """Scores documents of `kinds` with the saved classifier and keeps those >= threshold.

  Kept documents gain `quality_score` (P(positive)) and lose `embedding` unless
  drop_embedding=False; documents of other kinds pass through untouched. The classifier is
  loaded once per worker (DoFn.setup) from `classifier_path` (local or gs://...). Counters:
  quality_score_{scored,kept,removed,passthrough}; kept + removed = scored.
  """

  def __init__(self, classifier_path: str, threshold: float = 0.5,
               kinds: Sequence[str] | None = ("code",), field: str = "embedding",
               drop_embedding: bool = True, batch_size: int = 256):
    super().__init__()
    self.classifier_path, self.threshold = str(classifier_path), threshold
    self.kinds = None if kinds is None else tuple(kinds)
    self.field, self.drop_embedding, self.batch_size = field, drop_embedding, batch_size

  def expand(self, pcoll):
    selected, others = _split_by_kind(pcoll, self.kinds, "Score")
    kept = (selected
            | "Batch" >> beam.BatchElements(min_batch_size=1, max_batch_size=self.batch_size)
            | "Score" >> beam.ParDo(_ScoreFn(self.classifier_path, self.threshold, self.field,
                                             self.drop_embedding)))
    if others is None:
      return kept
    others = others | "PassThrough" >> beam.ParDo(_PassThroughFn("quality_score_passthrough"))
    return (kept, others) | "Merge" >> beam.Flatten()


def training_example_json(doc: Mapping, field: str = "embedding") -> str:
  """One annotated + embedded document as a JSON line for `read_training_examples`."""
  return json.dumps({
      "id": doc["id"], "quality_label": bool(doc["quality_label"]),
      "quality_annotation": float(doc["quality_annotation"]),
      "embedding": [float(v) for v in np.asarray(doc[field], np.float32)]})


class ToTrainingExample(beam.PTransform):
  """Annotated + embedded documents -> JSON lines {id, quality_label, quality_annotation,
  embedding: [floats]}, for `beam.io.WriteToText` and then `read_training_examples`."""

  def __init__(self, field: str = "embedding"):
    super().__init__()
    self.field = field

  def expand(self, pcoll):
    return pcoll | "ToJson" >> beam.Map(training_example_json, field=self.field)


def read_training_examples(file_pattern: str) -> tuple[list[str], np.ndarray, np.ndarray]:
  """(ids, embeddings [n, d], labels [n]) from the JSON lines of `ToTrainingExample`, sorted
  by id so that training does not depend on shard order. Any Beam filesystem pattern works."""
  rows = []
  for match in FileSystems.match([file_pattern])[0].metadata_list:
    with FileSystems.open(match.path) as handle:
      for line in io.TextIOWrapper(handle, encoding="utf-8"):
        if line.strip():
          rows.append(json.loads(line))
  if not rows:
    raise FileNotFoundError(f"no training examples match {file_pattern}")
  rows.sort(key=lambda r: r["id"])
  return ([r["id"] for r in rows], np.asarray([r["embedding"] for r in rows], np.float32),
          np.asarray([r["quality_label"] for r in rows], bool))
