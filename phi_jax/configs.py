"""Run configs are data: ml_collections ConfigDicts defined by the files under `configs/`.

cfg = phi_jax.configs.get("phi1_small")   # or a path to a config file
cfg.model.remat = "full"
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
from pathlib import Path
from typing import Any

import ml_collections
from ml_collections import config_dict

from phi_jax import files
from phi_jax.decode import SamplingConfig
from phi_jax.evaluation import math_problems
from phi_jax.model import ModelConfig, as_model_config

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
  cfg.train = ml_collections.ConfigDict(
    dict(
      seed=0,
      steps=24_000,  # steps this run takes; phi-1-base is the 24k checkpoint of a 36k schedule
      global_batch=1024,  # sequences per optimizer step, whatever the device count
      # Sequences per accumulation step: 0 = the whole global batch at once; "auto" = the
      # largest that fits the devices' memory (phi_jax.aot.fit compiles the step to find it;
      # with model.remat="auto" it then picks the cheapest remat policy that fits).
      micro_batch=config_dict.FieldReference(0, field_type=object),
      fit_margin=0.1,  # "auto" leaves this fraction of the per-chip memory limit free
      fit_topology="",  # "auto" fits "" = the devices this runs on, or a TPU topology (v4:2x2x1)
      # Which fitting setting "auto" takes: "largest" micro-batch, then the cheapest remat; or
      # "fastest" by the TPU compiler's step-time estimate (the largest micro-batch under each
      # remat policy allowed is compiled; TPU devices or topologies only).
      fit_rule="largest",
      seq_len=2048,
      # Positions per chunk of the lm_head + loss (phi_jax.losses): 0 = all logits at once;
      # a divisor of seq_len keeps only [batch, chunk, vocab] logits live (CPU: cache-sized).
      loss_chunk=0,
      log_every=10,
      # Where the params start: "" = random init from `seed`; a workdir (its latest checkpoint),
      # a workdir's `checkpoints/<step>` directory, or a Hugging Face phi directory. Params only:
      # the optimizer and the schedule start fresh. A workdir with checkpoints of its own resumes
      # from them instead.
      init_from="",
      on_nonfinite="stop",  # a non-finite loss or gradient: "stop" the run, or "skip" the step
    )
  )
  # Orbax checkpoints under DIR/checkpoints/<step>: params, optimizer state, step, RNG seed, data
  # position and config. A run also saves at its last step and on SIGTERM / a TPU preemption
  # notice, and resumes from the latest intact checkpoint when rerun on the same workdir.
  cfg.checkpoint = ml_collections.ConfigDict(
    dict(
      every_steps=1000,  # save when step % every_steps == 0 (0 = never by step count)
      every_seconds=1800,  # save once this long has passed since the last save (0 = never by time)
      keep=3,  # the latest `keep` checkpoints are kept (0 = all); >= 2 leaves one to fall back to
      keep_every=0,  # and every step that is a multiple of keep_every, forever (0 = none)
      async_save=True,  # write in background threads while training goes on
    )
  )
  # The finetuning stage of the recipe (`finetune_recipe`; the main job's phi-1 analogue):
  # the paper's CodeExercises values.
  cfg.finetune = ml_collections.ConfigDict(
    dict(
      steps=6_000,
      global_batch=256,
      learning_rate=1e-4,
      warmup_steps=50,
      weight_decay=0.01,
      schedule="linear",  # after warmup: "linear" decay (the paper) or "cosine" (MAmmoTH)
    )
  )
  # Pretraining recipe of the paper. b1, b2, eps, clipping and the final LR are not in the
  # paper: GPT-3/CodeGen-style defaults.
  cfg.optim = ml_collections.ConfigDict(
    dict(
      learning_rate=1e-3,
      warmup_steps=750,
      decay_steps=36_000,
      final_lr_ratio=0.0,
      schedule="linear",  # after warmup, to final_lr_ratio: "linear" or "cosine"
      weight_decay=0.1,
      b1=0.9,
      b2=0.95,
      eps=1e-8,
      grad_clip_norm=1.0,
    )
  )
  cfg.data = ml_collections.ConfigDict(
    dict(
      source="synthetic",  # "seqio" (the phi-1 mixtures) or "synthetic" (a learnable toy stream)
      dir="",  # data_pipeline.build's output (local or gs://); "" = $PHI1_DATA_DIR
      mixture="phi1_pretrain",
      split="train",
      mask_prompt=True,  # no loss on prompts: exercises' signature + docstring, instructions
      pretrain_rates={},  # task -> rate for phi1_pretrain ({} = CodeTextbook only)
      finetune_rates={},  # task -> rate for phi1_finetune ({} = CodeExercises only)
      # Grain reads rows ahead with this many threads, in this many processes (0: in the
      # trainer's process); bench/pipeline_throughput.py measures both.
      read_threads=4,
      read_processes=0,
    )
  )
  # The corpus build (python -m data_pipeline.build): the embedded default draws on the Python
  # sources on this machine.
  cfg.corpus = ml_collections.ConfigDict(
    dict(
      roots=("stdlib",),  # 'stdlib', 'site-packages', or directories
      # JSONL files (patterns, local or gs://) of documents: {"text", "kind"?, "source"?}, or
      # {"kind": "exercise", "prompt", "solution"}; e.g. The Stack or synthetic textbooks.
      jsonl=(),
      max_files=0,  # 0 = all
      max_file_bytes=1 << 20,  # larger files are skipped (generated tables, vendored blobs)
      help_topics=True,  # the interpreter's help topics as textbook documents
      validation_fraction=0.02,
      num_shards=4,
      dedup_threshold=0.85,  # MinHash Jaccard at or above which documents are near-duplicates
      dedup_num_perm=128,
      # The paper's 13-gram overlap rule against HumanEval and MBPP (MBPP read from eval.mbpp_path)
      decontam_ngram=13,
      decontam_tau=0.95,  # AST match rate pruning exercises; the paper tried 0.95 .. 0.8
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
      # Also write the tokenized tasks in seqio's cache layout (OUT/cache), for seqio's own
      # readers (get_dataset(use_cached=True)); the trainer reads the records stage.
      cache=False,
    )
  )
  # Synthetic textbooks and exercises (data_pipeline.synthetic), written by an OpenAI-compatible
  # server or a phi_jax checkpoint, join CodeTextbook / CodeExercises as the tasks' `synthetic`
  # part (data.*_rates can weight it). Off while `textbooks` and `exercises` are 0.
  cfg.synthetic = ml_collections.ConfigDict(
    dict(
      textbooks=0,  # textbook sections to request
      exercises=0,  # exercises to request
      # "openai" (base_url + model), "phi_jax" (checkpoint, in the build's process), or
      # "pretrained": the main job's own pretrained model, served by phi_jax.serve after
      # pretraining (python -m phi_jax.pipeline only; configs/tiny_synthetic.py)
      backend="openai",
      base_url="",  # e.g. http://localhost:8000/v1 (python -m phi_jax.serve, vLLM, TGI, OpenAI)
      model="",  # a name the server's /v1/models lists
      api_key_env="OPENAI_API_KEY",  # environment variable holding the key ("" or unset: none)
      mode="chat",  # "chat" (/v1/chat/completions) or "completions" (/v1/completions)
      checkpoint="",  # backend "phi_jax": a checkpoint workdir (trained or converted)
      tokenizer="",  # backend "phi_jax": its tokenizer ("" = the corpus SentencePiece)
      concurrency=8,  # requests in flight per Beam worker
      timeout_s=120.0,  # per request
      max_retries=4,  # on 429, 5xx, timeouts and dropped connections, with exponential backoff
      backoff_s=1.0,  # the first retry's wait; doubles with each retry
      max_requests=0,  # requests sent per stage, retries included (0 = no limit)
      cache_dir="",  # where responses are kept across runs; "" = OUT/generation_cache
      items_per_shard=64,  # grid items per Beam work item
      # Cosmopedia's sampling; the seed makes the grid's order and each request reproducible.
      temperature=0.6,
      top_p=0.95,
      seed=0,
      min_tokens=150,  # shorter generations are dropped (Cosmopedia's rule)
      # Validation rules not applied (names of data_pipeline.synthetic.RULES; all apply by
      # default): an answer breaking only these is kept as it came. Skip rules only to let a
      # model too small to write Python through (configs/tiny_synthetic.py).
      skip_rules=(),
      run_tests=True,  # exercises' own asserts must pass in the sandbox (eval.isolation)
      test_timeout_s=10.0,
      # Textbooks: topic x audience x style (the paper constrained topic and audience).
      topics=(
        "variables and types",
        "string manipulation",
        "lists and list comprehensions",
        "dictionaries and sets",
        "tuples and unpacking",
        "control flow",
        "loops and iteration",
        "functions and arguments",
        "recursion",
        "sorting algorithms",
        "searching algorithms",
        "classes and objects",
        "inheritance and composition",
        "exceptions and error handling",
        "file input and output",
        "generators and iterators",
        "decorators",
        "modules and packages",
        "regular expressions",
        "dynamic programming",
        "graphs and trees",
        "stacks and queues",
        "testing with assert",
        "numerical computing with the math module",
      ),
      audiences=(
        "a high school student",
        "a first-year computer science student",
        "a data analyst",
        "a biologist",
        "a web developer",
        "a mathematician",
        "a self-taught programmer",
        "a physics student",
      ),
      styles=("textbook", "tutorial", "worked example", "lecture notes"),
      topic_expansion=0,  # first ask for this many subtopics of each topic (0 = topics as given)
      topic_template="List {count} distinct subtopics of '{topic}' that a Python course would "
      "teach, one per line, without numbering or commentary.",
      textbook_system="You write clear, correct Python teaching material.",
      textbook_template="Write a section of a {style} on {topic} in Python for {audience}. "
      "Explain the ideas in prose and teach them through short, complete code examples in "
      "```python blocks, each of which runs on its own.",
      textbook_start="",  # the document's first text (e.g. a docstring for completion models)
      textbook_stop=(),
      textbook_max_tokens=1024,
      # Exercises: function name (verb_noun) x concept x difficulty (the paper constrained names).
      function_verbs=(
        "count",
        "find",
        "merge",
        "split",
        "filter",
        "sort",
        "group",
        "compute",
        "validate",
        "convert",
        "reverse",
        "flatten",
        "rotate",
        "encode",
        "parse",
        "summarize",
      ),
      function_nouns=(
        "words",
        "intervals",
        "primes",
        "digits",
        "pairs",
        "matrix",
        "vowels",
        "dates",
        "scores",
        "brackets",
        "palindromes",
        "temperatures",
        "inventory",
        "anagrams",
        "coordinates",
        "fractions",
      ),
      concepts=(
        "loops",
        "list comprehensions",
        "dictionaries",
        "recursion",
        "string methods",
        "sorting",
        "sets",
        "two pointers",
        "stacks",
        "arithmetic",
      ),
      difficulties=("easy", "medium", "hard"),
      exercise_system="You write Python exercises with correct solutions.",
      exercise_template="Write a {difficulty} Python exercise that practises {concept}: a function "
      "named {function_name} with type hints and a docstring stating the task with an example, "
      "followed by its solution. Use only the standard library. Give the function in one "
      "```python block, then two or three assert statements that test it in the same block.",
      exercise_start="",
      exercise_stop=(),
      exercise_max_tokens=512,
    )
  )
  # Math instruction data (data_pipeline.math_instruct, MAmmoTH's recipe): the corpus build's
  # math_instruct stage and task, parts math_instruct:cot and math_instruct:pot, which
  # data.finetune_rates can weight (configs/tiny_math.py). Off while `sources` is empty.
  cfg.math = ml_collections.ConfigDict(
    dict(
      # "gsm8k" (its train split, from eval.gsm8k_path: CoT rationales, and PoT programs made
      # from the calculator annotations, kept when they print the gold answer in the sandbox),
      # MathInstruct's JSON file, or JSONL files of {"instruction", "output", "kind": cot|pot}
      sources=(),
      max_problems=0,  # GSM8K train problems used (0 = all 7,473)
    )
  )
  # Instruction backtranslation (Humpback; data_pipeline.backtranslation), run by the main job
  # when `rounds` > 0 (configs/tiny_backtranslation.py): a backward model (output -> instruction)
  # finetuned on the seed writes instructions for unlabelled texts; M0 (the seed) rates them; M1
  # trains on seed + the pairs kept; M1 rates again; ... Every model (and each round's control)
  # is evaluated; each starts from the pretrained one with the `finetune` section's recipe.
  cfg.backtranslation = ml_collections.ConfigDict(
    dict(
      rounds=0,  # self-curation rounds (the paper: 2); 0 = off
      # "exercises" (the corpus's CodeExercises: docstring -> function), or a JSONL file of
      # {"instruction", "output"} or OpenAssistant message trees (*.trees.jsonl)
      seed="exercises",
      max_seed=0,  # 0 = all
      # "corpus" (its functions without their docstrings, and textbook passages), or a JSONL or
      # Parquet file with a `text` column
      unlabelled="corpus",
      max_unlabelled=0,  # 0 = all, else this many in a content-seeded order
      min_lines=4,  # corpus functions of min_lines..max_lines lines
      max_lines=40,
      min_chars=200,  # textbook passages of min_chars..max_chars characters
      max_chars=2000,
      # The tags telling seed from augmented pairs in training (the paper's system prompts).
      seed_system="Answer in the style of an AI assistant.",
      augmented_system="Answer with knowledge from web search.",
      backward_lead="Write the instruction that the following response answers.",
      # A generated instruction's length; one the cap cuts before a blank line ends it is
      # counted `runaway` and skipped, unless keep_runaway (a backward model too small to end
      # its instructions).
      instruction_max_tokens=64,
      keep_runaway=False,
      # An instruction sharing a verbatim run of words with its text of at least this share of
      # the shorter of the two (backtranslation.copy_overlap; 1.0: one contains the other) is a
      # copy, not an instruction: skipped (counted `copied_output`).
      copy_threshold=0.8,
      # The backward model's sampling temperature: 0 = greedy; above, each text's own seed.
      instruction_temperature=0.0,
      # An OpenAI-compatible server to write instructions and rate pairs instead of the recipe's
      # own models (e.g. a large model as the judge); "" = the backward model and M(r-1). The
      # client's key, timeout, retries and concurrency are the synthetic section's.
      base_url="",
      model="",
      mode="completions",  # with base_url: "completions" (the instruction template) or "chat"
      items_per_shard=64,  # unlabelled texts per Beam work item
      scorer="rubric",  # "rubric" (the model rates 1-5) or "likelihood" (too small to rate)
      rubric_file="",  # a prompt with {instruction} and {output}; "" = ours (backtranslation.RUBRIC)
      rubric_max_tokens=128,
      threshold=4,  # rubric: keep scores >= 4 (the paper's A4; 5 = A5)
      likelihood_keep_fraction=0.5,  # likelihood: keep this best-scored fraction
      # Per round, also train the control: the seed and as many augmented pairs, unscored.
      control=True,
      score_batch_size=8,
    )
  )
  # The data-quality ablation (python -m phi_jax.ablation): the same model and token budget
  # (train.*) on each data arm, once per seed; phi_jax/ablation.py describes the arms.
  cfg.ablation = ml_collections.ConfigDict(
    dict(
      arms=(
        "unfiltered",
        "random_subset",
        "filtered",
        "filtered_textbooks",
        "filtered_textbooks_finetuned",
      ),
      seeds=(0, 1, 2),  # train.seed of each run; the intervals are over these
      pass_at_1_problems=0,  # greedy pass@1 on the first N problems of each benchmark (0 = all)
      data_dir="",  # a built corpus (data_pipeline.build's OUT) to reuse; "" = build DIR/data
    )
  )
  # Multi-host: jax.distributed.initialize() when enabled; empty fields are auto-detected
  # (TPU VMs, SLURM, ...) or read from JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID.
  cfg.distributed = ml_collections.ConfigDict(
    dict(
      enabled=False, coordinator_address="", num_processes=0, process_id=-1, cpu_collectives="gloo"
    )
  )
  cfg.logging = ml_collections.ConfigDict(
    dict(
      tensorboard=True,
      progress_bar=True,
      # A JAX profiler trace (TensorBoard's profile plugin / Perfetto) of `profile_steps` steps
      # from step `profile_start_step` (past compilation), written to DIR/profile.
      profile_steps=0,
      profile_start_step=5,
    )
  )
  # Text generation (phi_jax.decode.SamplingConfig): `python -m phi_jax.generate` and benchmark
  # sampling. temperature 0 = greedy; eos_id is replaced by the tokenizer's end-of-text id.
  cfg.sampling = ml_collections.ConfigDict(dataclasses.asdict(SamplingConfig()))
  cfg.sampling.max_new_tokens = 512
  # Benchmarks (python -m phi_jax.evaluate) and evaluation during training.
  cfg.eval = ml_collections.ConfigDict(
    dict(
      tokenizer="",  # SentencePiece .model or tokenizer.json (or its dir); "" = data.dir's
      samples_per_task=1,  # n of pass@k; the paper's pass@1 is greedy with n = 1
      batch_size=8,  # prompts decoded together
      timeout_s=10.0,  # wall clock per program, counted from the sandbox's start
      workers=0,  # sandboxes running at once (0 = one per CPU core)
      isolation="bwrap",  # "unsafe-no-sandbox" only inside a container that already isolates
      # A sandbox's memory is at most processes x memory_mb; hostile code can take that much
      # in each of `workers` sandboxes at once.
      memory_mb=1024,  # address space of each sandboxed process
      processes=4,  # processes + threads per sandbox (RLIMIT_NPROC of its own uid)
      mbpp_path="",  # mbpp.jsonl or its dir; "" = shared/data/mbpp, else a checked download
      # What the main job scores its finetuned model on: humaneval, mbpp (pass@1), gsm8k,
      # deepmind_math (accuracy; phi_jax.evaluation.math_eval)
      benchmarks=("humaneval", "mbpp"),
      mbpp_split="test",  # prompt | test | validation | train
      mbpp_prompt_format="docstring",  # docstring | three_shot (evaluation.benchmarks)
      max_problems=0,  # evaluate only the first N problems of a benchmark (0 = all of them)
      # Math benchmarks (evaluation.math_eval): GSM8K's test split, DeepMind Mathematics drawn
      # by seed; Program-of-Thought programs run in the sandbox with the settings above.
      # GSM8K's directory (test.jsonl here, train.jsonl for math.sources); "" = the project's
      # copy (shared/data/gsm8k), else a checked download
      gsm8k_path="",
      math_mode="hybrid",  # cot | pot | hybrid (the program, else the chain of thought)
      deepmind_modules=math_problems.DEEPMIND_MODULES,  # <area>__<module> names
      deepmind_per_module=100,
      deepmind_seed=0,
      program_timeout_s=5.0,  # wall clock per program (MAmmoTH's limit)
      # During training (phi_jax.train): every `every_steps` steps (0 = never), the loss on
      # `loss_batches` held-out batches (data.split's validation counterpart), and with
      # `humaneval_in_training` greedy HumanEval pass@1 (max_problems of them; needs a tokenizer;
      # completions of up to sampling.max_new_tokens).
      every_steps=0,
      loss_batches=4,
      humaneval_in_training=False,
    )
  )
  return cfg


# Fields naming files or directories (local or gs://). Entry points make them absolute once
# (`resolve_paths`), so that a run records where its inputs really are and a later change of the
# current directory changes nothing. Some also take names (_SOURCE_NAMES).
PATH_FIELDS = (
  "data.dir",
  "train.init_from",
  "eval.tokenizer",
  "eval.mbpp_path",
  "eval.gsm8k_path",
  "corpus.roots",
  "corpus.jsonl",
  "corpus.quality_model",
  "corpus.quality_tokenizer",
  "synthetic.checkpoint",
  "synthetic.tokenizer",
  "synthetic.cache_dir",
  "math.sources",
  "backtranslation.seed",
  "backtranslation.unlabelled",
  "backtranslation.rubric_file",
  "ablation.data_dir",
)
# Names a path field may hold instead of a path (corpus.roots, math.sources, backtranslation.*).
_SOURCE_NAMES = ("stdlib", "site-packages", "gsm8k", "exercises", "corpus")


def resolve_paths(cfg: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A copy of `cfg` with every path field (PATH_FIELDS) absolute, relative ones taken from the
  current directory; empty fields stay empty (they mean a default)."""
  cfg = cfg.copy_and_resolve_references()
  for field in PATH_FIELDS:
    section, key = field.split(".")
    if section not in cfg or key not in cfg[section] or cfg[section][key] is None:
      continue
    value = cfg[section][key]
    if isinstance(value, (tuple, list)):
      cfg[section][key] = tuple(v if v in _SOURCE_NAMES else files.absolute(v) for v in value)
    elif value not in _SOURCE_NAMES:
      cfg[section][key] = files.absolute(value)
  return cfg


def differences(before: Any, now: Any, prefix: str = "") -> list[tuple[str, Any, Any]]:
  """(dotted field, value before, value now) of every leaf that differs between two nested
  dicts (configs as JSON, or any part of one); a field only one side has counts, as None on the
  other."""
  if not (isinstance(before, dict) and isinstance(now, dict)):
    return [] if before == now else [(prefix, before, now)]
  found = []
  for key in sorted(before.keys() | now.keys()):
    found += differences(before.get(key), now.get(key), f"{prefix}.{key}" if prefix else key)
  return found


def finetune_recipe(cfg: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Turns a pretraining config into its CodeExercises finetuning: `cfg.finetune`'s steps,
  batch and optimizer (the paper's: batch 256, max LR 1e-4, warmup 50, wd 0.01, 6k steps) on
  the phi1_finetune mixture, same model.

  It starts from pretrained params: `train.init_from` must be set (phi-1-base -> phi-1 is
  `--config.train.init_from=<pretraining workdir>`); the optimizer and schedule start fresh.
  """
  finetune = cfg.finetune
  cfg.data.mixture = "phi1_finetune"
  cfg.train.update(steps=finetune.steps, global_batch=finetune.global_batch)
  cfg.train.init_from = config_dict.placeholder(str)  # required: train.run names it when unset
  cfg.optim.update(
    learning_rate=finetune.learning_rate,
    warmup_steps=finetune.warmup_steps,
    decay_steps=finetune.steps,
    weight_decay=finetune.weight_decay,
    schedule=finetune.schedule,
  )
  return cfg


def path(name: str) -> Path:
  """The file of config `name` (e.g. for a CLI's default --config)."""
  return _CONFIG_DIR / f"{name}.py"


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
  cfg = module.get_config()
  cfg.lock()  # a misspelt key is an error naming the closest valid one, never a new field
  return cfg


# train.micro_batch and model.remat: chosen by compiling the step (phi_jax.aot.fit).
AUTO = "auto"


def memory_fit_needed(cfg: ml_collections.ConfigDict) -> bool:
  return cfg.train.micro_batch == AUTO or cfg.model.remat == AUTO


class ConfigError(ValueError):
  """An inconsistent run config, found before anything is compiled."""


def check(cfg: ml_collections.ConfigDict, num_devices: int) -> None:
  """Rejects a config whose parts disagree (with each other or with `num_devices`), naming the
  fields and what to change. The trainer calls it before building anything."""
  from phi_jax import optimizer, sharding  # the mesh arithmetic lives with the mesh

  model = as_model_config(cfg)  # names an unknown model key
  try:
    mesh = dict(zip(sharding.MESH_AXES, sharding.mesh_shape(cfg.mesh, num_devices)))
  except ValueError as e:
    raise ConfigError(f"{e} (mesh.data/fsdp/tensor)") from None
  problems = []
  data_parallel = mesh["data"] * mesh["fsdp"]
  global_batch, micro = int(cfg.train.global_batch), cfg.train.micro_batch
  if micro == AUTO:
    micro = 0  # every candidate divides the global batch, which must split over the devices
  elif not isinstance(micro, int) or isinstance(micro, bool):
    problems.append(f"train.micro_batch={micro!r} must be a number of sequences or 'auto'")
    micro = 0
  if not 0 <= float(cfg.train.fit_margin) < 1:
    problems.append(f"train.fit_margin={cfg.train.fit_margin} must be in [0, 1)")
  if cfg.train.fit_rule not in ("fastest", "largest"):
    problems.append(f"train.fit_rule={cfg.train.fit_rule!r} is not one of ['fastest', 'largest']")
  if micro < 0 or (micro and global_batch % micro):
    problems.append(
      f"train.global_batch={global_batch} is not divisible by train.micro_batch={micro}"
    )
  elif (micro or global_batch) % data_parallel:
    problems.append(
      f"train.micro_batch={micro} (or global_batch={global_batch} when "
      f"micro_batch=0) must be divisible by the data-parallel devices "
      f"mesh.data*mesh.fsdp={data_parallel}"
    )
  tensor = mesh["tensor"]
  for name, size in (
    ("model.n_heads", model.n_heads),
    ("model.n_kv_heads", model.n_kv_heads),
    ("model.mlp_dim", model.mlp_dim),
    ("model.vocab_size", model.vocab_size),
  ):
    if size % tensor:  # n_kv_heads=0 (= n_heads) passes
      problems.append(f"{name}={size} is not divisible by tensor parallelism mesh.tensor={tensor}")
  if model.d_model % mesh["fsdp"]:
    problems.append(
      f"model.d_model={model.d_model} is not divisible by mesh.fsdp={mesh['fsdp']} "
      "(parameters shard their embed axis over fsdp)"
    )
  if int(cfg.train.loss_chunk) < 0 or (
    int(cfg.train.loss_chunk) and int(cfg.train.seq_len) % int(cfg.train.loss_chunk)
  ):
    problems.append(
      f"train.loss_chunk={cfg.train.loss_chunk} must be 0 or a divisor of "
      f"train.seq_len={cfg.train.seq_len}"
    )
  if int(cfg.train.seq_len) > model.max_len:
    problems.append(f"train.seq_len={cfg.train.seq_len} exceeds model.max_len={model.max_len}")
  if int(cfg.optim.warmup_steps) > int(cfg.optim.decay_steps):
    problems.append(
      f"optim.warmup_steps={cfg.optim.warmup_steps} exceeds "
      f"optim.decay_steps={cfg.optim.decay_steps}"
    )
  if not cfg.optim.learning_rate > 0 or not math.isfinite(cfg.optim.learning_rate):
    problems.append(f"optim.learning_rate={cfg.optim.learning_rate} must be a positive number")
  if min(int(cfg.train.steps), int(cfg.train.log_every), global_batch) <= 0:
    problems.append("train.steps, train.log_every and train.global_batch must be positive")
  if cfg.optim.schedule not in optimizer.SCHEDULES:
    problems.append(f"optim.schedule={cfg.optim.schedule!r} is not one of {optimizer.SCHEDULES}")
  if cfg.data.source not in ("synthetic", "seqio"):
    problems.append(f"data.source={cfg.data.source!r} is not one of ['seqio', 'synthetic']")
  if int(cfg.data.read_threads) < 1 or int(cfg.data.read_processes) < 0:
    problems.append(
      f"data.read_threads={cfg.data.read_threads} must be at least 1 and "
      f"data.read_processes={cfg.data.read_processes} at least 0"
    )
  if cfg.train.on_nonfinite not in ("stop", "skip"):
    problems.append(f"train.on_nonfinite={cfg.train.on_nonfinite!r} is not one of ['skip', 'stop']")
  negative = [
    f"checkpoint.{key}={cfg.checkpoint[key]}"
    for key in ("every_steps", "every_seconds", "keep", "keep_every")
    if cfg.checkpoint[key] < 0
  ]
  if negative:
    problems.append(f"{', '.join(negative)}: checkpoint settings are counts, 0 = off (keep: all)")
  if problems:
    raise ConfigError("inconsistent config:\n  " + "\n  ".join(problems))
