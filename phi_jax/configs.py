"""Run configs are data: ml_collections ConfigDicts defined by the files under `configs/`.

    cfg = phi_jax.configs.get("phi1_small")   # or a path to a config file
    cfg.model.remat = "full"
"""

from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path

import ml_collections

from phi_jax.model import ModelConfig

# A checkout's `configs/`; a non-editable install (Colab, TPU VMs) carries the same files as
# the package `phi_jax._configs` (see setup.py).
_CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
if not _CONFIG_DIR.is_dir():
  _CONFIG_DIR = Path(importlib.util.find_spec("phi_jax._configs").submodule_search_locations[0])


def base() -> ml_collections.ConfigDict:
  """Every section with its defaults; the files under configs/ override what differs."""
  cfg = ml_collections.ConfigDict()
  cfg.model = ml_collections.ConfigDict(dataclasses.asdict(ModelConfig()))
  # Mesh axis sizes; -1 = all remaining devices.
  cfg.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=-1, tensor=1))
  cfg.train = ml_collections.ConfigDict(dict(
      seed=0,
      steps=24_000,  # steps this run takes; phi-1-base is the 24k checkpoint of a 36k schedule
      global_batch=1024,  # sequences per optimizer step, whatever the device count
      micro_batch=0,  # sequences per accumulation step (0 = the whole global batch at once)
      seq_len=2048,
      log_every=10,
  ))
  # Pretraining recipe of the paper. b1, b2, eps, clipping and the final LR are not in the
  # paper: GPT-3/CodeGen-style defaults.
  cfg.optim = ml_collections.ConfigDict(dict(
      learning_rate=1e-3, warmup_steps=750, decay_steps=36_000, final_lr_ratio=0.0,
      weight_decay=0.1, b1=0.9, b2=0.95, eps=1e-8, grad_clip_norm=1.0))
  cfg.data = ml_collections.ConfigDict(dict(
      source="synthetic",  # "seqio" (the phi-1 mixtures) or "synthetic" (a learnable toy stream)
      dir="",  # data_pipeline.build's output (local or gs://); "" = $PHI1_DATA_DIR
      mixture="phi1_pretrain",
      split="train",
      mask_prompt=True,  # no loss on exercise prompts (signature + docstring)
      pretrain_rates={},  # task -> rate for phi1_pretrain ({} = CodeTextbook only)
      finetune_rates={},  # task -> rate for phi1_finetune ({} = CodeExercises only)
      use_cached=False,  # read seqio's cache (data_pipeline.build writes it)
  ))
  # The corpus build (python -m data_pipeline.build): the embedded default draws on the Python
  # sources on this machine.
  cfg.corpus = ml_collections.ConfigDict(dict(
      roots=["stdlib"],  # 'stdlib', 'site-packages', or directories
      # JSONL files (patterns, local or gs://) of documents: {"text", "kind"?, "source"?}, or
      # {"kind": "exercise", "prompt", "solution"}; e.g. The Stack or synthetic textbooks.
      jsonl=[],
      max_files=0,  # 0 = all
      max_file_bytes=1 << 20,  # larger files are skipped (generated tables, vendored blobs)
      help_topics=True,  # the interpreter's help topics as textbook documents
      validation_fraction=0.02,
      num_shards=4,
      dedup_threshold=0.85,  # MinHash Jaccard at or above which documents are near-duplicates
      dedup_num_perm=128,
      decontam_ngram=13,  # the paper's 13-gram overlap rule against HumanEval and MBPP
      decontam_tau=0.95,  # AST match rate pruning exercises; the paper tried 0.95 .. 0.8
      mbpp_path="",  # mbpp.jsonl (or its directory); "" = ../shared/data/mbpp beside the repo
      tokenizer_max_documents=20_000,  # SentencePiece trains on a sample of this many documents
      # Quality classifier: annotate a sample (heuristic rubric, or an LLM judge when
      # llm_base_url is set), embed code with a phi_jax model, random forest, threshold.
      annotate_fraction=0.3,
      quality_threshold=0.5,
      quality_model="",  # a checkpoint workdir to embed with; "" = train one briefly here
      # The tokenizer quality_model was trained with (a tokenizer.json, a Hugging Face model
      # directory, or a SentencePiece .model); "" = a tokenizer.json in the quality_model
      # workdir if there is one, else the corpus SentencePiece (the model trained here).
      quality_tokenizer="",
      quality_model_steps=100,
      quality_max_len=512,
      llm_base_url="",  # OpenAI-compatible endpoint, e.g. http://localhost:8000/v1
      llm_model="",
      cache=True,  # also write the tokenized tasks in seqio's cache layout (OUT/cache)
  ))
  # Multi-host: jax.distributed.initialize() when enabled; empty fields are auto-detected
  # (TPU VMs, SLURM, ...) or read from JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID.
  cfg.distributed = ml_collections.ConfigDict(dict(
      enabled=False, coordinator_address="", num_processes=0, process_id=-1,
      cpu_collectives="gloo"))
  cfg.logging = ml_collections.ConfigDict(dict(tensorboard=True, progress_bar=True))
  return cfg


def finetune_recipe(cfg: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The paper's CodeExercises finetuning: batch 256, max LR 1e-4, warmup 50, wd 0.01, 6k steps."""
  cfg.train.update(steps=6_000, global_batch=256)
  cfg.optim.update(learning_rate=1e-4, warmup_steps=50, decay_steps=6_000, weight_decay=0.01)
  return cfg


def names() -> list[str]:
  return sorted(p.stem for p in _CONFIG_DIR.glob("*.py") if not p.stem.startswith("_"))


def get(name_or_path: str) -> ml_collections.ConfigDict:
  """Loads `configs/<name>.py` (or any config file path) and returns its `get_config()`."""
  path = Path(name_or_path)
  if path.suffix != ".py":
    path = _CONFIG_DIR / f"{name_or_path}.py"
    if not path.exists():
      raise FileNotFoundError(f"no config named '{name_or_path}'; known configs: {names()}")
  spec = importlib.util.spec_from_file_location(f"phi_jax_config_{path.stem}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()
