"""Text generation from a checkpoint:

    python -m phi_jax.generate --checkpoint=runs/tiny --prompt='def fib(n):' [--prompt=...] \
        [--tokenizer=data/tiny/tokenizer/spm.model] [--stop='\ndef'] \
        [--config.sampling.temperature=0.8 --config.sampling.top_p=0.95 ...]

Prints one JSON object per prompt: {"prompt", "completion"}. Sampling settings are the config's
`sampling` section (phi_jax.decode.SamplingConfig); the model comes from the checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

from absl import flags, logging

from phi_jax import checkpoint
from phi_jax import cli
from phi_jax import configs
from phi_jax import decode
from phi_jax import files


def vocabulary_spec(cfg: Any, tokenizer: str = "") -> str:
  """The tokenizer to use: `tokenizer`, else `eval.tokenizer`, else the data directory's;
  FileNotFoundError naming where it was looked for when there is none."""
  from data_pipeline import tasks
  for name, value in (("--tokenizer", tokenizer), ("eval.tokenizer", cfg.eval.tokenizer)):
    if value:
      return files.existing(value, name)
  data_dir = cfg.data.dir or os.environ.get("PHI1_DATA_DIR", tasks.DEFAULT_DATA_DIR)
  return files.existing(tasks.vocabulary_path(data_dir), "the data directory's tokenizer (pass "
                        "--tokenizer, or set eval.tokenizer or data.dir)")


def load_vocabulary(cfg: Any, tokenizer: str = "") -> Any:
  from data_pipeline import tokenizer as tokenizer_lib
  return tokenizer_lib.make_vocabulary(vocabulary_spec(cfg, tokenizer))


def sampling_config(cfg: Any, vocab: Any) -> decode.SamplingConfig:
  """The config's sampling section, ending rows at the vocabulary's end-of-text."""
  from data_pipeline import tokenizer as tokenizer_lib
  sampling = decode.SamplingConfig.from_dict(dict(cfg.sampling.items()))
  return dataclasses.replace(sampling, eos_id=tokenizer_lib.eot_id(vocab))


def load_decoder(checkpoint_dir: str, sampling: decode.SamplingConfig, step: int | None = None
                 ) -> decode.Decoder:
  """A decoder over the params of `checkpoint_dir` (a workdir with checkpoints/<step>/)."""
  model_config, params = checkpoint.restore_params(files.existing(checkpoint_dir, "checkpoint"),
                                                   step)
  return decode.Decoder(model_config, params, sampling)


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  cfg, args = configs.resolve_paths(flags.FLAGS.config), flags.FLAGS
  files.existing(args.checkpoint, "--checkpoint")  # before the tokenizer is looked for
  vocab = load_vocabulary(cfg, args.tokenizer)
  decoder = load_decoder(args.checkpoint, sampling_config(cfg, vocab), args.step)
  stop = [s.encode().decode("unicode_escape") for s in args.stop or ()]  # '\n' as typed
  completions = decode.generate_text(decoder, vocab, args.prompt, stop=stop)
  for prompt, completion in zip(args.prompt, completions):
    print(json.dumps({"prompt": prompt, "completion": completion}))


if __name__ == "__main__":
  cli.define_config(str(configs.path("tiny")),
                    "Config file whose `sampling` (and `eval.tokenizer`) are used.")
  flags.DEFINE_string("checkpoint", None, "Workdir holding checkpoints/<step>/ (train, convert).")
  flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
  flags.DEFINE_multi_string("prompt", None, "A prompt; repeat for a batch.")
  flags.DEFINE_string("tokenizer", "", "SentencePiece .model or tokenizer.json; default: "
                      "config eval.tokenizer, else DATA_DIR/tokenizer/spm.model.")
  flags.DEFINE_multi_string("stop", None, "A stop string, backslash escapes allowed (e.g. "
                            "'\\ndef'); repeatable.")
  flags.mark_flags_as_required(["checkpoint", "prompt"])
  cli.run(main)
