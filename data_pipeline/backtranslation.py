"""Instruction backtranslation (Humpback, Li et al. 2023): instruction data made from unlabelled
text. A *backward* model, finetuned on (output -> instruction) pairs of a small seed, writes the
instruction each unlabelled document answers (self-augment); the current model rates each
candidate pair and the best are kept (self-curate); the next model trains on seed + curated.

Pairs are documents `{"id", "kind", "instruction", "output", "system", "source"}`: kind
`instruction_seed` or `instruction_augmented` (the task's parts), `system` the tag that tells
them apart in training ("answer in the style of an AI assistant" for the seed, "answer with
knowledge from web search" for augmented pairs; config data).

* Seed (`read_pairs`, `exercise_pair`): a JSONL file of `{"instruction", "output"}`,
  OpenAssistant's message trees (`*.trees.jsonl`: each tree's first prompt and its best-ranked
  assistant reply), or the corpus's own CodeExercises: the docstring asks, the function answers.
  A file's bad lines are skipped and counted by reason (`SEED_SKIPS`).
* Self-augment (`augmented_instruction`): a generated instruction that is empty, a copy of its
  text (`copied_output`) or cut by the token cap (`runaway`) is counted and skipped.
* Unlabelled (`unlabelled_texts`): the corpus's functions with their docstrings removed (nobody
  wrote their instruction down) and textbook passages, or a JSONL/Parquet file's `text`.
* Self-curation by rubric (`rubric_request`, `parse_score`): a 5-point rating ending in
  `Score: <n>`; an answer without one is counted unparseable, never guessed. Or by likelihood
  (phi_jax.likelihood): the forward model's mean per-token log-probability of the output given
  the instruction, for models too small to follow a rubric.
"""

from __future__ import annotations

import ast
import collections
import difflib
import hashlib
import json
import re
import textwrap
from collections.abc import Iterable, Iterator
from pathlib import Path

import apache_beam as beam
import numpy as np

from data_pipeline import generation, stages
from phi_jax import instructions, likelihood, vocabularies
from phi_jax import model as model_lib

SEED = "instruction_seed"
AUGMENTED = "instruction_augmented"
SCORES = (1, 2, 3, 4, 5)

# Our own wording of the paper's 5-point rubric; a user's file replaces it (same placeholders).
RUBRIC = """Rate how well the answer below serves as an AI assistant's response to the user's
instruction, on a scale from 1 to 5:
1: incomplete, vague, off-topic, or promotional; it does not really answer the instruction.
2: it answers most of what was asked, but only at a high level, without the details needed.
3: helpful, but not written as an assistant would write it: it reads like an excerpt from a
blog, a web page or a book.
4: written from an assistant's point of view, it answers the instruction completely and
clearly; it could be a little more concise, focused or insightful.
5: a perfect assistant answer: focused on the instruction, complete, expert and well written.
Explain your rating in a sentence or two, then give it on the last line as "Score: <rating>".

Instruction: {instruction}

Answer: {output}"""

_SCORE = re.compile(r"score\s*(?:[:=]|is)\s*\**\s*([0-9]+(?:\.[0-9]+)?)\s*(?:/\s*5)?", re.I)


def pair(instruction: str, output: str, kind: str, system: str, source: str) -> dict:
  digest = hashlib.sha256(f"{source}\0{instruction}\0{output}".encode()).hexdigest()[:16]
  return {
    "id": f"{source}/{digest}",
    "kind": kind,
    "instruction": instruction,
    "output": output,
    "system": system,
    "source": source,
    "text": f"{instruction}\n{output}",  # what dedup and decontamination read
  }


# ---------------------------------------------------------------------------------------------
# Seed


def oasst_pairs(trees: Iterable[dict], lang: str = "en") -> Iterator[tuple[str, str]]:
  """(first prompt, its best-ranked assistant reply) of each OpenAssistant message tree (their
  texts as the file has them: `read_pairs` checks them)."""
  for tree in trees:
    prompt = tree.get("prompt") or {}
    if prompt.get("role") != "prompter" or (lang and prompt.get("lang") != lang):
      continue
    replies = [r for r in prompt.get("replies", []) if r.get("role") == "assistant"]
    ranked = [r for r in replies if r.get("rank") is not None]
    if ranked:
      yield prompt.get("text"), min(ranked, key=lambda r: r["rank"]).get("text")


# Why a seed file's line is skipped: not a JSON object; no instruction or output (or null); one
# that is not a string; one that is only whitespace.
SEED_SKIPS = ("seed_bad_json", "seed_missing_field", "seed_not_string", "seed_empty")


def _seed_skip(instruction, output) -> str:
  """The SEED_SKIPS reason (instruction, output) is no seed pair for, or ""."""
  if instruction is None or output is None:
    return "seed_missing_field"
  if not isinstance(instruction, str) or not isinstance(output, str):
    return "seed_not_string"
  return "" if instruction.strip() and output.strip() else "seed_empty"


def read_pairs(path: str) -> tuple[list[tuple[str, str]], dict[str, int]]:
  """(instruction, output) pairs of a JSONL file: `{"instruction", "output"}` rows, or
  OpenAssistant message trees (rows with a `prompt` tree; its first row that is a JSON object
  says which), and the count of lines skipped by reason (SEED_SKIPS)."""
  rows, skipped = [], collections.Counter()
  for line in Path(path).read_text().splitlines():
    if not line.strip():
      continue
    try:
      row = json.loads(line)
    except json.JSONDecodeError:
      row = None
    if isinstance(row, dict):
      rows.append(row)
    else:
      skipped["seed_bad_json"] += 1
  if rows and isinstance(rows[0].get("prompt"), dict):
    trees = [r for r in rows if isinstance(r.get("prompt"), dict)]
    skipped["seed_missing_field"] += len(rows) - len(trees)
    found = oasst_pairs(trees)
  else:
    found = ((r.get("instruction"), r.get("output")) for r in rows)
  pairs = []
  for instruction, output in found:
    reason = _seed_skip(instruction, output)
    if reason:
      skipped[reason] += 1
    else:
      pairs.append((instruction, output))
  return pairs, {k: v for k, v in sorted(skipped.items()) if v}


def exercise_pair(prompt: str, solution: str) -> tuple[str, str] | None:
  """A CodeExercise as (instruction, output): the docstring and signature ask, the whole function
  answers. None when the prompt has no function with a docstring."""
  try:
    tree = ast.parse(prompt + solution)
  except SyntaxError:
    return None
  function = next((n for n in tree.body if isinstance(n, ast.FunctionDef)), None)
  docstring = ast.get_docstring(function) if function else None
  if not docstring:
    return None
  lines = (prompt + solution).splitlines()
  signature = " ".join(
    line.strip() for line in lines[function.lineno - 1 : function.body[0].lineno - 1]
  )
  return f"{docstring}\n\nWrite it as a Python function: {signature}", prompt + solution


# ---------------------------------------------------------------------------------------------
# Unlabelled text


def _without_docstring(source: str, function: ast.FunctionDef) -> str:
  """`function`'s source with its docstring lines removed."""
  lines = source.splitlines(keepends=True)
  body = function.body[0]
  start, end = function.lineno - 1, function.end_lineno
  if isinstance(body, ast.Expr) and isinstance(getattr(body, "value", None), ast.Constant):
    drop = set(range(body.lineno - 1, body.end_lineno))
    kept = [line for i, line in enumerate(lines[start:end], start) if i not in drop]
  else:
    kept = lines[start:end]
  return textwrap.dedent("".join(kept))


def code_functions(text: str, min_lines: int, max_lines: int) -> Iterator[str]:
  """The top-level functions of a module (min_lines..max_lines long, docstrings removed) that
  keep a body once their docstring is gone."""
  try:
    tree = ast.parse(text)
  except SyntaxError:
    return
  for node in tree.body:
    if not isinstance(node, ast.FunctionDef) or node.end_lineno is None:
      continue
    source = _without_docstring(text, node)
    length = len(source.strip().splitlines())
    if max(min_lines, 2) <= length <= max_lines:  # a signature and at least one line of body
      yield source


def passages(text: str, min_chars: int, max_chars: int) -> Iterator[str]:
  """Paragraph groups of a textbook document, each min_chars..max_chars long."""
  current = ""
  for paragraph in re.split(r"\n\s*\n", text):
    paragraph = paragraph.strip()
    if not paragraph:
      continue
    if current and len(current) + len(paragraph) + 2 > max_chars:
      if len(current) >= min_chars:
        yield current
      current = ""
    current = f"{current}\n\n{paragraph}" if current else paragraph
  if min_chars <= len(current) <= max_chars:
    yield current


def read_texts(path: str) -> list[str]:
  """The `text` of each row of a JSONL or Parquet file."""
  if path.endswith(".parquet"):
    import pyarrow.parquet as pq  # only Parquet input needs it (Beam brings pyarrow)

    table = pq.read_table(path, columns=["text"])
    return [t for t in table.column("text").to_pylist() if t]
  rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
  missing = [i for i, r in enumerate(rows, 1) if not isinstance(r.get("text"), str)]
  if missing:
    raise ValueError(f"{path}:{missing[0]}: an unlabelled row needs a string 'text'")
  return [r["text"] for r in rows]


# ---------------------------------------------------------------------------------------------
# Self-augment and self-curate


def backward_instruction(output: str, lead: str) -> str:
  """The backward model's instruction: predict the instruction `output` answers."""
  return f"{lead}\n\n{output}"


def _prompt(instruction: str, mode: str) -> str:
  """A completion model gets the instruction template; a chat model the instruction itself."""
  return instructions.prompt(instruction) if mode == generation.COMPLETIONS else instruction


def augment_request(
  text: str,
  lead: str,
  max_tokens: int,
  mode: str = generation.COMPLETIONS,
  temperature: float = 0.0,
) -> generation.Request:
  """The backward model, asked for the instruction `text` answers: greedily, or sampled with a
  seed of the text's own (the same text asks the same question on every rerun)."""
  return generation.Request(
    prompt=_prompt(backward_instruction(text, lead), mode),
    mode=mode,
    max_tokens=max_tokens,
    temperature=temperature,
    seed=int(hashlib.sha256(text.encode()).hexdigest()[:8], 16) if temperature else 0,
    stop=instructions.STOP,
  )


_BLANK_LINE = re.compile(r"\n\s*\n")
_WORD = re.compile(r"\w+|[^\w\s]")


def clean_instruction(text: str) -> str:
  """A generated instruction: its text up to a blank line, stripped."""
  return _BLANK_LINE.split(text.strip(), maxsplit=1)[0].strip()


def copy_overlap(instruction: str, output: str) -> float:
  """The longest run of words and punctuation marks the two share verbatim (case-folded), as a
  share of the shorter one's: 1 when one contains the other, whatever the whitespace."""
  ours, theirs = (_WORD.findall(text.casefold()) for text in (instruction, output))
  if not ours or not theirs:
    return 0.0
  # No autojunk: it would drop the output's common words from matches.
  run = difflib.SequenceMatcher(None, ours, theirs, autojunk=False).find_longest_match()
  return run.size / min(len(ours), len(theirs))


# What can be wrong with a generated instruction (`augmented_instruction`).
INSTRUCTION_SKIPS = ("empty_instruction", "runaway", "copied_output")


def augmented_instruction(
  response: generation.Response, output: str, copy_threshold: float
) -> tuple[str, str]:
  """The instruction a backward-model response writes for `output`, and "" or what is wrong with
  it: `empty_instruction`; `copied_output` (copy_overlap with the output >= copy_threshold);
  `runaway` (the token cap cut the text before a blank line ended the instruction)."""
  text = response.text.lstrip()
  instruction = clean_instruction(text)
  if not instruction:
    return "", "empty_instruction"
  if copy_overlap(instruction, output) >= copy_threshold:
    return instruction, "copied_output"
  if response.finish_reason == "length" and not _BLANK_LINE.search(text):
    return instruction, "runaway"
  return instruction, ""


def rubric_request(
  instruction: str, output: str, rubric: str, max_tokens: int, mode: str = generation.COMPLETIONS
) -> generation.Request:
  return generation.Request(
    prompt=_prompt(rubric.format(instruction=instruction, output=output), mode),
    mode=mode,
    max_tokens=max_tokens,
    temperature=0.0,
    stop=instructions.STOP,
  )


def parse_score(text: str) -> int | None:
  """The rating in `Score: <n>` (the last one written; `Score: 4/5`, `score = 4`, `**Score:** 4`
  read too); None when there is none or it is not one of 1..5."""
  found = _SCORE.findall(text.replace("**", ""))
  if not found:
    return None
  value = float(found[-1])
  return int(value) if value.is_integer() and int(value) in SCORES else None


class GenerateInstructions(beam.DoFn):
  """A [start, stop) range of the unlabelled texts -> candidate pairs (the generated instruction,
  the text), through the response cache; failures and flawed instructions (empty, copied,
  runaway: `augmented_instruction`) counted by reason and skipped (runaways kept with
  `keep_runaway`)."""

  def __init__(self, texts, requests, backend, cache_dir: str, bt):
    self.texts, self.requests, self.backend, self.cache_dir = texts, requests, backend, cache_dir
    self.system, self.copy_threshold = bt.augmented_system, float(bt.copy_threshold)
    self.keep_runaway = bool(bt.keep_runaway)

  def process(self, shard: tuple[int, int]):
    start, stop = shard
    outcomes = generation.generate(
      self.backend, generation.ResponseCache(self.cache_dir), self.requests[start:stop]
    )
    for doc, outcome in zip(self.texts[start:stop], outcomes):
      stages.counter("cached" if outcome.cached else "requested").inc()
      if outcome.response is None:
        stages.counter(f"failed_{outcome.failure}").inc()
        continue
      stages.counter("completion_tokens").inc(outcome.response.completion_tokens)
      instruction, flaw = augmented_instruction(outcome.response, doc["text"], self.copy_threshold)
      if flaw:
        stages.counter(flaw).inc()
        if not (flaw == "runaway" and self.keep_runaway):
          continue
      stages.counter("candidates").inc()
      yield pair(instruction, doc["text"], AUGMENTED, self.system, "augmented")


def rubric_scores(
  candidates: list[dict], backend, cache_dir: str, rubric: str, bt
) -> tuple[list[tuple[dict, float]], dict]:
  """(pair, score) of every candidate the model rated in a parseable way, and the counts:
  generated, parsed, unparseable, failed_<reason>, score_<n>."""
  mode = bt.mode if bt.base_url else generation.COMPLETIONS
  requests = [
    rubric_request(d["instruction"], d["output"], rubric, int(bt.rubric_max_tokens), mode)
    for d in candidates
  ]
  outcomes = generation.generate(backend, generation.ResponseCache(cache_dir), requests)
  counters: dict = {"generated": 0, "parsed": 0, "unparseable": 0}
  counters.update({f"score_{n}": 0 for n in SCORES})
  scored = []
  for doc, outcome in zip(candidates, outcomes):
    if outcome.response is None:
      key = f"failed_{outcome.failure}"
      counters[key] = counters.get(key, 0) + 1
      continue
    counters["generated"] += 1
    score = parse_score(outcome.response.text)
    if score is None:
      counters["unparseable"] += 1
      continue
    counters["parsed"] += 1
    counters[f"score_{score}"] += 1
    scored.append(({**doc, "score": score}, float(score)))
  return scored, counters


def likelihood_scores(
  candidates: list[dict], model_dir: str, tokenizer: str, bt
) -> tuple[list[tuple[dict, float]], dict]:
  """(pair, mean per-token log-probability of the output given the instruction's tagged prompt)
  under the model, and the counts with a 10-bin histogram of the scores. An output longer than
  the model's context (with end-of-text and one prompt token) has no score: counted as
  `too_long`, never kept."""
  config, params = likelihood.from_checkpoint(model_dir)
  vocab = vocabularies.make_vocabulary(tokenizer)
  max_len = model_lib.as_model_config(config).max_len
  fitting = [d for d in candidates if len(vocab.encode(d["output"])) + 2 <= max_len]
  texts = [
    (instructions.prompt(d["instruction"], system=d["system"]), d["output"]) for d in fitting
  ]
  results = likelihood.score_texts(
    config, params, vocab, texts, batch_size=int(bt.score_batch_size), append_eos=True
  )
  scores = np.array([r["mean_logprob"] for r in results])
  counts, edges = np.histogram(scores, bins=10) if len(scores) else (np.zeros(0), np.zeros(0))
  counters = {
    "generated": len(candidates),
    "parsed": len(fitting),
    "unparseable": 0,
    "too_long": len(candidates) - len(fitting),
    "histogram": {"counts": counts.tolist(), "edges": [round(float(e), 4) for e in edges]},
  }
  scored = [({**d, "score": float(s)}, float(s)) for d, s in zip(fitting, scores)]
  return scored, counters


def keep(scored: list[tuple[dict, float]], bt) -> list[dict]:
  """The pairs to train on: rubric scores at or above `threshold`; likelihood scores in the top
  `likelihood_keep_fraction` (ties broken by id, so the choice is reproducible)."""
  if bt.scorer == "rubric":
    return [d for d, score in scored if score >= float(bt.threshold)]
  ranked = sorted(scored, key=lambda item: (-item[1], item[0]["id"]))
  count = int(round(len(ranked) * float(bt.likelihood_keep_fraction)))
  return [d for d, _ in ranked[:count]]
