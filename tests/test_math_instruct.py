"""Math instruction data (data_pipeline.math_instruct): GSM8K's calculator annotations as
programs, MathInstruct and generic files, the build stage with its sandbox verification, and
the math_instruct task's parts in a mixture."""

from __future__ import annotations

import json
import shutil

import apache_beam as beam
import numpy as np
import pytest

from data_pipeline import build, math_instruct
from phi_jax import configs, instructions, records
from phi_jax.evaluation import math_problems, sandbox

RATIONALE = (
  "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n"
  "She sold 48+24 = <<48+24=72>>72 clips in April and May.\n"
  "Each clip costs $2, so she made 72*2 = $<<72*2=144>>144."
)


def test_calculator_annotations_become_a_program_naming_earlier_results():
  program = math_instruct.gsm8k_program(RATIONALE)
  assert program == ("step_1 = 48/2\nstep_2 = 48+step_1\nstep_3 = step_2*2\nprint(step_3)\n")
  # A number equal to an earlier result is that result, the latest one holding it; numbers
  # inside longer numbers or decimals are left alone.
  program = math_instruct.gsm8k_program(
    "<<2*12=24>>24 then <<24+1.24=25.24>>25.24 and <<124-24=100>>100"
  )
  assert program.splitlines() == [
    "step_1 = 2*12",
    "step_2 = step_1+1.24",
    "step_3 = 124-step_1",
    "print(step_3)",
  ]
  assert math_instruct.gsm8k_program("No calculator here: 3 + 4 = 7.") is None


def test_gsm8k_documents_are_a_cot_and_a_pot_candidate_per_problem():
  problem = math_problems.MathProblem("gsm8k/train/0", "How many clips?", "144", RATIONALE)
  cot, pot = math_instruct.gsm8k_documents([problem])
  assert cot["kind"] == "math_cot" and pot["kind"] == "math_pot"
  assert cot["instruction"] == pot["instruction"] == "How many clips?"
  assert "<<" not in cot["output"] and cot["output"].endswith("The answer is 144")
  assert pot["gold"] == "144" and pot["output"].startswith("step_1 = 48/2")
  assert cot["id"] != pot["id"]


def test_mathinstruct_json_and_generic_jsonl_are_read_with_their_kinds(tmp_path):
  rows = [
    {"source": "data/CoT/gsm_rft.json", "instruction": "1+1?", "output": "2. The answer is 2"},
    {"source": "data/PoT/mathqa.json", "instruction": "2+2?", "output": "print(2 + 2)"},
  ]
  (tmp_path / "MathInstruct.json").write_text(json.dumps(rows))
  docs = math_instruct.read_file(str(tmp_path / "MathInstruct.json"))
  assert [(d["kind"], d["source"]) for d in docs] == [
    ("math_cot", "data/CoT/gsm_rft.json"),
    ("math_pot", "data/PoT/mathqa.json"),
  ]
  lines = [{"instruction": "3*3?", "output": "print(9)", "kind": "pot"}]
  (tmp_path / "mine.jsonl").write_text("\n".join(json.dumps(r) for r in lines) + "\n")
  (doc,) = math_instruct.read_file(str(tmp_path / "mine.jsonl"))
  assert (doc["kind"], doc["source"], doc["output"]) == ("math_pot", "mine", "print(9)")
  (tmp_path / "bad.jsonl").write_text(json.dumps({"instruction": "?", "output": "!"}) + "\n")
  with pytest.raises(ValueError, match=r"bad.jsonl:1: 'kind' must be one of"):
    math_instruct.read_file(str(tmp_path / "bad.jsonl"))
  (tmp_path / "bad.json").write_text(json.dumps([{"question": "?"}]))
  with pytest.raises(ValueError, match="expected MathInstruct's JSON"):
    math_instruct.read_file(str(tmp_path / "bad.json"))


def test_programs_are_kept_only_when_they_print_the_gold_answer_in_the_sandbox(beam_run):
  def pot(output, gold):
    return math_instruct.document(f"q{output}", output, "pot", "gsm8k", gold=gold)

  docs = [
    pot("print(3 * 4)", "12"),
    pot("x = 1000 / 8\nprint(x)", "125"),  # 125.0 is 125
    pot("print(3 * 5)", "12"),  # wrong
    pot("print(1 / 0)", "1"),  # raises
    pot("while True:\n  pass", "1"),  # times out
    pot("x = 3", "3"),  # prints nothing
    math_instruct.document("q", "print(7)", "pot", "mine"),  # no gold: kept unchecked
    math_instruct.document("q", "It is 7. The answer is 7", "cot", "mine"),
  ]
  verify = math_instruct.VerifyPrograms(2.0, "bwrap", sandbox.Limits())
  kept, counters = beam_run(
    docs, beam.BatchElements(min_batch_size=8, max_batch_size=8) | beam.ParDo(verify)
  )
  assert sorted(d["output"] for d in kept) == sorted(
    ["print(3 * 4)", "x = 1000 / 8\nprint(x)", "print(7)", "It is 7. The answer is 7"]
  )
  assert all("gold" not in d for d in kept)
  assert counters["programs_verified"] == 2
  assert counters["programs_wrong_answer"] == 2  # a wrong value, and nothing printed
  assert counters["programs_failed"] == 1 and counters["programs_timed_out"] == 1
  assert counters["math_pot_documents"] == 3 and counters["math_cot_documents"] == 1


@pytest.mark.slow
def test_the_build_makes_the_math_task_whose_parts_a_mixture_weights(tmp_path, tiny_corpus):
  from phi_jax import input_pipeline

  data = tmp_path / "data"
  shutil.copytree(tiny_corpus, data)
  extra = tmp_path / "extra.jsonl"
  extra.write_text(
    json.dumps({"instruction": "What is 6 times 7?", "output": "print(6 * 7)", "kind": "pot"})
    + "\n"
  )
  cfg = configs.get("tiny")
  cfg.corpus.update(max_files=150, quality_model_steps=5, tokenizer_max_documents=500)
  cfg.logging.progress_bar = False
  cfg.math.update(sources=("gsm8k", str(extra)), max_problems=24)
  manifest = build.run(cfg, data)

  counts = manifest[math_instruct.STAGE]
  assert counts["gsm8k_problems"] == 24 and counts["read_extra.jsonl"] == 1
  problems = math_problems.gsm8k(split="train")[:24]
  programs = [math_instruct.gsm8k_program(p.rationale) for p in problems]
  assert (
    counts["programs_verified"] + counts.get("programs_wrong_answer", 0)
    == sum(p is not None for p in programs)
    == counts["gsm8k_programs"]
  )
  assert counts["programs_verified"] >= 20
  assert counts["math_cot_documents"] == 24
  assert counts["math_pot_documents"] == counts["programs_verified"] + 1
  # Train problem 20 retells test problem 632 (the same 13 words): its CoT and PoT both go.
  assert counts["ngram_overlap_removed_gsm8k"] == 2
  assert counts["kept"] == 24 + counts["math_pot_documents"] - 2
  parts = manifest["records"]["math_instruct"]["parts"]

  def documents(part):
    return sum(parts[f"math_instruct:{part}"][f"{s}_documents"] for s in ("train", "validation"))

  assert documents("cot") == 23 and documents("pot") == counts["math_pot_documents"] - 1
  # The code tasks were reused, not rebuilt.
  assert (
    manifest["phi1_code_textbook"]
    == json.loads((tiny_corpus / "manifest.json").read_text())["phi1_code_textbook"]
  )

  # A document: the Alpaca prompt (loss masked) then the response and end-of-text.
  import sentencepiece as spm

  vocab = spm.SentencePieceProcessor(model_file=str(data / "tokenizer" / "spm.model"))
  documents = records.Documents(str(data), "math_instruct:pot", "train")
  tokens, prompt_length = documents.tokens(0), int(documents.prompt_lengths[0])
  prompt = vocab.decode(tokens[:prompt_length].tolist())
  assert prompt.startswith(instructions.PREFIX.split("\n")[0]) and "### Response:" in prompt
  assert "print(" in vocab.decode(tokens[prompt_length:].tolist())
  assert 0 < prompt_length < len(tokens) - 1 and tokens[-1] == vocab.eos_id()

  cfg.data.update(source="seqio", dir=str(data), mixture="phi1_finetune")
  cfg.data.finetune_rates = {"math_instruct:cot": 0.25, "math_instruct:pot": 0.75}
  rows = input_pipeline.MixtureRows(cfg.data, seq_len=64, seed=0, split="train")
  assert rows.task_names == ["math_instruct:cot", "math_instruct:pot"]
  chosen = np.array([rows.interleave.locate(g)[0] for g in range(400)])
  assert abs((chosen == 1).mean() - 0.75) < 0.02
  row = input_pipeline.MixtureRows(cfg.data, seq_len=512, seed=0, split="train")[0]
  assert len(row["targets"]) == 512 and 0 < row["loss_weights"].sum() < 512  # prompts masked
