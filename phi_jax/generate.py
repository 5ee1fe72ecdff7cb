"""Text generation from a checkpoint:

    python -m phi_jax.generate --checkpoint=runs/tiny --prompt='def fib(n):' [--prompt=...] \
        [--tokenizer=data/tiny/tokenizer/spm.model] [--stop='\ndef'] \
        [--config.sampling.temperature=0.8 --config.sampling.top_p=0.95 ...]

Prints one JSON object per prompt: {"prompt", "completion"}. Sampling settings are the config's
`sampling` section (phi_jax.decode.SamplingConfig); the model comes from the checkpoint.
"""

from __future__ import annotations

import json

from absl import flags, logging

from phi_jax import cli, configs, decode, files, vocabularies


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  cfg, args = configs.resolve_paths(flags.FLAGS.config), flags.FLAGS
  files.existing(args.checkpoint, "--checkpoint")  # before the tokenizer is looked for
  vocab = vocabularies.for_config(cfg, args.tokenizer)
  decoder = decode.load_decoder(
    args.checkpoint, decode.sampling_config(cfg, vocabularies.eot_id(vocab)), args.step
  )
  stop = [s.encode().decode("unicode_escape") for s in args.stop or ()]  # '\n' as typed
  completions = decode.generate_text(decoder, vocab, args.prompt, stop=stop)
  for prompt, completion in zip(args.prompt, completions):
    print(json.dumps({"prompt": prompt, "completion": completion}))


if __name__ == "__main__":
  cli.define_config(
    str(configs.path("tiny")), "Config file whose `sampling` (and `eval.tokenizer`) are used."
  )
  flags.DEFINE_string("checkpoint", None, "Workdir holding checkpoints/<step>/ (train, convert).")
  flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
  flags.DEFINE_multi_string("prompt", None, "A prompt; repeat for a batch.")
  flags.DEFINE_string(
    "tokenizer",
    "",
    "SentencePiece .model or tokenizer.json; default: "
    "config eval.tokenizer, else DATA_DIR/tokenizer/spm.model.",
  )
  flags.DEFINE_multi_string(
    "stop", None, "A stop string, backslash escapes allowed (e.g. '\\ndef'); repeatable."
  )
  flags.mark_flags_as_required(["checkpoint", "prompt"])
  cli.run(main)
