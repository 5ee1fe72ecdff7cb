"""Synthetic textbooks and exercises, phi-1's other half of the data: prompts from a seeded grid,
generated through `data_pipeline.generation`, parsed and validated into corpus documents.

  textbook  -- prose that teaches with code, made diverse by constraining topic x audience x
               style (the paper's topic and target audience; Cosmopedia's styles). Kept when
               every Python block in it parses.
  exercise  -- a function signature + docstring, then its solution (CodeExercises), made
               diverse by constraining the function's name (verb_noun) x concept x difficulty.
               Kept when it parses and has a docstring and a body; tests the model wrote after
               the function (asserts) must pass in the sandbox.

A grid is a pure function of the config: item i is the same prompt on every run and worker, so
the build's cache (`generation.ResponseCache`) is hit on a rerun. The grid is enumerated in a
seeded order; asking for more items than it has cells goes round it again with other seeds.
Templates are config data (`synthetic.*_template`, formatted with the cell's fields); `*_start`
is the document's own beginning, sent at the end of the prompt (completion models) and kept in
the document.
"""

from __future__ import annotations

import ast
import dataclasses
import itertools
import re
import textwrap
from collections.abc import Iterator
from typing import Any

import apache_beam as beam
import numpy as np

from data_pipeline import generation, sources, stages
from phi_jax.evaluation import sandbox

TEXTBOOK = "textbook"
EXERCISE = "exercise"
SOURCES = {TEXTBOOK: "synthetic_textbook", EXERCISE: "synthetic_exercises"}

_FENCED = re.compile(r"```[ \t]*([\w+-]*)[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)
_REFUSAL = re.compile(
  r"^\W*(i'?m sorry|i am sorry|sorry, |i can(?:no|')t|i am unable|i'm unable|as an ai\b)",
  re.IGNORECASE,
)


@dataclasses.dataclass(frozen=True)
class Grid:
  """The prompts of one kind: `axes` (field -> values) crossed, enumerated in a seeded order."""

  kind: str
  axes: tuple[tuple[str, tuple[str, ...]], ...]
  template: str
  start: str
  system: str
  request: dict  # generation.Request fields other than prompt / system
  seed: int

  def __len__(self) -> int:
    return int(np.prod([len(values) for _, values in self.axes]))

  def cell(self, i: int) -> dict[str, str]:
    """Item i's fields: the grid's cells in a seeded order, then again in another for i >= len."""
    size = len(self)
    round_, offset = divmod(i, size)
    order = np.random.default_rng([self.seed, round_]).permutation(size)
    index, fields = int(order[offset]), {}
    for name, values in reversed(self.axes):
      index, position = divmod(index, len(values))
      fields[name] = values[position]
    return fields

  def item(self, i: int) -> dict:
    """Item i: its id, kind, cell, the document's start and the request."""
    fields = self.cell(i)
    start = self.start.format(**fields)
    request = generation.Request(
      prompt=self.template.format(**fields) + start,
      system=self.system.format(**fields),
      seed=self.seed + i // len(self),
      **self.request,
    )
    return {"id": f"{self.kind}-{i}", "kind": self.kind, "cell": fields, "start": start}, request


def _values(name: str, values) -> tuple[str, ...]:
  values = tuple(str(v) for v in values)
  if not values:
    raise ValueError(f"synthetic.{name} is empty: the prompt grid needs at least one value")
  return values


def _request_fields(syn: Any, max_tokens: int, stop) -> dict:
  return dict(
    mode=syn.mode,
    max_tokens=int(max_tokens),
    temperature=float(syn.temperature),
    top_p=float(syn.top_p),
    stop=tuple(stop),
  )


def textbook_grid(syn: Any, topics: tuple[str, ...] | None = None) -> Grid:
  """topic x audience x style; `topics` overrides synthetic.topics (an expanded topic tree)."""
  return Grid(
    kind=TEXTBOOK,
    axes=(
      ("topic", _values("topics", topics or syn.topics)),
      ("audience", _values("audiences", syn.audiences)),
      ("style", _values("styles", syn.styles)),
    ),
    template=syn.textbook_template,
    start=syn.textbook_start,
    system=syn.textbook_system,
    request=_request_fields(syn, syn.textbook_max_tokens, syn.textbook_stop),
    seed=int(syn.seed),
  )


def exercise_grid(syn: Any) -> Grid:
  """function name (verb_noun) x concept x difficulty."""
  names = tuple(
    f"{verb}_{noun}"
    for verb, noun in itertools.product(
      _values("function_verbs", syn.function_verbs), _values("function_nouns", syn.function_nouns)
    )
  )
  return Grid(
    kind=EXERCISE,
    axes=(
      ("function_name", names),
      ("concept", _values("concepts", syn.concepts)),
      ("difficulty", _values("difficulties", syn.difficulties)),
    ),
    template=syn.exercise_template,
    start=syn.exercise_start,
    system=syn.exercise_system,
    request=_request_fields(syn, syn.exercise_max_tokens, syn.exercise_stop),
    seed=int(syn.seed) + 1,
  )


def topic_requests(syn: Any) -> list[generation.Request]:
  """One request per topic for `synthetic.topic_expansion` subtopics (the topic tree's level)."""
  return [
    generation.Request(
      prompt=syn.topic_template.format(topic=topic, count=syn.topic_expansion),
      system=syn.textbook_system,
      seed=int(syn.seed),
      **_request_fields(syn, 256, ()),
    )
    for topic in _values("topics", syn.topics)
  ]


def parse_subtopics(topic: str, text: str, count: int) -> list[str]:
  """Up to `count` subtopics from a reply listing one per line (bullets and numbers dropped),
  each as "topic: subtopic"."""
  found = []
  for line in text.splitlines():
    item = re.sub(r"^\s*(?:[-*\u2022]|\d+[.)])\s*", "", line).strip().strip("*").strip()
    if 3 <= len(item) <= 120 and item.lower() != topic.lower() and item not in found:
      found.append(item)
  return [f"{topic}: {item}" for item in found[:count]]


def code_blocks(text: str) -> list[str]:
  """The Python of fenced blocks (```python, ```py or unlabelled)."""
  return [
    body
    for label, body in _FENCED.findall(text)
    if label.lower() in ("", "python", "py", "python3")
  ]


def _parses(code: str) -> bool:
  try:
    ast.parse(code)
  except (SyntaxError, ValueError):
    return False
  return True


# Every rule an answer can break; all apply unless `synthetic.skip_rules` names them.
RULES = (
  "empty",
  "refusal",
  "truncated",
  "too_short",
  "code_syntax",
  "no_code",
  "no_function",
  "no_docstring",
  "no_body",
  "tests_failed",
)


def _common_rejection(response: generation.Response, min_tokens: int) -> str:
  text = response.text.strip()
  if not text:
    return "empty"
  if _REFUSAL.match(text):
    return "refusal"
  if response.finish_reason == "length":
    return "truncated"
  if response.completion_tokens < min_tokens:
    return "too_short"
  return ""


def _textbook_rejection(text: str) -> str:
  blocks = code_blocks(text)
  if blocks:
    return "" if all(_parses(b) for b in blocks) else "code_syntax"
  # Without fences, a textbook is Python whose prose lives in docstrings and comments.
  return "" if _parses(text) else "no_code"


def textbook_document(
  start: str, response: generation.Response, min_tokens: int, rules=RULES
) -> tuple[str | None, str]:
  """(document text, "") when the textbook is kept, else (None, the rule in `rules` it broke)."""
  text = (start + response.text).strip() + "\n"
  for reason in (_common_rejection(response, min_tokens), _textbook_rejection(text)):
    if reason in rules:
      return None, reason
  return text, ""


@dataclasses.dataclass(frozen=True)
class Exercise:
  prompt: str  # signature + docstring
  solution: str  # the body
  tests: str  # the asserts written after the function ("" when none)


def _split_exercise(code: str) -> Exercise | str:
  """The exercise in `code`, or the rule it breaks."""
  try:
    module = ast.parse(code)
  except (SyntaxError, ValueError):
    return "code_syntax"
  functions = [n for n in module.body if isinstance(n, ast.FunctionDef)]
  if not functions:
    return "no_function"
  function = functions[0]
  docstring = (
    function.body[0]
    if function.body
    and isinstance(function.body[0], ast.Expr)
    and isinstance(function.body[0].value, ast.Constant)
    and isinstance(function.body[0].value.value, str)
    else None
  )
  if docstring is None:
    return "no_docstring"
  body = function.body[1:]
  if not body or all(
    isinstance(n, ast.Pass) or (isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant))
    for n in body
  ):
    return "no_body"
  lines = code.splitlines(keepends=True)
  head = "".join(lines[: function.lineno - 1])  # imports and helpers the exercise relies on
  prompt = head + "".join(lines[function.lineno - 1 : docstring.end_lineno])
  solution = "".join(lines[docstring.end_lineno : function.end_lineno])
  asserts = [n for n in module.body[module.body.index(function) + 1 :] if isinstance(n, ast.Assert)]
  tests = "\n".join(ast.get_source_segment(code, n) for n in asserts)
  return Exercise(prompt, solution.rstrip() + "\n", tests)


def parse_exercise(
  start: str, response: generation.Response, min_tokens: int, rules=RULES
) -> tuple[Exercise | None, str]:
  """(Exercise, "") when the exercise is kept, else (None, the rule in `rules` it broke). An
  answer that breaks only rules not applied is kept as it came: `start` (the signature and
  docstring of a completion prompt) is its prompt, the answer its solution, without tests."""
  reason = _common_rejection(response, min_tokens)
  if reason in rules:
    return None, reason
  text = start + response.text
  blocks = code_blocks(text)
  exercise = _split_exercise(textwrap.dedent(blocks[0] if blocks else text))
  if isinstance(exercise, Exercise):
    return exercise, ""
  if exercise in rules:
    return None, exercise
  return Exercise(start, response.text.rstrip() + "\n", ""), ""


def document(item: dict, text: str, **fields) -> dict:
  """A corpus document of a generated item (`sources.document`'s shape), its cell recorded."""
  doc = sources.document(item["kind"], SOURCES[item["kind"]], text, **fields)
  return {**doc, "cell": item["cell"]}


def shards(size: int, per_shard: int) -> Iterator[tuple[int, int]]:
  """[start, stop) item ranges of at most `per_shard` items."""
  for start in range(0, size, per_shard):
    yield start, min(size, start + per_shard)


class GenerateItems(beam.DoFn):
  """A [start, stop) range of a grid's items -> (item, response) for each item answered, through
  the response cache; requests, cache hits, attempts, failures (by reason) and tokens counted."""

  def __init__(self, grid: Grid, backend, cache_dir: str, budget_per_shard: int):
    self.grid, self.backend = grid, backend
    self.cache_dir, self.budget_per_shard = cache_dir, budget_per_shard

  def process(self, shard: tuple[int, int]):
    pairs = [self.grid.item(i) for i in range(*shard)]
    outcomes = generation.generate(
      self.backend,
      generation.ResponseCache(self.cache_dir),
      [request for _, request in pairs],
      generation.Budget(self.budget_per_shard),
    )
    for (item, _), outcome in zip(pairs, outcomes):
      stages.counter("cached" if outcome.cached else "requested").inc()
      stages.counter("attempts").inc(outcome.attempts)
      if outcome.response is None:
        stages.counter(f"failed_{outcome.failure}").inc()
        continue
      if not outcome.cached:
        stages.counter("prompt_tokens").inc(outcome.response.prompt_tokens)
        stages.counter("completion_tokens").inc(outcome.response.completion_tokens)
      yield item, outcome.response


class ValidateItems(beam.DoFn):
  """(item, response) -> a corpus document, or a rejection counted by the rule it broke.
  Exercises' own tests run in the sandbox (`phi_jax.evaluation.sandbox`)."""

  def __init__(
    self, min_tokens: int, rules, run_tests: bool, timeout_s: float, isolation: str, limits
  ):
    self.min_tokens, self.rules, self.run_tests = min_tokens, frozenset(rules), run_tests
    self.timeout_s, self.isolation, self.limits = timeout_s, isolation, limits

  def _exercise(self, item: dict, response: generation.Response):
    exercise, reason = parse_exercise(item["start"], response, self.min_tokens, self.rules)
    if exercise is None:
      return None, reason
    if exercise.tests and self.run_tests:
      result = sandbox.run(
        exercise.prompt + exercise.solution,
        self.timeout_s,
        test=exercise.tests,
        limits=self.limits,
        isolation=self.isolation,
      )
      if not result.passed and "tests_failed" in self.rules:
        return None, "tests_failed"
      stages.counter("tests_passed").inc()
    fields = dict(prompt=exercise.prompt, solution=exercise.solution)
    return document(item, exercise.prompt + exercise.solution, **fields), ""

  def process(self, element):
    item, response = element
    if item["kind"] == TEXTBOOK:
      text, reason = textbook_document(item["start"], response, self.min_tokens, self.rules)
      doc = document(item, text) if text is not None else None
    else:
      doc, reason = self._exercise(item, response)
    if doc is None:
      stages.counter(f"rejected_{reason}").inc()
      return
    stages.counter("valid").inc()
    yield doc
