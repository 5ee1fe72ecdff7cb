"""The paper's claim in miniature: the same model and token budget on different data, several
seeds, every run scored the same way.

    python -m phi_jax.ablation --config=configs/tiny_ablation.py --workdir=DIR [--config.x=y]

DIR/data                     the corpus (data_pipeline.build), unless ablation.data_dir names a
                             built one; each arm's documents beside it (build.ablation_data)
DIR/runs/<arm>/seed_<s>      one ordinary phi_jax workdir per arm and seed (train.seed = s)
DIR/evaluate/<arm>/seed_<s>  its scores: the mean loss per token of every HumanEval canonical
                             solution and MBPP reference solution given its prompt, and greedy
                             pass@1 (on the first ablation.pass_at_1_problems problems)
DIR/report/ablation.*        .json (every run, the means and intervals), .md (the table), .png

The arms (`ablation.arms`), each pretrained for train.steps x global_batch x seq_len tokens:
  unfiltered                    every code document the build extracted (The Stack+'s place)
  random_subset                 a seeded draw of those as large as `filtered` (a draw per seed):
                                the control that tells quality from quantity
  filtered                      the code the quality classifier kept
  filtered_textbooks            the corpus's CodeTextbook: filtered code, textbook documents and
                                the synthetic textbooks when built
  filtered_textbooks_finetuned  that seed's filtered_textbooks run finetuned on CodeExercises
                                (the `finetune` section: phi-1's recipe)

Each run and each evaluation is a stage (`files.run_stage`): a killed ablation reruns only what
is missing, and a training run resumes from its own checkpoint.
"""

from __future__ import annotations

import functools
import itertools
import json
import math
import statistics
from pathlib import Path
from typing import Any

import jax
from scipy import stats

from data_pipeline import build
from phi_jax import cli, configs, evaluate, files, pipeline, records, report, tasks, vocabularies

FINETUNED = "filtered_textbooks_finetuned"
ARMS = ("unfiltered", "random_subset", "filtered", "filtered_textbooks", FINETUNED)
BENCHMARKS = ("humaneval", "mbpp")
CONFIDENCE = 0.95


def metrics_of(cfg: Any) -> tuple[str, ...]:
  """The table's columns: each benchmark's solution loss, then its pass@1."""
  benchmarks = tuple(cfg.eval.benchmarks)
  return tuple(f"{b}_solution_loss" for b in benchmarks) + tuple(f"{b}_pass@1" for b in benchmarks)


def check(cfg: Any) -> None:
  """Refuses an ablation config that cannot give intervals or compares nothing, before any work."""
  ablation = cfg.ablation
  unknown = [arm for arm in ablation.arms if arm not in ARMS]
  if unknown or not ablation.arms:
    raise ValueError(f"ablation.arms={tuple(ablation.arms)}: each one of {', '.join(ARMS)}")
  if FINETUNED in ablation.arms and "filtered_textbooks" not in ablation.arms:
    raise ValueError(
      f"ablation.arms has {FINETUNED} without filtered_textbooks, the runs it finetunes: "
      "add filtered_textbooks"
    )
  seeds = list(ablation.seeds)
  if len(seeds) < 2 or len(set(seeds)) != len(seeds):
    raise ValueError(
      f"ablation.seeds={tuple(seeds)}: at least 2 distinct seeds (3 or more for a useful "
      "interval), since the intervals are over seeds"
    )
  others = [b for b in cfg.eval.benchmarks if b not in BENCHMARKS]
  if others:
    raise ValueError(
      f"eval.benchmarks has {others}: the ablation scores code ({', '.join(BENCHMARKS)})"
    )


def run_dir(workdir: Path, arm: str, seed: int) -> Path:
  return workdir / "runs" / arm / f"seed_{seed}"


def data_dir(cfg: Any, workdir: Path) -> Path:
  return Path(files.absolute(cfg.ablation.data_dir)) if cfg.ablation.data_dir else workdir / "data"


def run_config(cfg: Any, workdir: Path, arm: str, seed: int, arm_data: str) -> Any:
  """The trainer config of one run: pretraining on the arm's data (`arm_data`), or, for the
  finetuned arm, the `finetune` recipe from that seed's filtered_textbooks run."""
  run_cfg = configs.resolve_paths(cfg)
  with run_cfg.unlocked():
    run_cfg.train.seed = int(seed)
    run_cfg.data.update(source="seqio", dir=str(arm_data), mixture=tasks.PRETRAIN)
    run_cfg.data.update(pretrain_rates={}, finetune_rates={})
    if arm == FINETUNED:
      run_cfg = configs.finetune_recipe(run_cfg)
      run_cfg.train.init_from = str(run_dir(workdir, "filtered_textbooks", seed))
  return run_cfg


def _arm_data(cfg: Any, workdir: Path, arm: str, seed: int) -> Path:
  """The data directory an arm trains on (the corpus itself for the textbook arms)."""
  corpus = data_dir(cfg, workdir)
  if arm in build.ABLATION_ARMS:
    return Path(build.ablation_data(cfg, corpus, arm, seed, []))
  return corpus


def _data_tokens(arm_data: Path, arm: str) -> int:
  task = tasks.CODE_EXERCISES if arm == FINETUNED else tasks.CODE_TEXTBOOK
  return int(files.done(arm_data, records.STAGE)[task]["train_tokens"])


def _train(cfg: Any, workdir: Path, arm: str, seed: int) -> dict:
  arm_data = _arm_data(cfg, workdir, arm, seed)
  run_cfg = run_config(cfg, workdir, arm, seed, str(arm_data))
  row = pipeline.train_run(run_cfg, run_dir(workdir, arm, seed))
  return {**row, "data_tokens": _data_tokens(arm_data, arm)}


def _evaluate(cfg: Any, workdir: Path, arm: str, seed: int, out: Path) -> dict:
  """The run's scores. The solution losses cover every problem and match
  `python -m phi_jax.evaluate --checkpoint=DIR/runs/<arm>/seed_<s>`'s `solution_loss`."""
  run_cfg = run_config(cfg, workdir, arm, seed, str(_arm_data(cfg, workdir, arm, seed)))
  checkpoint = str(run_dir(workdir, arm, seed))
  vocab = vocabularies.for_config(run_cfg, "")
  row = {}
  for benchmark in run_cfg.eval.benchmarks:
    losses = evaluate.solution_loss(
      run_cfg, evaluate.problems(run_cfg, benchmark), checkpoint, vocab, None
    )
    with run_cfg.unlocked():
      run_cfg.eval.max_problems = int(cfg.ablation.pass_at_1_problems)
    summary = evaluate.evaluate_checkpoint(run_cfg, benchmark, checkpoint, out / benchmark)
    row[f"{benchmark}_solution_loss"] = float(losses["solution_loss"])
    row[f"{benchmark}_solution_tokens"] = int(losses["solution_tokens"])
    row[f"{benchmark}_pass@1"] = float(summary["pass@1"])
    row[f"{benchmark}_pass@1_tasks"] = int(summary["tasks"])
  return row


def interval(values: list[float]) -> dict:
  """Mean and the half-width of its Student's t interval at CONFIDENCE (n >= 2)."""
  n, mean = len(values), statistics.fmean(values)
  spread = statistics.stdev(values) if n > 1 else math.nan
  half = (
    float(stats.t.ppf((1 + CONFIDENCE) / 2, n - 1)) * spread / math.sqrt(n) if n > 1 else math.nan
  )
  return {"mean": mean, "half_width": half, "n": n, "values": values}


def summarize(rows: list[dict], arms: list[str], metrics: tuple[str, ...]) -> dict:
  """Per arm and metric, the interval over seeds; per pair of consecutive arms and metric, the
  interval of the paired (same seed) differences, and whether it excludes 0."""
  by_arm = {
    arm: sorted((r for r in rows if r["arm"] == arm), key=lambda r: r["seed"]) for arm in arms
  }
  arms_summary = {
    arm: {m: interval([r[m] for r in runs]) for m in metrics} for arm, runs in by_arm.items()
  }
  comparisons = []
  for before, after in itertools.pairwise(arms):
    seeds = {r["seed"] for r in by_arm[before]} & {r["seed"] for r in by_arm[after]}
    for metric in metrics:
      value = {arm: {r["seed"]: r[metric] for r in by_arm[arm]} for arm in (before, after)}
      diffs = [value[after][s] - value[before][s] for s in sorted(seeds)]
      diff = interval(diffs)
      outside = bool(diff["half_width"] < abs(diff["mean"])) if len(diffs) > 1 else False
      comparisons.append(
        {"from": before, "to": after, "metric": metric, **diff, "outside": outside}
      )
  return {"arms": arms_summary, "comparisons": comparisons}


def _cell(summary: dict, digits: int) -> str:
  return f"{summary['mean']:.{digits}f} ± {summary['half_width']:.{digits}f}"


def table(result: dict) -> str:
  """The markdown table and the differences, as the README shows them."""
  metrics, summary = result["metrics"], result["summary"]
  lines = [
    "| arm | data tokens | epochs | " + " | ".join(m.replace("_", " ") for m in metrics) + " |",
    "|---" * (3 + len(metrics)) + "|",
  ]
  for arm in result["arms"]:
    tokens = result["data_tokens"][arm]
    epochs = result["train_tokens"][arm] / tokens if tokens else math.nan
    cells = [_cell(summary["arms"][arm][m], 4 if "loss" in m else 3) for m in metrics]
    lines.append(f"| {arm} | {tokens:,} | {epochs:.2f} | " + " | ".join(cells) + " |")
  lines += ["", f"Paired differences (later arm - earlier, {CONFIDENCE:.0%} interval over seeds):"]
  for c in summary["comparisons"]:
    if "loss" not in c["metric"] and not any(c["values"]):
      continue  # pass@1 of 0 everywhere: nothing to compare
    verdict = "outside the interval" if c["outside"] else "within the interval"
    lines.append(
      f"- {c['to']} vs {c['from']}, {c['metric']}: {c['mean']:+.4f} ± {c['half_width']:.4f} "
      f"({verdict})"
    )
  return "\n".join(lines)


def plot(result: dict, path: Path) -> None:
  """One panel per solution-loss metric: each arm's mean with its interval, and every seed."""
  plt = report.pyplot()
  losses = [m for m in result["metrics"] if m.endswith("_solution_loss")]
  arms = result["arms"]
  figure, axes = plt.subplots(1, len(losses), figsize=(5 * len(losses), 4), squeeze=False)
  for ax, metric in zip(axes[0], losses):
    summaries = [result["summary"]["arms"][arm][metric] for arm in arms]
    positions = range(len(arms))
    ax.errorbar(
      positions,
      [s["mean"] for s in summaries],
      yerr=[s["half_width"] for s in summaries],
      fmt="o",
      capsize=4,
    )
    for x, s in zip(positions, summaries):
      ax.scatter([x] * len(s["values"]), s["values"], s=10, color="gray", alpha=0.7)
    ax.set_xticks(list(positions), [a.replace("_", "\n") for a in arms], fontsize=8)
    ax.set_ylabel(f"{metric.split('_')[0]} solution loss (nats/token)")
  figure.suptitle(f"mean and {CONFIDENCE:.0%} interval over {len(result['seeds'])} seeds")
  figure.tight_layout()
  figure.savefig(path, dpi=100)
  plt.close(figure)


def run(cfg: Any, workdir: str | Path) -> dict:
  """The whole ablation; returns the result (also DIR/report/ablation.json)."""
  cfg, workdir = configs.resolve_paths(cfg), Path(files.absolute(workdir))
  check(cfg)
  arms, seeds = list(cfg.ablation.arms), [int(s) for s in cfg.ablation.seeds]
  for arm in arms:  # every run's trainer config, before minutes of work
    configs.check(run_config(cfg, workdir, arm, seeds[0], str(workdir)), jax.device_count())
  pipeline.same_config(cfg, workdir)
  if not cfg.ablation.data_dir:
    pipeline.timed_stage(workdir, "data", lambda: pipeline.build_data(cfg, workdir))
  rows = []
  for seed, arm in itertools.product(seeds, arms):  # seed-major: a stopped run has whole seeds
    name = f"{arm}/seed_{seed}"
    trained = pipeline.timed_stage(
      workdir, f"runs/{name}", functools.partial(_train, cfg, workdir, arm, seed)
    )
    out = workdir / "evaluate" / name
    scores = pipeline.timed_stage(
      workdir, f"evaluate/{name}", functools.partial(_evaluate, cfg, workdir, arm, seed, out)
    )
    rows.append(
      {
        "arm": arm,
        "seed": seed,
        **{k: v for k, v in {**trained, **scores}.items() if k != "time_s"},
        "train_time_s": trained["time_s"],
        "eval_time_s": scores["time_s"],
      }
    )
  metrics = metrics_of(cfg)
  result = {
    "arms": arms,
    "seeds": seeds,
    "metrics": list(metrics),
    "runs": rows,
    "data_tokens": {arm: next(r["data_tokens"] for r in rows if r["arm"] == arm) for arm in arms},
    "train_tokens": {arm: next(r["tokens"] for r in rows if r["arm"] == arm) for arm in arms},
    "summary": summarize(rows, arms, metrics),
    "config": json.loads(cfg.to_json_best_effort()),
  }
  report_dir = workdir / "report"
  files.write_atomic(report_dir / "ablation.json", json.dumps(result, indent=2, sort_keys=True))
  text = table(result)
  files.write_atomic(report_dir / "ablation.md", text + "\n")
  plot(result, report_dir / "ablation.png")
  print(text)
  print(f"report: {report_dir / 'ablation.json'}; plot: {report_dir / 'ablation.png'}")
  return result


if __name__ == "__main__":
  cli.run_in_workdir(run, "Directory for the corpus, every run, its scores and the report")
