"""Synthetic textbooks and exercises: the prompt grid, parsing and validation, the generation
layer's retries, budget and cache, and the build's stages against a server that fails on purpose
(tests/fake_openai.py), killed and rerun."""

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from fake_openai import FakeOpenAI, Reply

from data_pipeline import build, generation, synthetic
from phi_jax import configs

WORDS = [f"{a}{b}" for a in ("lo", "ra", "ki", "mu", "te", "zo", "pa", "ne") for b in "abcdefgh"]


def _seed(prompt: str) -> int:
  return int(hashlib.sha256(prompt.encode()).hexdigest()[:8], 16)


def _prose(seed: int, n: int = 60) -> str:
  rng = random.Random(seed)
  return " ".join(rng.choice(WORDS) for _ in range(n))


def good_textbook(prompt: str) -> str:
  k = _seed(prompt) % 1000
  return (
    f"{_prose(_seed(prompt))}.\n\n```python\ndef step_{k}(x):\n    return x * {k}\n\n"
    f"print(step_{k}(2))\n```\n\n{_prose(_seed(prompt) + 1)}.\n"
  )


def good_exercise(prompt: str, wrong: bool = False) -> str:
  name = prompt.split("named ")[1].split(" ")[0]
  k = _seed(prompt) % 97
  return (
    f"```python\ndef {name}(values: list[int]) -> int:\n"
    f'    """{_prose(_seed(prompt), 12)}: the sum of values plus {k}.\n\n'
    f'    >>> {name}([1, 2])\n    {k + 3}\n    """\n'
    f"    total = {k}\n    for value in values:\n        total += value\n    return total\n\n"
    f"assert {name}([1, 2]) == {k + 3 + int(wrong)}\nassert {name}([]) == {k}\n```\n"
  )


# What the fake server does with a prompt, by its hash (and the attempt): every failure and
# rejection the stages count, and mostly good answers.
CASES = (
  "server_error_once",
  "rate_limited_once",
  "garbage",
  "refusal",
  "bad_code",
  "slow_once",
  "truncated",
  "good",
  "good",
  "good",
)


def case(prompt: str) -> str:
  return CASES[_seed(prompt) % len(CASES)]


def answer(prompt: str, attempt: int) -> Reply:
  text = good_exercise(prompt) if "exercise" in prompt else good_textbook(prompt)
  kind = case(prompt)
  if kind == "server_error_once" and attempt == 1:
    return Reply(status=500)
  if kind == "rate_limited_once" and attempt == 1:
    return Reply(status=429)
  if kind == "slow_once" and attempt == 1:
    return Reply(text=text, delay_s=3.0)
  if kind == "garbage":
    return Reply(garbage=True)
  if kind == "refusal":
    return Reply(text="I'm sorry, but I can't help with that request.")
  if kind == "bad_code":
    return Reply(text=f"{_prose(_seed(prompt))}\n```python\ndef broken(:\n    return\n```\n")
  if kind == "truncated":
    return Reply(text=text[: len(text) // 2], finish_reason="length")
  return Reply(text=text)


def synthetic_config(url: str, textbooks: int = 0, exercises: int = 0):
  cfg = configs.get("tiny")
  cfg.synthetic.update(
    textbooks=textbooks,
    exercises=exercises,
    base_url=url,
    model="fake",
    timeout_s=1.0,
    backoff_s=0.01,
    max_retries=2,
    concurrency=4,
    items_per_shard=8,
    min_tokens=5,
  )
  return cfg


def expected_counts(prompts: list[str]) -> dict:
  kinds = [case(p) for p in prompts]
  rejected = {"refusal": "rejected_refusal", "bad_code": "rejected_code_syntax"}
  rejected["truncated"] = "rejected_truncated"
  counts = {"failed_malformed": kinds.count("garbage")}
  for kind, name in rejected.items():
    counts[name] = kinds.count(kind)
  counts["kept"] = len(prompts) - sum(counts.values())
  return counts


def grid_prompts(cfg, kind: str, count: int) -> list[str]:
  grid = (
    synthetic.textbook_grid(cfg.synthetic)
    if kind == synthetic.TEXTBOOK
    else synthetic.exercise_grid(cfg.synthetic)
  )
  return [grid.item(i)[1].prompt for i in range(count)]


def test_the_grid_is_a_pure_function_of_the_config_and_covers_every_cell():
  syn = configs.get("tiny").synthetic
  syn.update(topics=("a", "b", "c"), audiences=("x", "y"), styles=("s",))
  grid = synthetic.textbook_grid(syn)
  first = [grid.cell(i) for i in range(6)]
  assert sorted((c["topic"], c["audience"]) for c in first) == [(t, a) for t in "abc" for a in "xy"]
  assert first == [synthetic.textbook_grid(syn).cell(i) for i in range(6)]
  again = [grid.cell(i) for i in range(6, 12)]  # the second round: same cells, other order
  assert sorted(map(str, again)) == sorted(map(str, first)) and again != first
  _, request = grid.item(7)
  assert request.seed == syn.seed + 1 and "y" in request.prompt or "x" in request.prompt
  syn.seed = 1
  assert [synthetic.textbook_grid(syn).cell(i) for i in range(6)] != first
  names = {synthetic.exercise_grid(syn).cell(i)["function_name"] for i in range(300)}
  assert len(names) > 100 and all("_" in name for name in names)


def _response(text: str, finish: str = "stop", tokens: int = 200) -> generation.Response:
  return generation.Response(text, finish, 10, tokens)


def test_textbooks_are_kept_only_with_code_that_parses():
  keep = synthetic.textbook_document("", _response(good_textbook("t")), 150)
  assert keep[0] and "```python" in keep[0] and keep[1] == ""
  assert synthetic.textbook_document("", _response("prose only, no code at all"), 1) == (
    None,
    "no_code",
  )
  broken = "Intro.\n```python\nprint('ok')\n```\nMore.\n```python\nfor x in:\n```\n"
  assert synthetic.textbook_document("", _response(broken), 1) == (None, "code_syntax")
  assert synthetic.textbook_document("", _response("  "), 1) == (None, "empty")
  assert synthetic.textbook_document("", _response("As an AI, I cannot."), 1)[1] == "refusal"
  assert synthetic.textbook_document("", _response(good_textbook("t"), "length"), 1)[1] == (
    "truncated"
  )
  assert synthetic.textbook_document("", _response(good_textbook("t"), tokens=20), 150)[1] == (
    "too_short"
  )
  # A completion model's textbook is Python: the start (a docstring) is part of it.
  text, _ = synthetic.textbook_document(
    '"""Loops.\n', _response('"""\nfor i in range(3):\n  pass'), 1
  )
  assert text.startswith('"""Loops.') and "for i in range(3)" in text


def test_exercises_split_into_prompt_and_solution_and_need_docstring_and_body():
  exercise, reason = synthetic.parse_exercise(
    "", _response(good_exercise("named count_words x")), 1
  )
  assert reason == "" and exercise.prompt.startswith("def count_words(values: list[int]) -> int:")
  assert exercise.prompt.rstrip().endswith('"""') and "return total" in exercise.solution
  assert "total = " not in exercise.prompt and exercise.tests.count("assert") == 2
  namespace = {}
  exec(exercise.prompt + exercise.solution, namespace)  # noqa: S102 (our own test text)
  assert namespace["count_words"]([5]) == int(exercise.tests.split("== ")[-1]) + 5
  no_doc = "def f(x):\n    return x\n"
  assert synthetic.parse_exercise("", _response(no_doc), 1) == (None, "no_docstring")
  no_body = 'def f(x):\n    """Doc."""\n    ...\n'
  assert synthetic.parse_exercise("", _response(no_body), 1) == (None, "no_body")
  assert synthetic.parse_exercise("", _response("x = 1\n"), 1) == (None, "no_function")
  assert synthetic.parse_exercise("", _response("def f(:\n"), 1) == (None, "code_syntax")
  # Completion mode: the prompt's start (the signature) begins the exercise.
  exercise, _ = synthetic.parse_exercise(
    "def add(a, b):\n", _response('    """Add."""\n    return a + b\n'), 1
  )
  assert exercise.prompt == 'def add(a, b):\n    """Add."""\n' and exercise.tests == ""
  # Rules not applied keep an answer as it came: the start is the prompt, the answer the solution.
  garbage = _response("  def __init_name,", "length")
  assert synthetic.parse_exercise("def f(x):\n", garbage, 1) == (None, "truncated")
  exercise, reason = synthetic.parse_exercise("def f(x):\n", garbage, 1, rules=("empty",))
  assert reason == "" and exercise == synthetic.Exercise("def f(x):\n", "  def __init_name,\n", "")
  assert synthetic.textbook_document("", garbage, 1, rules=("empty",)) == (
    "def __init_name,\n",
    "",
  )


def test_subtopics_are_read_from_a_listed_reply():
  reply = "1. For loops\n2) While loops\n- Nested loops\n* for loops\n\nLoops\n"
  assert synthetic.parse_subtopics("Loops", reply, 3) == [
    "Loops: For loops",
    "Loops: While loops",
    "Loops: Nested loops",
  ]


def test_openai_backend_retries_what_is_transient_counts_attempts_and_keeps_a_budget(tmp_path):
  def reply(prompt, attempt):
    return {
      "flaky": Reply(status=503) if attempt < 3 else Reply(text="ok"),
      "bad": Reply(status=400),
      "slow": Reply(text="late", delay_s=2.0),
      "garbage": Reply(garbage=True),
    }.get(prompt, Reply(text=f"answer to {prompt}"))

  with FakeOpenAI(reply) as server:
    backend = generation.OpenAIBackend(
      server.url, "fake", timeout_s=0.5, max_retries=3, backoff_s=0.01
    )
    cache = generation.ResponseCache(tmp_path / "cache")
    requests = [generation.Request(p) for p in ("flaky", "bad", "slow", "garbage", "fine")]
    outcomes = generation.generate(backend, cache, requests)
    assert [(o.failure, o.attempts) for o in outcomes] == [
      ("", 3),
      ("http_400", 1),
      ("timeout", 4),
      ("malformed", 1),
      ("", 1),
    ]
    assert outcomes[4].response.text == "answer to fine"
    assert outcomes[4].response.completion_tokens == 3
    assert server.requests["bad"] == 1 and server.requests["slow"] == 4
    again = generation.generate(backend, cache, requests)  # answered ones come from the cache
    assert [o.cached for o in again] == [True, False, False, False, True]
    assert server.answered["fine"] == 1 and server.answered["flaky"] == 1
    # Another request (other settings) is another key; a budget of 2 sends two tries only.
    other = [generation.Request("fine", temperature=0.0), generation.Request("flaky2")]
    budgeted = generation.generate(backend, cache, other, generation.Budget(2))
    assert sorted(o.failure for o in budgeted).count("budget") <= 1
    assert sum(o.attempts for o in budgeted) == 2


def test_exercises_stage_counts_every_outcome_and_reruns_request_only_what_failed(tmp_path):
  items = 40
  with FakeOpenAI(answer, client_timeout_s=1.0) as server:
    cfg = synthetic_config(server.url, exercises=items)
    cfg.synthetic.cache_dir = str(tmp_path / "cache")
    prompts = grid_prompts(cfg, synthetic.EXERCISE, items)
    wrong = prompts[[case(p) for p in prompts].index("good")]  # one exercise fails its tests
    server.answer = lambda p, a: (
      Reply(text=good_exercise(p, wrong=True)) if p == wrong else answer(p, a)
    )
    first = build.synthesize(cfg, synthetic.EXERCISE, tmp_path / "a", [])
    want = expected_counts(prompts)
    want["rejected_tests_failed"], want["kept"] = 1, want["kept"] - 1
    assert {k: first.get(k, 0) for k in want} == want
    assert first["requested"] == items and first.get("cached", 0) == 0
    assert first["tests_passed"] == want["kept"]
    retried = sum(
      case(p) in ("server_error_once", "rate_limited_once", "slow_once") for p in prompts
    )
    assert first["attempts"] == items + retried  # what is malformed is not retried
    assert max(server.answered.values()) == 1
    docs = [
      json.loads(line)
      for f in (tmp_path / "a" / "synthetic_exercises").glob("docs-*")
      for line in f.open()
    ]
    assert len(docs) == want["kept"]
    assert {d["source"] for d in docs} == {"synthetic_exercises"}
    assert all(d["text"] == d["prompt"] + d["solution"] for d in docs)

    # A rerun elsewhere with the same cache: only what failed is requested again.
    second = build.synthesize(cfg, synthetic.EXERCISE, tmp_path / "b", [])
    assert second["cached"] == items - want["failed_malformed"]
    assert second["requested"] == want["failed_malformed"]
    assert second["kept"] == first["kept"] and max(server.answered.values()) == 1


def test_a_stage_where_everything_fails_is_an_error_naming_the_reasons(tmp_path):
  with FakeOpenAI(lambda p, a: Reply(status=404)) as server:
    cfg = synthetic_config(server.url, textbooks=5)
    with pytest.raises(RuntimeError, match=r"kept none of 5 .*failed_http_404=5"):
      build.synthesize(cfg, synthetic.TEXTBOOK, tmp_path, [])
  assert not (tmp_path / "synthetic_textbook").exists()
  cfg = synthetic_config("http://127.0.0.1:9/v1", textbooks=3)  # nothing listens there
  cfg.synthetic.max_retries = 0
  with pytest.raises(RuntimeError, match="failed_connection=3"):
    build.synthesize(cfg, synthetic.TEXTBOOK, tmp_path, [])


_KILLED_BUILD = """
import sys
from data_pipeline import build, synthetic
from test_synthetic import synthetic_config
cfg = synthetic_config(sys.argv[1], textbooks=int(sys.argv[2]))
cfg.synthetic.update(concurrency=2, items_per_shard=4)
build.synthesize(cfg, synthetic.TEXTBOOK, sys.argv[3], [])
"""


def test_a_killed_textbook_build_rerun_pays_for_nothing_twice(tmp_path):
  items = 32

  def slow(prompt, attempt):
    reply = answer(prompt, attempt)
    return Reply(**{**reply.__dict__, "delay_s": max(reply.delay_s, 0.1)})

  with FakeOpenAI(slow, client_timeout_s=1.0) as server:
    root = Path(__file__).resolve().parents[1]
    process = subprocess.Popen(
      [sys.executable, "-c", _KILLED_BUILD, server.url, str(items), str(tmp_path)],
      cwd=root,
      env={**os.environ, "PYTHONPATH": f"{root}{os.pathsep}{root / 'tests'}"},
    )
    cache = tmp_path / "generation_cache"
    # Wait on the cache, not on the server: an answer sent is not yet an answer kept.
    deadline = time.monotonic() + 240
    while len(list(cache.glob("*/*.json"))) < 8 and time.monotonic() < deadline:
      assert process.poll() is None, "the build ended before it was killed"
      time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    server.wait_idle()  # a request in flight at the kill is still answered (and counted) after it
    assert not (tmp_path / "synthetic_textbook" / "stage.json").exists()
    kept_before = len(list(cache.glob("*/*.json")))
    assert 8 <= kept_before < items
    answered_before = sum(server.answered.values())

    cfg = synthetic_config(server.url, textbooks=items)
    summary = build.synthesize(cfg, synthetic.TEXTBOOK, tmp_path, [])
    # Whatever reached the cache before the kill is not requested again; at most the answers in
    # flight when it came (concurrency 2) were paid for twice.
    assert summary["cached"] == kept_before and summary["requested"] == items - kept_before
    assert sum(server.answered.values()) - answered_before <= items - kept_before
    assert sum(n - 1 for n in server.answered.values()) <= answered_before - kept_before <= 2
    prompts = grid_prompts(cfg, synthetic.TEXTBOOK, items)
    assert {k: summary.get(k, 0) for k in expected_counts(prompts)} == expected_counts(prompts)
    answered = sum(1 for p in prompts if case(p) != "garbage")
    assert len(list(cache.glob("*/*.json"))) == answered


def test_mixture_rates_weight_the_synthetic_part_of_a_task(tmp_path, tiny_corpus):
  import shutil

  from phi_jax import input_pipeline

  data = tmp_path / "data"
  shutil.copytree(tiny_corpus, data)
  with FakeOpenAI(answer) as server:
    cfg = synthetic_config(server.url, textbooks=16, exercises=16)
    cfg.corpus.update(max_files=150, quality_model_steps=5, tokenizer_max_documents=500)
    cfg.logging.progress_bar = False
    manifest = build.run(cfg, data)
  parts = manifest["records"]["phi1_code_textbook"]["parts"]
  kept = manifest["synthetic_textbook"]["kept"]
  synthetic_docs = sum(
    parts["phi1_code_textbook:synthetic"][f"{s}_documents"] for s in ("train", "validation")
  )
  assert synthetic_docs == kept > 0
  assert (
    manifest["phi1_code_exercises"]["train_documents"]
    + manifest["phi1_code_exercises"]["validation_documents"]
    > manifest["synthetic_exercises"]["kept"]
  )
  cfg.data.update(source="seqio", dir=str(data))
  cfg.data.pretrain_rates = {
    "phi1_code_textbook:filtered": 0.75,
    "phi1_code_textbook:synthetic": 0.25,
  }
  rows = input_pipeline.MixtureRows(cfg.data, seq_len=64, seed=0, split="train")
  assert rows.task_names == ["phi1_code_textbook:filtered", "phi1_code_textbook:synthetic"]
  tasks = np.array([rows.interleave.locate(g)[0] for g in range(400)])
  assert abs((tasks == 1).mean() - 0.25) < 0.01
  assert len(rows[0]["targets"]) == 64
  # The held-out mixture leaves out a part without held-out documents (and keeps one with them).
  held_out = input_pipeline.MixtureRows(cfg.data, seq_len=64, seed=0, split="validation")
  with_validation = parts["phi1_code_textbook:synthetic"]["validation_documents"] > 0
  assert (
    held_out.task_names
    == ["phi1_code_textbook:filtered"] + ["phi1_code_textbook:synthetic"] * with_validation
  )
  synthetic_records = data / "records" / "phi1_code_textbook:synthetic"
  shutil.rmtree(synthetic_records)
  synthetic_records.mkdir()
  held_out = input_pipeline.MixtureRows(cfg.data, seq_len=64, seed=0, split="validation")
  assert held_out.task_names == ["phi1_code_textbook:filtered"]


def test_a_phi_jax_checkpoint_generates_in_process_batched_and_cached(tmp_path, tiny_corpus):
  from phi_jax import checkpoint, decode, serve, vocabularies

  run, spm = tiny_corpus / "quality_model" / "run", tiny_corpus / "tokenizer" / "spm.model"
  backend = generation.DecoderBackend(str(run), tokenizer=str(spm), max_batch=2)
  cache = generation.ResponseCache(tmp_path)
  requests = [
    generation.Request(p, mode=generation.COMPLETIONS, max_tokens=8, temperature=0.0)
    for p in ("def add(a, b):\n", "import os\n", "class Stack:\n")
  ] + [generation.Request("Explain loops.", max_tokens=8, temperature=0.0)]
  outcomes = generation.generate(backend, cache, requests)
  vocab = vocabularies.make_vocabulary(str(spm))
  config, params = checkpoint.restore_params(str(run))
  decoder = decode.Decoder(
    config,
    params,
    decode.SamplingConfig(max_new_tokens=8, eos_id=vocabularies.eot_id(vocab)),
  )
  want = decode.generate_text(decoder, vocab, [r.prompt for r in requests[:3]])
  want += [
    t.lstrip()
    for t in decode.generate_text(
      decoder, vocab, ["User: Explain loops.\nAssistant:"], stop=serve.CHAT_STOP
    )
  ]
  assert [o.response.text for o in outcomes] == want  # batched as phi_jax.serve batches
  assert all(o.response.completion_tokens <= 8 and o.response.prompt_tokens for o in outcomes)
  for o in outcomes[:3]:  # no stop strings: only max_tokens or end-of-text end a row
    assert (o.response.finish_reason == "length") == (o.response.completion_tokens == 8)
  assert [o.cached for o in generation.generate(backend, cache, requests)] == [True] * 4
