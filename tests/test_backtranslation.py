"""Instruction backtranslation (data_pipeline.backtranslation): seeds, unlabelled texts, score
parsing, curation by rubric through a generation backend, and the task's tagged prompts."""

from __future__ import annotations

import json

import pytest

from data_pipeline import backtranslation, build, generation, stages
from phi_jax import configs, instructions

EXERCISE_PROMPT = 'def add(a: int, b: int) -> int:\n    """Return the sum of a and b."""\n'
EXERCISE_SOLUTION = "    return a + b\n"


@pytest.mark.parametrize(
  "text, score",
  [
    ("Clear and complete.\nScore: 4", 4),
    ("Score: 2\nOn reflection, better.\nScore: 5", 5),  # the last one written
    ("**Score:** 3", 3),
    ("score = 4/5", 4),
    ("The score is 1", 1),
    ("Score: 4.0", 4),
    ("Score: 4.5", None),  # not one of 1..5: never rounded into one
    ("Score: 7", None),
    ("Score: 0", None),
    ("I would give it four out of five.", None),  # no `Score:`: unparseable, not guessed
    ("", None),
  ],
)
def test_scores_are_parsed_or_counted_unparseable_never_guessed(text, score):
  assert backtranslation.parse_score(text) == score


def test_oasst_trees_give_each_first_prompt_and_its_best_ranked_reply(tmp_path):
  trees = [
    {
      "message_tree_id": "a",
      "prompt": {
        "role": "prompter",
        "lang": "en",
        "text": "What is a prime?",
        "replies": [
          {"role": "assistant", "rank": 1, "text": "second best", "replies": []},
          {"role": "assistant", "rank": 0, "text": "A number with two divisors.", "replies": []},
          {"role": "assistant", "text": "unranked", "replies": []},
        ],
      },
    },
    {"prompt": {"role": "prompter", "lang": "de", "text": "Was?", "replies": []}},
    {"prompt": {"role": "prompter", "lang": "en", "text": "No replies", "replies": []}},
  ]
  path = tmp_path / "oasst.trees.jsonl"
  path.write_text("".join(json.dumps(t) + "\n" for t in trees) + '{"prompt": "flat"}\n{"pro\n')
  assert backtranslation.read_pairs(str(path)) == (
    [("What is a prime?", "A number with two divisors.")],
    {"seed_bad_json": 1, "seed_missing_field": 1},  # the other trees are not English or unranked
  )


# A seed file with every kind of bad line, each counted by the reason it is skipped.
SEED_LINES = [
  json.dumps({"instruction": "Say hi", "output": "hi"}),
  '{"instruction": "Say bye", "output": ',  # cut short
  "",  # blank lines are no lines
  "[1, 2]",  # JSON, but not an object
  json.dumps({"instruction": "Count", "answer": "1 2 3"}),
  json.dumps({"instruction": "Count", "output": None}),
  json.dumps({"instruction": ["Sort"], "output": "sorted(x)"}),
  json.dumps({"instruction": " \n", "output": "nothing asked"}),
  json.dumps({"instruction": "Add one.", "output": "x + 1", "extra": 0}),
]
SEED_SKIPPED = {
  "seed_bad_json": 2,
  "seed_missing_field": 2,
  "seed_not_string": 1,
  "seed_empty": 1,
}


def test_a_seed_file_s_bad_lines_are_skipped_and_counted_by_reason(tmp_path):
  path = tmp_path / "seed.jsonl"
  path.write_text("\n".join(SEED_LINES) + "\n")
  assert backtranslation.read_pairs(str(path)) == (
    [("Say hi", "hi"), ("Add one.", "x + 1")],
    SEED_SKIPPED,
  )


def test_the_seed_stage_counts_bad_lines_and_stops_with_none_good(tmp_path):
  cfg = configs.get("tiny")
  cfg.backtranslation.seed = str(tmp_path / "seed.jsonl")
  cfg.backtranslation.unlabelled = str(tmp_path / "web.jsonl")
  (tmp_path / "seed.jsonl").write_text("\n".join(SEED_LINES) + "\n")
  (tmp_path / "web.jsonl").write_text(json.dumps({"text": "def f():\n    return 1\n"}) + "\n")
  sources = build.backtranslation_sources(cfg, tmp_path / "good", [])
  assert sources["bt_seed"]["read"] == sources["bt_seed"]["kept"] == 2
  assert {k: sources["bt_seed"][k] for k in SEED_SKIPPED} == SEED_SKIPPED  # in the manifest

  (tmp_path / "seed.jsonl").write_text("\n".join(SEED_LINES[1:-1]) + "\n")  # no good line left
  error = (
    r"stage 'bt_seed' kept no documents \(read=0\): .*seed.jsonl has no seed pair "
    r"\(seed_bad_json=2, seed_empty=1, seed_missing_field=2, seed_not_string=1\): each line "
    r"needs a JSON object with non-empty string 'instruction' and 'output'.*fix the file"
  )
  with pytest.raises(stages.EmptyStageError, match=error):
    build.backtranslation_sources(cfg, tmp_path / "bad", [])


def test_an_exercise_is_a_docstring_asking_and_a_function_answering():
  instruction, output = backtranslation.exercise_pair(EXERCISE_PROMPT, EXERCISE_SOLUTION)
  assert instruction.startswith("Return the sum of a and b.")
  assert instruction.endswith("def add(a: int, b: int) -> int:")
  assert output == EXERCISE_PROMPT + EXERCISE_SOLUTION
  assert backtranslation.exercise_pair("def f(x):\n", "    return x\n") is None  # no docstring
  assert backtranslation.exercise_pair("def f(:\n", "") is None


def test_unlabelled_functions_lose_their_docstrings_and_passages_are_bounded():
  module = (
    "import os\n\n"
    "def documented(path):\n"
    '    """Join with the home directory.\n\n    Long story.\n    """\n'
    "    home = os.path.expanduser('~')\n"
    "    return os.path.join(home, path)\n\n"
    "def tiny():\n"
    '    """Only a docstring."""\n\n'
    "class Skipped:\n"
    "    def method(self):\n"
    "        return 1\n"
  )
  (function,) = backtranslation.code_functions(module, min_lines=2, max_lines=10)
  assert function == (
    "def documented(path):\n"
    "    home = os.path.expanduser('~')\n"
    "    return os.path.join(home, path)\n"
  )
  assert list(backtranslation.code_functions(module, min_lines=4, max_lines=10)) == []
  assert list(backtranslation.code_functions("def broken(:\n", 1, 10)) == []
  text = "\n\n".join(["a" * 150, "b" * 150, "c" * 150, "short"])
  found = list(backtranslation.passages(text, min_chars=200, max_chars=400))
  assert found == ["a" * 150 + "\n\n" + "b" * 150]  # c + short stays under min_chars


def test_unlabelled_files_need_text(tmp_path):
  path = tmp_path / "web.jsonl"
  path.write_text(json.dumps({"text": "one"}) + "\n" + json.dumps({"body": "two"}) + "\n")
  with pytest.raises(ValueError, match=r"web.jsonl:2: an unlabelled row needs a string 'text'"):
    backtranslation.read_texts(str(path))
  import pyarrow as pa
  import pyarrow.parquet as pq

  pq.write_table(pa.table({"text": ["x", "y"], "url": ["u", "v"]}), tmp_path / "web.parquet")
  assert backtranslation.read_texts(str(tmp_path / "web.parquet")) == ["x", "y"]


class CannedBackend:
  """A generation backend answering each prompt from a table (or failing it): a text, finished
  with "stop", or (text, finish reason)."""

  identity = "canned"

  def __init__(self, answers):
    self.answers, self.prompts = answers, []

  def complete(self, requests, budget, on_outcome):
    del budget
    outcomes = []
    for i, request in enumerate(requests):
      self.prompts.append(request.prompt)
      answer = next((a for key, a in self.answers.items() if key in request.prompt), None)
      if answer is None:
        outcome = generation.Outcome(request, None, failure="http_500")
      else:
        text, finish = (answer, "stop") if isinstance(answer, str) else answer
        response = generation.Response(text, finish, 10, len(text.split()))
        outcome = generation.Outcome(request, response, attempts=1)
      on_outcome(i, outcome)
      outcomes.append(outcome)
    return outcomes


def test_rubric_curation_counts_the_histogram_unparseable_and_failures(tmp_path):
  bt = configs.get("tiny").backtranslation
  candidates = [
    backtranslation.pair(f"task {k}", f"answer {k}", backtranslation.AUGMENTED, "tag", "augmented")
    for k in range(6)
  ]
  backend = CannedBackend(
    {
      "Instruction: task 0\n": "Fine.\nScore: 5",
      "Instruction: task 1\n": "Good.\nScore: 4",
      "Instruction: task 2\n": "Vague.\nScore: 2",
      "Instruction: task 3\n": "I like it a lot.",  # no score
      "Instruction: task 4\n": "Score: 4",
    }  # task 5: the request fails
  )
  scored, counters = backtranslation.rubric_scores(
    candidates, backend, str(tmp_path), backtranslation.RUBRIC, bt
  )
  assert counters == {
    "generated": 5,
    "parsed": 4,
    "unparseable": 1,
    "failed_http_500": 1,
    "score_1": 0,
    "score_2": 1,
    "score_3": 0,
    "score_4": 2,
    "score_5": 1,
  }
  kept = backtranslation.keep(scored, bt)  # threshold 4: the paper's A4
  assert [d["instruction"] for d in kept] == ["task 0", "task 1", "task 4"]
  assert all(d["kind"] == backtranslation.AUGMENTED and d["system"] == "tag" for d in kept)
  bt.threshold = 5
  assert [d["instruction"] for d in backtranslation.keep(scored, bt)] == ["task 0"]
  # Every prompt is the rubric in the instruction template; answers are cached (a rerun asks
  # only for the failed one).
  assert backend.prompts[0].startswith(instructions.PREFIX)
  assert "Instruction: task 0\n\nAnswer: answer 0" in backend.prompts[0]
  rerun = CannedBackend(backend.answers)
  backtranslation.rubric_scores(candidates, rerun, str(tmp_path), backtranslation.RUBRIC, bt)
  assert len(rerun.prompts) == 1  # task 3's unparseable answer was an answer: cached


def test_likelihood_keeps_the_best_fraction_reproducibly():
  bt = configs.get("tiny").backtranslation
  bt.scorer, bt.likelihood_keep_fraction = "likelihood", 0.5
  scored = [({"id": f"p{k}"}, score) for k, score in enumerate([-2.0, -0.5, -1.0, -0.5, -3.0])]
  kept = backtranslation.keep(scored, bt)
  assert [d["id"] for d in kept] == ["p1", "p3"]  # a tie broken by id; round(2.5) = 2


def test_augment_requests_are_greedy_backward_prompts():
  request = backtranslation.augment_request("def f():\n    return 1\n", "Write the ask.", 32)
  assert request.prompt == instructions.prompt("Write the ask.\n\ndef f():\n    return 1\n")
  assert request.temperature == 0 and request.mode == generation.COMPLETIONS
  assert request.stop == instructions.STOP and request.max_tokens == 32
  assert backtranslation.clean_instruction("  Sum two numbers.\n\nMore text") == "Sum two numbers."
  assert backtranslation.clean_instruction(" \n ") == ""


@pytest.mark.parametrize(
  "text, finish, output, skip",
  [
    ("Sum two numbers.", "stop", "def add(a, b):\n    return a + b\n", ""),
    ("Sum two numbers.\n\nAnd then it ran on", "length", "return a + b", ""),  # it ended
    ("Sum two numbers and then it ran on", "length", "return a + b", "runaway"),
    ("\n \n", "length", "return a + b", "empty_instruction"),
    # Copies, whatever the case and whitespace: the output, a part of it, it and a little more.
    ("DEF add(a,b): RETURN a+b", "stop", "def add(a, b):\n    return a + b\n", "copied_output"),
    ("Lists keep their order.", "stop", "Lists keep their order. Sets do not.", "copied_output"),
    ("Rewrite: def f(): return 1", "stop", "def f():\n    return 1\n", "copied_output"),
    # Sharing some of its output's words does not make an instruction a copy.
    ("Explain what Python lists keep.", "stop", "Python lists keep their order.", ""),
  ],
)
def test_runaway_and_copied_instructions_are_skipped(text, finish, output, skip):
  threshold = configs.get("tiny").backtranslation.copy_threshold
  response = generation.Response(text, finish, 10, 16)
  instruction, reason = backtranslation.augmented_instruction(response, output, threshold)
  assert reason == skip
  assert instruction == backtranslation.clean_instruction(text)


def test_the_augment_stage_counts_what_it_skips_and_stops_with_nothing_kept(tmp_path, monkeypatch):
  cfg = configs.get("tiny")
  texts = [{"id": f"t{k}", "text": f"def f{k}(x):\n    return x + {k}\n"} for k in range(6)]

  def augment(out, answers):
    _stage_of(out, "bt_unlabelled", texts)
    monkeypatch.setattr(build, "_bt_backend", lambda *args: CannedBackend(answers))
    return build.augment(cfg, out, "backward", "spm.model", [])

  counters = augment(
    tmp_path / "some",
    {
      "return x + 0": "Add zero to a number.",
      "return x + 1": "Add one to a number.\n\nThen it rambled until",
      "return x + 2": ("Add two to a number and then it rambled until", "length"),
      "return x + 3": "def f3(x): return x + 3",
      "return x + 4": "\n",
    },  # f5: the request fails
  )
  skipped = ("empty_instruction", "runaway", "copied_output", "failed_http_500")
  assert counters["candidates"] == 2 and all(counters[k] == 1 for k in skipped)
  kept = sorted(d["instruction"] for d in stages.iter_docs(tmp_path / "some" / "bt_augment"))
  assert kept == ["Add one to a number.", "Add zero to a number."]

  cut = {"return x": ("Add a number to x and then it rambled until", "length")}
  with pytest.raises(stages.EmptyStageError, match=r"\(candidates=0\): runaway=6; .*\(runaway\)"):
    augment(tmp_path / "cut", cut)
  cfg.backtranslation.keep_runaway = True  # for a backward model too small to end them
  counters = augment(tmp_path / "kept", cut)
  assert counters["candidates"] == counters["runaway"] == 6


def test_sampled_instructions_have_a_seed_of_their_text():
  def sampled(text):
    return backtranslation.augment_request(text, "Write the ask.", 32, temperature=0.7)

  first, again = sampled("def f():\n    return 1\n"), sampled("def f():\n    return 1\n")
  other = sampled("def g():\n    return 2\n")
  assert first.temperature == 0.7 and first == again and first.seed != other.seed


def test_likelihood_leaves_out_outputs_longer_than_the_context(tiny_corpus):
  bt = configs.get("tiny").backtranslation
  model_dir = str(tiny_corpus / "quality_model" / "run")
  tokenizer = str(tiny_corpus / "tokenizer" / "spm.model")
  candidates = [
    backtranslation.pair(
      "Add one.", "def f(x):\n    return x + 1\n", backtranslation.AUGMENTED, "", "augmented"
    ),
    backtranslation.pair("Count.", "x = 1\n" * 2000, backtranslation.AUGMENTED, "", "augmented"),
  ]
  scored, counters = backtranslation.likelihood_scores(candidates, model_dir, tokenizer, bt)
  assert [d["output"] for d, _ in scored] == [candidates[0]["output"]]
  assert counters["too_long"] == 1 and counters["parsed"] == 1 and scored[0][1] < 0


def _stage_of(out, name, docs):
  from phi_jax import files

  def body(stage):
    with (stage / "docs-00000-of-00001.jsonl").open("w") as f:
      f.writelines(json.dumps(d) + "\n" for d in docs)
    return {"kept": len(docs)}

  files.run_stage(out, name, body)


def test_the_control_matches_the_rounds_data_in_size_but_not_in_choice(tmp_path):
  def pairs(kind, n):
    return [backtranslation.pair(f"{kind} {i}", f"out {i}", kind, "", kind) for i in range(n)]

  seed, candidates = pairs(backtranslation.SEED, 5), pairs(backtranslation.AUGMENTED, 40)
  _stage_of(tmp_path, "bt_seed", seed)
  _stage_of(tmp_path, "bt_augment", candidates)
  _stage_of(tmp_path, "bt_curate_1", candidates[:10])  # curation kept the first ten
  _stage_of(tmp_path, "bt_curate_2", candidates[30:])
  assert build.round_pairs(tmp_path, 1) == seed + candidates[:10]
  control = build.control_pairs(tmp_path, 1)
  assert control[:5] == seed and len(control) == 15
  drawn = {d["id"] for d in control[5:]}
  assert drawn <= {d["id"] for d in candidates} and len(drawn) == 10
  assert drawn != {d["id"] for d in candidates[:10]}  # not the curated ones
  assert control == build.control_pairs(tmp_path, 1)  # reproducible
  assert {d["id"] for d in build.control_pairs(tmp_path, 2)[5:]} != drawn  # drawn anew per round


@pytest.mark.slow
def test_the_recipe_backtranslates_curates_and_trains_each_round(tmp_path, tiny_corpus):
  """configs/tiny_backtranslation.py's stages on the tiny corpus, its 5-step quality model as
  the pretrained one: the backward model writes instructions (cached: a rerun asks for none),
  M0 scores them by likelihood, M1 trains on the seed and the better half, tagged apart."""
  import shutil

  import sentencepiece

  from phi_jax import pipeline, records

  shutil.copytree(tiny_corpus, tmp_path / "data")
  shutil.copytree(tiny_corpus / "quality_model" / "run", tmp_path / "pretrain")
  cfg = configs.get("tiny_backtranslation")
  cfg.backtranslation.update(rounds=1, max_seed=48, max_unlabelled=24, instruction_max_tokens=16)
  cfg.finetune.update(steps=3, global_batch=8, warmup_steps=1)
  cfg.train.update(seq_len=128, log_every=1)
  cfg.eval.every_steps = 0
  cfg.checkpoint.every_steps = 3
  cfg.logging.progress_bar = False
  sources = build.backtranslation_sources(cfg, tmp_path / "data", [])
  assert sources["bt_seed"]["kept"] == 48 and sources["bt_unlabelled"]["kept"] == 24

  backward, augment, round_0, curate, round_1, control_1 = pipeline._backtranslate(cfg, tmp_path)
  assert backward["pairs"] == 48 and backward["steps"] == 3
  skipped = augment.get("empty_instruction", 0) + augment.get("copied_output", 0)
  assert augment["requested"] == 24 and augment["candidates"] + skipped == 24  # runaways kept
  assert curate["scorer"] == "likelihood" and curate["candidates"] == augment["candidates"]
  assert sum(curate["histogram"]["counts"]) == curate["parsed"]
  assert curate["parsed"] + curate["too_long"] == curate["candidates"]
  assert curate["kept"] == round(curate["parsed"] * 0.5)
  assert round_0["pairs"] == 48 and round_1["pairs"] == control_1["pairs"] == 48 + curate["kept"]

  # M1's data: the seed and the kept pairs as the task's two parts, each behind its tag.
  vocab = sentencepiece.SentencePieceProcessor(
    model_file=str(tmp_path / "data" / "tokenizer" / "spm.model")
  )
  bt = cfg.backtranslation
  for part, tag in (("seed", bt.seed_system), ("augmented", bt.augmented_system)):
    documents = records.Documents(
      str(tmp_path / "round_1_data"), f"backtranslation:{part}", "train"
    )
    prompt = vocab.decode(documents.tokens(0)[: int(documents.prompt_lengths[0])].tolist())
    assert prompt.startswith(tag) and "### Response:" in prompt
  # The backward model's data is the seed turned round, untagged.
  documents = records.Documents(str(tmp_path / "backward_data"), "backtranslation", "train")
  prompt = vocab.decode(documents.tokens(0)[: int(documents.prompt_lengths[0])].tolist())
  assert prompt.startswith(instructions.PREFIX.split("\n")[0]) and bt.backward_lead in prompt

  shutil.rmtree(tmp_path / "data" / "bt_augment")
  again = pipeline._augment(cfg, tmp_path)
  assert again["cached"] == 24 and again.get("requested", 0) == 0


def test_the_main_job_trains_and_scores_each_round_and_its_control(tmp_path):
  from phi_jax import pipeline

  cfg = configs.get("tiny_backtranslation")
  models = ("round_0", "round_1", "control_1", "round_2", "control_2")
  assert pipeline.training_runs(cfg) == ("pretrain", "backward", *models)
  assert pipeline.evaluated_runs(cfg) == models
  round_2 = pipeline.run_config(cfg, tmp_path, "round_2")
  assert round_2.data.dir == str(tmp_path / "round_2_data")
  assert round_2.train.init_from == str(tmp_path / "pretrain")
  cfg.backtranslation.control = False
  assert pipeline.evaluated_runs(cfg) == ("round_0", "round_1", "round_2")
  cfg.backtranslation.rounds = 0
  assert pipeline.training_runs(cfg) == ("pretrain", "finetune")
  assert pipeline.evaluated_runs(cfg) == ("finetune",)
