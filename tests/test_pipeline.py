"""The main job end to end (configs/smoke.py), through the Colab notebook as CI runs it, then
through the CLI: finished stages are reused, and a changed config is refused."""

import contextlib
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "phi1_colab_tpu.ipynb"
STAGES = ["data", "pretrain", "finetune", "evaluate"]


def _execute_notebook(workdir: Path) -> None:
  import nbclient
  import nbformat

  notebook = nbformat.read(NOTEBOOK, as_version=4)
  parameters = [c for c in notebook.cells if "parameters" in c.metadata.get("tags", [])]
  assert len(parameters) == 1, "the notebook needs one cell tagged 'parameters'"
  parameters[0].source += f"\nSMOKE = True\nWORKDIR = {str(workdir)!r}\n"
  env_before = dict(os.environ)
  os.environ["JAX_PLATFORMS"] = "cpu"
  os.environ.pop("XLA_FLAGS", None)  # one CPU device, as on a laptop
  try:
    nbclient.NotebookClient(
      notebook, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(REPO)}}
    ).execute()
  finally:
    os.environ.clear()
    os.environ.update(env_before)
  outputs = "".join(
    o.get("text", "") for c in notebook.cells if c.cell_type == "code" for o in c.get("outputs", [])
  )
  assert "HumanEval pass@1 on 4 problems" in outputs
  assert any(
    "image/png" in o.get("data", {})
    for c in notebook.cells
    if c.cell_type == "code"
    for o in c.get("outputs", [])
  )


@pytest.mark.slow
def test_main_job_through_the_notebook_then_the_cli(tmp_path):
  workdir = tmp_path / "run"
  _execute_notebook(workdir)

  report = json.loads((workdir / "report" / "report.json").read_text())
  rows = {row["stage"]: row for row in report["stages"]}
  assert list(rows) == STAGES
  assert rows["data"]["tokens"] > 0 and rows["data"]["phi1_code_exercises"] > 0
  for run in ("pretrain", "finetune"):
    assert rows[run]["tokens"] > 0 and math.isfinite(rows[run]["loss"])
    assert math.isfinite(rows[run]["eval_loss"])  # eval.every_steps logged held-out loss
    png = Path(report["plots"][run])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  for benchmark in ("humaneval", "mbpp"):
    assert rows["evaluate"][f"{benchmark}_tasks"] == 4
    assert 0.0 <= rows["evaluate"][f"{benchmark}_pass@1"] <= 1.0
    assert rows["evaluate"][f"{benchmark}_solution_loss"] > 0.0
  # the finetuning run started from the pretraining run's params
  run_json = json.loads((workdir / "finetune" / "run.json").read_text())
  assert str(workdir / "pretrain") in json.dumps(run_json["init_from"])

  cli = [
    sys.executable,
    "-m",
    "phi_jax.pipeline",
    "--config=configs/smoke.py",
    f"--workdir={workdir}",
  ]
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  rerun = subprocess.run(cli, capture_output=True, text=True, cwd=REPO, env=env, timeout=600)
  assert rerun.returncode == 0, rerun.stderr[-3000:]
  for stage in STAGES:
    assert f"[{stage}] done before" in rerun.stdout
  assert "HumanEval pass@1" in rerun.stdout and "report:" in rerun.stdout

  changed = subprocess.run(
    cli + ["--config.train.steps=9"], capture_output=True, text=True, cwd=REPO, env=env, timeout=600
  )
  assert changed.returncode != 0
  assert "holds a run of another config (changed: train.steps)" in changed.stderr


def test_the_synthetic_stage_asks_the_pretrained_model_through_phi_jax_serve(
  tmp_path, tiny_corpus, monkeypatch
):
  """configs/tiny_synthetic.py's stage: the pretrained model (here the tiny corpus's 5-step
  quality model) is served by phi_jax.serve and asked through the OpenAI API; what is kept joins
  the tasks' synthetic parts, and a rerun takes every answer from the cache."""
  import shutil

  from phi_jax import configs, pipeline, serve

  shutil.copytree(tiny_corpus, tmp_path / "data")
  shutil.copytree(tiny_corpus / "quality_model" / "run", tmp_path / "pretrain")
  cfg = configs.get("tiny_synthetic")
  cfg.synthetic.update(textbooks=4, exercises=4)
  servers = []
  running = serve.running

  @contextlib.contextmanager
  def spied(*args, **kwargs):
    with running(*args, **kwargs) as server:
      servers.append(server)
      yield server

  monkeypatch.setattr(serve, "running", spied)
  rows = []
  for attempt in range(2):
    rows.append(pipeline._synthesize(cfg, tmp_path))
    stats = servers[attempt].engine.stats()
    assert stats["requests"] == (8 if attempt == 0 else 0), stats  # the rerun: all cached
    for stage in ("synthetic_textbook", "synthetic_exercises"):
      shutil.rmtree(tmp_path / "data" / stage)  # made again, from the cache
  kept = [{k: v for k, v in row.items() if k.endswith("_kept")} for row in rows]
  assert kept[0] == kept[1] and rows[0]["synthetic_exercises_kept"] > 0
  assert rows[1]["synthetic_textbook_cached"] == rows[1]["synthetic_exercises_cached"] == 4
  assert servers[0].model == servers[1].model and servers[0].url != servers[1].url
  assert len(list((tmp_path / "data" / "generation_cache").glob("*/*.json"))) == 8
  records = json.loads((tmp_path / "data" / "records" / "stage.json").read_text())
  parts = records["phi1_code_exercises"]["parts"]["phi1_code_exercises:synthetic"]
  assert (
    parts["train_documents"] + parts["validation_documents"] == rows[0]["synthetic_exercises_kept"]
  )
