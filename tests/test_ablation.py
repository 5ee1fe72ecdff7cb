"""phi_jax.ablation: its config checks, its intervals, its data arms, and a whole miniature run
that resumes and whose table the checkpoints reproduce."""

import json
import math
import shutil

import pytest

from phi_jax import ablation, configs


@pytest.mark.parametrize(
  "change,message",
  [
    ({"arms": ("filtered", "stack")}, "each one of unfiltered"),
    ({"arms": ("filtered", "filtered_textbooks_finetuned")}, "without filtered_textbooks"),
    ({"seeds": (0,)}, "at least 2 distinct seeds"),
    ({"seeds": (1, 1, 2)}, "at least 2 distinct seeds"),
  ],
)
def test_configs_that_give_no_comparison_are_refused(change, message):
  cfg = configs.get("tiny_ablation")
  cfg.ablation.update(change)
  with pytest.raises(ValueError, match=message):
    ablation.check(cfg)


def test_math_benchmarks_are_refused():
  cfg = configs.get("tiny_ablation")
  cfg.eval.benchmarks = ("humaneval", "gsm8k")
  with pytest.raises(ValueError, match="the ablation scores code"):
    ablation.check(cfg)


def test_intervals_are_students_t_and_differences_are_paired_by_seed():
  rows = [
    {"arm": arm, "seed": seed, "loss": value}
    for arm, values in (("a", [1.0, 1.2, 1.4]), ("b", [0.5, 0.7, 0.8]), ("c", [0.9, 0.5, 0.8]))
    for seed, value in zip((7, 8, 9), values)
  ]
  summary = ablation.summarize(rows, ["a", "b", "c"], ("loss",))
  a = summary["arms"]["a"]["loss"]
  # t(0.975, 2) = 4.3027; sd 0.2 over 3 seeds
  assert a["mean"] == pytest.approx(1.2) and a["half_width"] == pytest.approx(
    4.3027 * 0.2 / 3**0.5, rel=1e-4
  )
  b_vs_a, c_vs_b = summary["comparisons"]
  # paired differences b - a: -0.5, -0.5, -0.6, consistent across seeds: outside
  assert (b_vs_a["from"], b_vs_a["to"]) == ("a", "b")
  assert b_vs_a["mean"] == pytest.approx(-1.6 / 3) and b_vs_a["outside"]
  # c - b: +0.4, -0.2, 0.0: within
  assert c_vs_b["mean"] == pytest.approx(0.2 / 3) and not c_vs_b["outside"]


def test_data_arms_are_code_only_and_the_control_is_as_large_as_the_filtered(tmp_path, tiny_corpus):
  import sentencepiece

  from data_pipeline import build, stages
  from phi_jax import files, records, tasks

  shutil.copytree(tiny_corpus, tmp_path / "data")
  out = tmp_path / "data"
  cfg = configs.get("tiny_ablation")
  cfg.logging.progress_bar = False
  vocab = sentencepiece.SentencePieceProcessor(model_file=str(out / "tokenizer" / "spm.model"))
  code = lambda stage: [d for d in stages.iter_docs(out / stage) if d["kind"] == "code"]
  filtered_tokens = sum(len(vocab.encode(d["text"])) for d in code("quality"))
  pool = {d["id"]: d for d in code("decontam")}

  subsets = {}
  for seed in (0, 1):
    drawn = list(stages.iter_docs(build.random_subset(cfg, out, seed)))
    tokens = sum(len(vocab.encode(d["text"])) for d in drawn)
    last = len(vocab.encode(drawn[-1]["text"]))
    assert all(d["id"] in pool for d in drawn)
    assert filtered_tokens <= tokens < filtered_tokens + last  # stops at the first doc that fills
    subsets[seed] = {d["id"] for d in drawn}
  assert subsets[0] != subsets[1]  # a draw per seed

  # An arm's data: its documents as the CodeTextbook task, and the trainer's records of them.
  data_dir = build.ablation_data(cfg, out, "filtered", 0, [])
  summary = files.done(data_dir, tasks.CODE_TEXTBOOK)
  assert summary["train_documents"] + summary["validation_documents"] == len(code("quality"))
  trained = files.done(data_dir, records.STAGE)[tasks.CODE_TEXTBOOK]["train_documents"]
  assert trained == summary["train_documents"]


def test_the_finetuned_arm_starts_from_its_seeds_textbook_run(tmp_path):
  cfg = configs.get("tiny_ablation")
  run_cfg = ablation.run_config(cfg, tmp_path, "filtered_textbooks_finetuned", 2, "/data")
  assert run_cfg.train.init_from == str(tmp_path / "runs" / "filtered_textbooks" / "seed_2")
  assert run_cfg.train.seed == 2 and run_cfg.train.steps == cfg.finetune.steps
  assert run_cfg.data.mixture == "phi1_finetune" and run_cfg.data.dir == "/data"
  pretrain_cfg = ablation.run_config(cfg, tmp_path, "filtered", 1, "/arm")
  assert (
    pretrain_cfg.train.steps == cfg.train.steps and pretrain_cfg.data.mixture == "phi1_pretrain"
  )
  assert not pretrain_cfg.train.init_from and pretrain_cfg.data.dir == "/arm"


@pytest.mark.slow
def test_a_miniature_ablation_resumes_and_its_checkpoints_reproduce_the_table(
  tmp_path, tiny_corpus, capsys
):
  from phi_jax import evaluate, vocabularies

  shutil.copytree(tiny_corpus, tmp_path / "corpus")
  cfg = configs.get("tiny_ablation")
  cfg.ablation.update(
    data_dir=str(tmp_path / "corpus"),
    arms=("filtered", "filtered_textbooks"),
    seeds=(0, 1),
    pass_at_1_problems=2,
  )
  cfg.eval.benchmarks = ("humaneval",)
  cfg.train.update(steps=3, seq_len=128)
  cfg.optim.update(warmup_steps=1, decay_steps=3)
  cfg.sampling.max_new_tokens = 16
  cfg.logging.progress_bar = False
  workdir = tmp_path / "ablation"

  result = ablation.run(cfg, workdir)
  runs = {(r["arm"], r["seed"]): r for r in result["runs"]}
  assert len(runs) == 4 and runs[("filtered", 0)]["tokens"] == 3 * 8 * 128
  # Different seeds, different runs: every loss its own.
  losses = [r["humaneval_solution_loss"] for r in runs.values()]
  assert len(set(losses)) == len(losses) and all(math.isfinite(x) for x in losses)
  saved = json.loads((workdir / "report" / "ablation.json").read_text())
  assert saved["summary"] == json.loads(json.dumps(result["summary"]))
  assert (workdir / "report" / "ablation.png").stat().st_size > 0
  assert "| filtered_textbooks |" in (workdir / "report" / "ablation.md").read_text()

  # Re-evaluated from its checkpoint as `python -m phi_jax.evaluate` does, a run scores what the
  # table says.
  run_cfg = ablation.run_config(
    cfg, workdir, "filtered", 1, str(tmp_path / "corpus" / "ablation" / "filtered")
  )
  checkpoint = str(workdir / "runs" / "filtered" / "seed_1")
  again = evaluate.solution_loss(
    run_cfg,
    evaluate.problems(run_cfg, "humaneval"),
    checkpoint,
    vocabularies.for_config(run_cfg, ""),
    None,
  )
  assert again["solution_loss"] == pytest.approx(runs[("filtered", 1)]["humaneval_solution_loss"])

  # A killed ablation reruns only what is missing: here one run and its scores.
  shutil.rmtree(workdir / "runs" / "filtered_textbooks" / "seed_1")
  shutil.rmtree(workdir / "evaluate" / "filtered_textbooks" / "seed_1")
  capsys.readouterr()
  rerun = ablation.run(cfg, workdir)
  printed = capsys.readouterr().out
  assert printed.count("] ...") == 2  # the run and its evaluation; everything else reused
  assert "[runs/filtered_textbooks/seed_1] ..." in printed
  assert "[evaluate/filtered_textbooks/seed_1] ..." in printed
  assert len(rerun["runs"]) == 4
