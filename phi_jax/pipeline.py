"""The main job, the whole phi-1 recipe on one config:

    python -m phi_jax.pipeline --config=configs/tiny.py --workdir=DIR [--config.x=y ...]

corpus -> tokenizer   DIR/data      python -m data_pipeline.build (CodeTextbook, CodeExercises)
pretrain              DIR/pretrain  phi-1-base analogue on the phi1_pretrain mixture
synthetic             DIR/synthetic only with synthetic.backend="pretrained": the pretrained model,
                                    served by phi_jax.serve, writes textbooks and exercises
                                    that join DIR/data (configs/tiny_synthetic.py)
finetune              DIR/finetune  phi-1 analogue: params from DIR/pretrain, phi1_finetune mixture
backward, augment,    DIR/...       only with backtranslation.rounds > 0 (Humpback, in place of
round_0, curate_1,                  finetune; configs/tiny_backtranslation.py): the backward
round_1, ...                        model (output -> instruction) finetuned on the seed writes
                                    instructions for unlabelled texts; round_r's model, trained
                                    on the seed + what round r's curation kept (curate_r, rated
                                    by round r-1's model), is the one evaluated after the last
evaluate              DIR/evaluate  eval.benchmarks of the finetuned model, programs in the sandbox:
                                    HumanEval and MBPP pass@1, or GSM8K / DeepMind Mathematics
                                    accuracy (configs/tiny_math.py: math instructions finetuned)
report                DIR/report    report.json, <run>_loss.png, and the table printed

Every stage leaves DIR/<stage>/stage.json last (`files.run_stage`); a rerun skips finished stages, and the
training stages resume from their own checkpoints when a run was interrupted.

From Python: `phi_jax.pipeline.run(phi_jax.configs.get("tiny"), "runs/tiny")`.
"""

from __future__ import annotations

import functools
import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax

from data_pipeline import build
from phi_jax import cli, configs, evaluate, files, report, serve, tasks, train
from phi_jax.evaluation import math_eval

# synthetic.backend naming this job's own pretrained model (served by phi_jax.serve)
SERVED_PRETRAIN = "pretrained"


def timed_stage(workdir: Path, name: str, body: Callable[[], dict]) -> dict:
  """Runs `body() -> summary row` once (`files.run_stage`: the row is the marker, written last,
  and read back on reruns). Each body resumes its own unfinished work, so nothing is wiped."""
  if files.done(workdir, name) is not None:
    print(f"[{name}] done before, reusing {workdir / name}")
  else:
    print(f"[{name}] ...", flush=True)

  def timed(stage_dir) -> dict:
    del stage_dir  # each body knows its directory
    start = time.perf_counter()
    row = {"stage": name, **body()}
    return {**row, "time_s": time.perf_counter() - start}

  return files.run_stage(workdir, name, timed, resumes=True)


def instruction_models(cfg: Any) -> tuple[str, ...]:
  """The backtranslation recipe's models, in training order: M0 (round_0, the seed alone), then
  per round r M_r (round_r) and, with `backtranslation.control`, its control (control_r: the seed
  and as many augmented pairs as M_r's, drawn unscored). Empty when the recipe is off."""
  bt = cfg.backtranslation
  models = ["round_0"] if int(bt.rounds) else []
  for r in range(1, int(bt.rounds) + 1):
    models += [f"round_{r}", f"control_{r}"] if bt.control else [f"round_{r}"]
  return tuple(models)


def training_runs(cfg: Any) -> tuple[str, ...]:
  """The runs the main job trains, in order: pretrain, then finetune or the backtranslation
  recipe's models."""
  models = instruction_models(cfg)
  return ("pretrain", "backward", *models) if models else ("pretrain", "finetune")


def evaluated_runs(cfg: Any) -> tuple[str, ...]:
  """The models the main job scores: the finetuned one, or every backtranslation model (so
  that each round, and curation against its control, can be compared)."""
  return instruction_models(cfg) or ("finetune",)


def run_config(cfg: Any, workdir: str | Path, run: str) -> Any:
  """The trainer config of `run` (one of `training_runs`): pretraining on the corpus built in
  DIR/data; finetuning from DIR/pretrain on DIR/data's phi1_finetune mixture, or, for the
  backtranslation models, on the `backtranslation` task of their own data (DIR/<run>_data)."""
  workdir = Path(files.absolute(workdir))
  run_cfg = configs.resolve_paths(cfg)
  with run_cfg.unlocked():
    run_cfg.data.update(source="seqio", dir=str(workdir / "data"))
    if run == "pretrain":
      run_cfg.data.mixture = "phi1_pretrain"
      return run_cfg
    run_cfg = configs.finetune_recipe(run_cfg)
    run_cfg.train.init_from = str(workdir / "pretrain")
    if run != "finetune":
      run_cfg.data.dir = str(workdir / f"{run}_data")
      run_cfg.data.finetune_rates = {tasks.BACKTRANSLATION: 1.0}
  return run_cfg


def _data_row(manifest: dict) -> dict:
  built = [task for task in build.TASK_KINDS if task in manifest]
  row = {task: manifest[task]["train_documents"] for task in built}
  row["tokens"] = sum(manifest["records"][task]["train_tokens"] for task in built)
  return row


def build_data(cfg: Any, workdir: Path) -> dict:
  if cfg.synthetic.backend == SERVED_PRETRAIN:  # generated later, by the pretrained model
    cfg = configs.resolve_paths(cfg)
    with cfg.unlocked():
      cfg.synthetic.update(textbooks=0, exercises=0)
  return _data_row(build.run(cfg, workdir / "data"))


def _synthesize(cfg: Any, workdir: Path) -> dict:
  """The pretrained model writes the synthetic data, through its own OpenAI-compatible server
  (the path a real endpoint takes); the corpus build then joins it to the tasks."""
  server_cfg = run_config(cfg, workdir, "pretrain")
  with server_cfg.unlocked():  # room for the longest request the grids make
    server_cfg.sampling.max_new_tokens = max(
      int(cfg.synthetic.textbook_max_tokens), int(cfg.synthetic.exercise_max_tokens)
    )
  build_cfg = configs.resolve_paths(cfg)
  with serve.running(
    str(workdir / "pretrain"),
    cfg=server_cfg,
    tokenizer=str(workdir / "data" / "tokenizer" / "spm.model"),
    model_name=f"phi1-pretrain-{_pretrain_id(workdir)}",
  ) as server:
    with build_cfg.unlocked():
      build_cfg.synthetic.update(backend="openai", base_url=server.url, model=server.model)
    manifest = build.run(build_cfg, workdir / "data")
  row = _data_row(manifest)
  for name in ("synthetic_textbook", "synthetic_exercises"):
    if name in manifest:
      counts = manifest[name]
      row[f"{name}_kept"] = counts["kept"]
      row[f"{name}_requested"] = counts.get("requested", 0)
      row[f"{name}_cached"] = counts.get("cached", 0)
  return row


def _pretrain_id(workdir: Path) -> str:
  """Names the pretrained weights in the response cache: another pretraining, another name."""
  summary = files.done(workdir, "pretrain") or {}
  return hashlib.sha256(json.dumps(summary, sort_keys=True).encode()).hexdigest()[:12]


def train_run(run_cfg: Any, run_dir: Path) -> dict:
  """Trains (or resumes) one run in `run_dir`; its summary row."""
  last = train.run(run_cfg, run_dir)
  records = report.read_metrics(run_dir / "metrics.jsonl")
  eval_losses = [r["eval_loss"] for r in records if "eval_loss" in r]
  return {
    "tokens": int(run_cfg.train.steps)
    * int(run_cfg.train.global_batch)
    * int(run_cfg.train.seq_len),
    "loss": last.get("loss"),
    "eval_loss": eval_losses[-1] if eval_losses else None,
    "steps": int(run_cfg.train.steps),
  }


def _train(cfg: Any, workdir: Path, run: str) -> dict:
  return train_run(run_config(cfg, workdir, run), workdir / run)


def _tokenizer(workdir: Path) -> str:
  return str(workdir / "data" / "tokenizer" / "spm.model")


def _instruction_run(cfg: Any, workdir: Path, run: str, docs: list[dict]) -> dict:
  """Builds DIR/<run>_data from `docs`, then trains `run` on it."""
  manifest = build.instruction_data(cfg, workdir / "data", workdir / f"{run}_data", docs, "pairs")
  row = _train(cfg, workdir, run)
  tokens = manifest["records"][tasks.BACKTRANSLATION]["train_tokens"]
  return {**row, "pairs": len(docs), "data_tokens": tokens}


def _backward(cfg: Any, workdir: Path) -> dict:
  docs = build.backward_pairs(cfg, workdir / "data")
  return _instruction_run(cfg, workdir, "backward", docs)


def _augment(cfg: Any, workdir: Path) -> dict:
  backward = str(workdir / "backward")
  counts = build.augment(cfg, workdir / "data", backward, _tokenizer(workdir), [])
  return {k: v for k, v in counts.items() if isinstance(v, int)}


def _curate(cfg: Any, workdir: Path, round_: int) -> dict:
  model = str(workdir / f"round_{round_ - 1}")
  return build.curate(cfg, workdir / "data", round_, model, _tokenizer(workdir), [])


def _round(cfg: Any, workdir: Path, round_: int) -> dict:
  """Round r's model: the seed, plus (r >= 1) the pairs round r's curation kept."""
  docs = build.round_pairs(workdir / "data", round_)
  return _instruction_run(cfg, workdir, f"round_{round_}", docs)


def _control(cfg: Any, workdir: Path, round_: int) -> dict:
  """Round r's control: M_r's data with its curated pairs swapped for unscored ones."""
  docs = build.control_pairs(workdir / "data", round_)
  return _instruction_run(cfg, workdir, f"control_{round_}", docs)


def _backtranslate(cfg: Any, workdir: Path) -> list[dict]:
  rows = [
    timed_stage(workdir, "backward", lambda: _backward(cfg, workdir)),
    timed_stage(workdir, "augment", lambda: _augment(cfg, workdir)),
    timed_stage(workdir, "round_0", lambda: _round(cfg, workdir, 0)),
  ]
  for r in range(1, int(cfg.backtranslation.rounds) + 1):
    rows.append(timed_stage(workdir, f"curate_{r}", functools.partial(_curate, cfg, workdir, r)))
    rows.append(timed_stage(workdir, f"round_{r}", functools.partial(_round, cfg, workdir, r)))
    if cfg.backtranslation.control:
      rows.append(
        timed_stage(workdir, f"control_{r}", functools.partial(_control, cfg, workdir, r))
      )
  return rows


def _evaluate(cfg: Any, workdir: Path, run: str, out: Path) -> dict:
  row = {}
  for benchmark in cfg.eval.benchmarks:
    args = (run_config(cfg, workdir, run), benchmark, str(workdir / run))
    if benchmark in math_eval.BENCHMARKS:
      summary = math_eval.evaluate_checkpoint(*args, out / benchmark, mode=cfg.eval.math_mode)
      row[f"{benchmark}_accuracy"] = summary["accuracy"]
      row[f"{benchmark}_problems"] = summary["problems"]
    else:
      summary = evaluate.evaluate_checkpoint(*args, out / benchmark)
      row[f"{benchmark}_pass@1"] = summary["pass@1"]
      row[f"{benchmark}_tasks"] = summary["tasks"]
      row[f"{benchmark}_solution_loss"] = summary["solution_loss"]
  return row


def _evaluate_all(cfg: Any, workdir: Path) -> list[dict]:
  """One stage per scored model: `evaluate` for the finetuned one, `evaluate_<run>` for each
  backtranslation model (results under DIR/evaluate/<run>/)."""
  if not int(cfg.backtranslation.rounds):
    return [
      timed_stage(
        workdir, "evaluate", lambda: _evaluate(cfg, workdir, "finetune", workdir / "evaluate")
      )
    ]
  return [
    timed_stage(
      workdir,
      f"evaluate_{run}",
      functools.partial(_evaluate, cfg, workdir, run, workdir / "evaluate" / run),
    )
    for run in evaluated_runs(cfg)
  ]


def same_config(cfg: Any, workdir: Path) -> None:
  """Finished stages are reused only by the config that made them: a workdir remembers it."""
  path = workdir / "pipeline_config.json"
  now = json.loads(cfg.to_json_best_effort())
  if not path.exists():
    workdir.mkdir(parents=True, exist_ok=True)
    files.write_atomic(path, json.dumps(now, indent=2, sort_keys=True))
    return
  changed = configs.differences(json.loads(path.read_text()), now)
  if changed:
    raise ValueError(
      f"{workdir} holds a run of another config (changed: "
      f"{', '.join(field for field, _, _ in changed)}); its finished stages would "
      "not match. Use a new --workdir, or delete the stages to redo"
    )


def run(cfg: Any, workdir: str | Path) -> dict:
  """The whole recipe; returns the report (also DIR/report/report.json)."""
  cfg, workdir = configs.resolve_paths(cfg), Path(files.absolute(workdir))
  runs = training_runs(cfg)
  for name in runs:  # every training stage's config, before minutes of work
    configs.check(run_config(cfg, workdir, name), jax.device_count())
  same_config(cfg, workdir)
  rows = [timed_stage(workdir, "data", lambda: build_data(cfg, workdir))]
  rows.append(timed_stage(workdir, "pretrain", lambda: _train(cfg, workdir, "pretrain")))
  if cfg.synthetic.backend == SERVED_PRETRAIN:
    rows.append(timed_stage(workdir, "synthetic", lambda: _synthesize(cfg, workdir)))
  if int(cfg.backtranslation.rounds):
    rows += _backtranslate(cfg, workdir)
  else:
    rows.append(timed_stage(workdir, "finetune", lambda: _train(cfg, workdir, "finetune")))
  # The base model's scores are one command away:
  # python -m phi_jax.evaluate --benchmark=humaneval --checkpoint=DIR/pretrain
  rows += _evaluate_all(cfg, workdir)
  metrics = {name: report.read_metrics(workdir / name / "metrics.jsonl") for name in runs}
  result = report.write(
    workdir / "report", rows, metrics, extra={"config": json.loads(cfg.to_json_best_effort())}
  )
  print(report.table(rows))
  print(
    f"report: {workdir / 'report' / 'report.json'}; plots: {', '.join(result['plots'].values())}"
  )
  return result


if __name__ == "__main__":
  cli.run_in_workdir(run, "Directory for the corpus, runs, evaluations and report")
