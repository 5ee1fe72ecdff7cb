"""The seqio tasks and mixtures of phi-1. Importing this module registers them.

  phi1_code_textbook   -- filtered code + textbook text (CodeTextbook), one document per example
  phi1_code_exercises  -- CodeExercises: `prompt` (signature + docstring) then `solution`
  math_instruct        -- math instructions (data_pipeline.math_instruct): the Alpaca prompt of
                          `instruction` (phi_jax.instructions), then `output`
  backtranslation      -- instruction pairs (data_pipeline.backtranslation): `system` tag, the
                          Alpaca prompt of `instruction`, then `output`
  phi1_pretrain        -- mixture for pretraining (phi-1-base)
  phi1_finetune        -- mixture for finetuning (phi-1; or any task, by `data.finetune_rates`)

Each task also has its parts as tasks of their own (PARTS), so that mixture rates can weight
them: the code tasks by the examples' `source`, `<task>:filtered` (what the quality filter
kept) and `<task>:synthetic` (generated text, data_pipeline.synthetic), e.g.
`data.pretrain_rates={"phi1_code_textbook:filtered": 0.8, "phi1_code_textbook:synthetic": 0.2}`;
math_instruct by its `kind`, `math_instruct:cot` (chains of thought) and `math_instruct:pot`
(programs that print the answer), e.g.
`data.finetune_rates={"math_instruct:cot": 0.5, "math_instruct:pot": 0.5}`; backtranslation
by its `kind` too, `backtranslation:seed` and `backtranslation:augmented`.

Sources are sharded TFRecord files of tf.train.Examples written by `data_pipeline.build`
(`DATA_DIR/<task>/<split>.tfrecord-*`), local or `gs://`, with the vocabulary at
`DATA_DIR/tokenizer/spm.model`. Registration reads the data directory from `PHI1_DATA_DIR`
(default `~/.cache/phi_jax/data`); `register(data_dir, ...)` re-registers for another one, and
refuses a task directory the build has not finished (no `stage.json`).

Examples come out per document ('targets' = tokens + end-of-text; exercises and instructions
also carry 'loss_weights', 0 on prompt tokens when `mask_prompt`). data_pipeline.build writes them in the
random-access form the trainer reads (phi_jax.records), and phi_jax.packing cuts them into
training rows.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping

import seqio
import tensorflow as tf
from etils import epath

from phi_jax import files, instructions

CODE_TEXTBOOK = "phi1_code_textbook"
CODE_EXERCISES = "phi1_code_exercises"
MATH_INSTRUCT = "math_instruct"
BACKTRANSLATION = "backtranslation"
TASKS = (CODE_TEXTBOOK, CODE_EXERCISES, MATH_INSTRUCT, BACKTRANSLATION)
PRETRAIN = "phi1_pretrain"
FINETUNE = "phi1_finetune"
DEFAULT_DATA_DIR = os.path.expanduser("~/.cache/phi_jax/data")


# The tf.train.Example features of each task's source files.
SOURCE_FEATURES = {
  CODE_TEXTBOOK: {
    "text": tf.io.FixedLenFeature([], tf.string),
    "source": tf.io.FixedLenFeature([], tf.string),
  },
  CODE_EXERCISES: {
    "prompt": tf.io.FixedLenFeature([], tf.string),
    "solution": tf.io.FixedLenFeature([], tf.string),
    "source": tf.io.FixedLenFeature([], tf.string),
  },
  MATH_INSTRUCT: {
    "instruction": tf.io.FixedLenFeature([], tf.string),
    "output": tf.io.FixedLenFeature([], tf.string),
    "kind": tf.io.FixedLenFeature([], tf.string),
    "source": tf.io.FixedLenFeature([], tf.string),
  },
  BACKTRANSLATION: {
    "instruction": tf.io.FixedLenFeature([], tf.string),
    "output": tf.io.FixedLenFeature([], tf.string),
    "system": tf.io.FixedLenFeature([], tf.string),
    "kind": tf.io.FixedLenFeature([], tf.string),
    "source": tf.io.FixedLenFeature([], tf.string),
  },
}
# A task's parts. Code: by the `source` of its examples (generated sources are named
# synthetic_*); the instruction tasks by `kind` (math_cot, math_pot; instruction_seed,
# instruction_augmented).
SYNTHETIC_SOURCE_PREFIX = "synthetic"
PARTS = {
  CODE_TEXTBOOK: ("filtered", "synthetic"),
  CODE_EXERCISES: ("filtered", "synthetic"),
  MATH_INSTRUCT: ("cot", "pot"),
  BACKTRANSLATION: ("seed", "augmented"),
}
_KIND_PARTS = {"cot": "math_cot", "pot": "math_pot"} | {
  p: f"instruction_{p}" for p in PARTS[BACKTRANSLATION]
}


def part(task: str, name: str) -> str:
  """The task of `task`'s examples from one part (PARTS), e.g. phi1_code_textbook:synthetic."""
  return f"{task}:{name}"


def _in_part(example, name: str):
  if name in _KIND_PARTS:
    return tf.equal(example["kind"], _KIND_PARTS[name])
  synthetic = tf.strings.regex_full_match(example["source"], f"{SYNTHETIC_SOURCE_PREFIX}.*")
  return synthetic if name == "synthetic" else tf.logical_not(synthetic)


def _only_part(name: str):
  def keep(dataset, output_features=None):
    del output_features
    return dataset.filter(lambda ex: _in_part(ex, name))

  return keep


def vocabulary_path(data_dir: str) -> str:
  return os.path.join(data_dir, "tokenizer", "spm.model")


def split_pattern(data_dir: str, task: str, split: str) -> str:
  return os.path.join(data_dir, task, f"{split}.tfrecord-*")


@seqio.map_over_dataset
def _document_text(example):
  return {"targets": example["text"]}


@seqio.map_over_dataset
def _exercise_parts(example):
  return {"prompt": example["prompt"], "solution": example["solution"]}


@seqio.map_over_dataset
def _instruction_parts(example):
  system = example.get("system", tf.constant(""))
  tag = tf.where(
    tf.equal(system, ""), tf.constant(""), tf.strings.join([system, instructions.SYSTEM_SEPARATOR])
  )
  prompt = tf.strings.join([tag, instructions.PREFIX, example["instruction"], instructions.SUFFIX])
  return {"prompt": prompt, "solution": example["output"]}


def _tokenize_exercise(dataset, output_features, mask_prompt: bool):
  """prompt and solution tokenized apart, so that the prompt's loss can be masked (exercises,
  and instructions in their template)."""
  vocab = output_features["targets"].vocabulary

  def tokenize(example):
    prompt = tf.cast(vocab.encode_tf(example["prompt"]), tf.int32)
    solution = tf.cast(vocab.encode_tf(example["solution"]), tf.int32)
    targets = tf.concat([prompt, solution, [vocab.eos_id]], axis=0)
    prompt_weight = 0.0 if mask_prompt else 1.0
    weights = tf.concat(
      [tf.fill(tf.shape(prompt), prompt_weight), tf.ones(tf.shape(solution)[0] + 1, tf.float32)],
      axis=0,
    )
    return {"targets": targets, "loss_weights": weights}

  return dataset.map(tokenize, num_parallel_calls=tf.data.AUTOTUNE)


@seqio.map_over_dataset
def _unit_weights(example):
  return {**example, "loss_weights": tf.ones(tf.shape(example["targets"]), tf.float32)}


def _features(vocab: seqio.Vocabulary) -> dict:
  """Both tasks share these, as a mixture requires."""
  return {
    "targets": seqio.Feature(vocab, add_eos=True, dtype=tf.int32),
    "loss_weights": seqio.Feature(seqio.PassThroughVocabulary(1), add_eos=False, dtype=tf.float32),
  }


def _require_built(data_dir: str) -> None:
  """A task directory that exists must be complete: never read what a dying build left."""
  for task in TASKS:
    task_dir = epath.Path(data_dir) / task
    if task_dir.exists():
      files.require_complete(task_dir)


def register(
  data_dir: str | None = None,
  vocab: seqio.Vocabulary | None = None,
  pretrain_rates: Mapping[str, float] | None = None,
  finetune_rates: Mapping[str, float] | None = None,
  mask_prompt: bool = True,
) -> None:
  """(Re-)registers the phi-1 tasks and mixtures over `data_dir`."""
  data_dir = data_dir or os.environ.get("PHI1_DATA_DIR", DEFAULT_DATA_DIR)
  _require_built(data_dir)
  vocab = vocab or seqio.SentencePieceVocabulary(vocabulary_path(data_dir))
  splits = ("train", "validation")

  for name in TASKS + tuple(part(t, p) for t in TASKS for p in PARTS[t]) + (PRETRAIN, FINETUNE):
    seqio.MixtureRegistry.remove(name)
    seqio.TaskRegistry.remove(name)

  preprocessors = {
    CODE_TEXTBOOK: [
      _document_text,
      seqio.preprocessors.tokenize,
      seqio.preprocessors.append_eos,
      _unit_weights,
      # Last: what the build caches (seqio's cache, phi_jax.records) is each final document.
      seqio.CacheDatasetPlaceholder(),
    ],
    CODE_EXERCISES: [
      _exercise_parts,
      functools.partial(_tokenize_exercise, mask_prompt=mask_prompt),
      seqio.CacheDatasetPlaceholder(),
    ],
    MATH_INSTRUCT: [
      _instruction_parts,
      functools.partial(_tokenize_exercise, mask_prompt=mask_prompt),
      seqio.CacheDatasetPlaceholder(),
    ],
  }
  preprocessors[BACKTRANSLATION] = preprocessors[MATH_INSTRUCT]
  for task in TASKS:
    source = seqio.TFExampleDataSource(
      {s: split_pattern(data_dir, task, s) for s in splits}, SOURCE_FEATURES[task]
    )
    seqio.TaskRegistry.add(
      task, source=source, preprocessors=preprocessors[task], output_features=_features(vocab)
    )
    for name in PARTS[task]:
      seqio.TaskRegistry.add(
        part(task, name),
        source=source,
        preprocessors=[_only_part(name), *preprocessors[task]],
        output_features=_features(vocab),
      )
  seqio.add_global_cache_dirs([os.path.join(data_dir, "cache")])  # data_pipeline.build's cache
  seqio.MixtureRegistry.add(PRETRAIN, list((pretrain_rates or {CODE_TEXTBOOK: 1.0}).items()))
  seqio.MixtureRegistry.add(FINETUNE, list((finetune_rates or {CODE_EXERCISES: 1.0}).items()))


register()
