"""Math evaluation (evaluation.math_eval): CoT, PoT and hybrid answers from a fake generator,
programs run in the real sandbox; and one run on a tiny checkpoint with random params."""

from __future__ import annotations

import dataclasses
import json

import jax
import pytest

from data_pipeline import tokenizer as tokenizer_lib
from phi_jax import checkpoint, configs, decode, instructions, vocabularies
from phi_jax import model as model_lib
from phi_jax.evaluation import math_eval, math_problems

# question -> (gold, the PoT text, the CoT text or None where none may be asked for)
CASES = {
  "q0": ("5", "print(2 + 3)", None),  # answered by its program
  "q1": ("6", "x = 1 / 0\nprint(x)", "3 + 3 = 6. The answer is 6."),  # raises
  "q2": ("8", "while True:\n  pass\nprint(8)", "#### 7"),  # times out
  "q3": ("12", "if False:\n  print(12)", "so 12 in all"),  # prints nothing
  "q4": ("3", "print('three')", "no idea"),  # prints a non-number
  "q5": ("9", "The total is 9.", "The answer is $9.00."),  # no program at all
  "q6": ("42", "print(40)\nprint(6 * 7.0)", None),  # the last line printed counts
  "q7": ("1", "print(2)", None),  # a wrong answer by program is not asked again
}
PROBLEMS = [
  math_problems.MathProblem(task_id=f"t/{q}", question=q, answer=gold)
  for q, (gold, _, _) in CASES.items()
]


class FakeModel:
  """Canned texts by prompt; records the prompts of each call."""

  def __init__(self):
    self.calls = []
    self.texts = {}
    for q, (_, pot, cot) in CASES.items():
      self.texts[instructions.prompt(q + instructions.POT_TRIGGER)] = pot
      if cot is not None:
        self.texts[instructions.prompt(q)] = cot

  def __call__(self, prompts):
    self.calls.append(list(prompts))
    return [self.texts[p] for p in prompts]


@pytest.fixture(scope="module")
def hybrid(math_runner):
  model = FakeModel()
  return model, math_eval.evaluate(PROBLEMS, model, math_runner, "hybrid")


def test_hybrid_falls_back_to_cot_exactly_where_the_program_gave_no_answer(hybrid):
  model, rows = hybrid
  pot = [instructions.prompt(q + instructions.POT_TRIGGER) for q in CASES]
  assert model.calls == [pot, [instructions.prompt(q) for q in ("q1", "q2", "q3", "q4", "q5")]]
  by_q = {row["question"]: row for row in rows}
  assert [row["task_id"] for row in rows] == [p.task_id for p in PROBLEMS]
  statuses = {q: row["program"]["status"] for q, row in by_q.items()}
  assert statuses == {
    "q0": "answered",
    "q1": "failed",
    "q2": "timeout",
    "q3": "printed nothing",
    "q4": "not a number",
    "q5": "no program",
    "q6": "answered",
    "q7": "answered",
  }
  assert "ZeroDivisionError" in by_q["q1"]["program"]["detail"]
  assert by_q["q4"]["program"]["printed"].strip() == "three"
  modes = {q: row["mode_used"] for q, row in by_q.items()}
  assert modes == {q: "pot" if q in ("q0", "q6", "q7") else "cot" for q in CASES}
  predictions = {q: row["prediction"] for q, row in by_q.items()}
  assert predictions == {
    "q0": "5",
    "q1": "6",
    "q2": "7",
    "q3": "12",
    "q4": None,
    "q5": "9.00",
    "q6": "42.0",
    "q7": "2",
  }
  correct = {q for q, row in by_q.items() if row["correct"]}
  assert correct == {"q0", "q1", "q3", "q5", "q6"}
  assert (
    by_q["q1"]["output"] == CASES["q1"][2] and by_q["q1"]["program"]["source"] == CASES["q1"][1]
  )
  assert by_q["q0"]["output"] == by_q["q0"]["program"]["source"] == CASES["q0"][1]


def test_hybrid_summary_counts_each_mode_used(hybrid):
  _, rows = hybrid
  assert math_eval.summarize(rows, "toy", "hybrid") == {
    "benchmark": "toy",
    "mode": "hybrid",
    "problems": 8,
    "accuracy": 5 / 8,
    "by_mode": {
      "pot": {"problems": 3, "answered": 3, "correct": 2, "accuracy": 2 / 3},
      "cot": {"problems": 5, "answered": 4, "correct": 3, "accuracy": 3 / 5},
    },
  }


def test_pot_and_cot_alone(math_runner):
  model = FakeModel()
  chosen = [p for p in PROBLEMS if p.question in ("q0", "q1", "q5")]
  rows = math_eval.evaluate(chosen, model, math_runner, "pot")
  assert len(model.calls) == 1  # failed programs are not asked again
  assert [(r["mode_used"], r["prediction"], r["correct"]) for r in rows] == [
    ("pot", "5", True),
    ("pot", None, False),
    ("pot", None, False),
  ]
  assert math_eval.summarize(rows, "toy", "pot")["by_mode"] == {
    "pot": {"problems": 3, "answered": 1, "correct": 1, "accuracy": 1 / 3}
  }
  model = FakeModel()
  chosen = [p for p in PROBLEMS if p.question in ("q1", "q2")]
  rows = math_eval.evaluate(chosen, model, math_runner, "cot")
  assert model.calls == [[instructions.prompt("q1"), instructions.prompt("q2")]]
  assert [(r["mode_used"], r["program"], r["prediction"]) for r in rows] == [
    ("cot", None, "6"),
    ("cot", None, "7"),
  ]
  with pytest.raises(ValueError, match="mode='both' is not one of"):
    math_eval.evaluate(chosen, model, math_runner, "both")


def test_evaluate_checkpoint_on_a_tiny_model(tmp_path, shared_data):
  """A random tiny model: its texts are noise, so this checks the plumbing and the files."""
  questions = [p.question for p in math_problems.gsm8k(shared_data / "gsm8k")[:200]]
  spm = tokenizer_lib.train_sentencepiece(questions, tmp_path / "spm", vocab_size=512)
  cfg = configs.get("tiny")
  config = dataclasses.replace(model_lib.as_model_config(cfg), vocab_size=512)
  checkpoint.save_params(tmp_path / "run", config, model_lib.init(config, jax.random.key(0)))
  cfg.eval.update(max_problems=2, program_timeout_s=2.0, batch_size=2)
  cfg.sampling.update(max_new_tokens=8, prompt_bucket=64, chunk_tokens=8, temperature=1.0)
  out = tmp_path / "eval"
  summary = math_eval.evaluate_checkpoint(
    cfg, "gsm8k", str(tmp_path / "run"), out, tokenizer=str(spm), mode="hybrid"
  )
  assert summary["benchmark"] == "gsm8k" and summary["problems"] == 2
  assert json.loads((out / "summary.json").read_text()) == summary
  rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
  assert [r["task_id"] for r in rows] == ["gsm8k/test/0", "gsm8k/test/1"]
  assert all(r["program"]["source"] for r in rows)  # every problem had its PoT attempt
  assert sum(m["problems"] for m in summary["by_mode"].values()) == 2
  # greedy, whatever the config's temperature
  vocab = vocabularies.make_vocabulary(spm)
  greedy = dataclasses.replace(
    decode.sampling_config(cfg, vocabularies.eot_id(vocab)), temperature=0
  )
  prompt = instructions.prompt(rows[0]["question"] + instructions.POT_TRIGGER)
  decoder = decode.load_decoder(str(tmp_path / "run"), greedy)
  assert rows[0]["program"]["source"] == decode.generate_text(decoder, vocab, [prompt])[0]
  with pytest.raises(ValueError, match="not a math benchmark"):
    math_eval.evaluate_checkpoint(cfg, "humaneval", str(tmp_path / "run"), out)
