"""phi-1-small instruction-tuned on math with MAmmoTH's recipe: the Alpaca prompt, loss on the
response only, cosine schedule with 3% warmup, learning rate 2e-5 (theirs for 7B and 13B), three
epochs. It starts from a pretrained workdir: --config.train.init_from=DIR.

The data: GSM8K's train split as CoT and verified PoT (math.sources="gsm8k"), or MathInstruct
itself: --config.math.sources='("MathInstruct.json",)' (their JSON file, CoT and PoT told apart
by its source paths). Build it with
`python -m data_pipeline.build --config=configs/phi1_small_math.py --out=DIR` and pass
--config.data.dir=DIR; score with
`python -m phi_jax.evaluate --benchmark=gsm8k --checkpoint=RUN --config=configs/phi1_small_math.py`.

Steps are three epochs of the default data, 3 x train_tokens / (global_batch x seq_len): GSM8K's
train split made 7,322 CoT and 6,852 verified PoT training examples, 2.98M tokens under
configs/tiny.py's 8,192-piece tokenizer (measured 2026-12-03; a larger vocabulary makes fewer),
in rows of 64 x 2,048 tokens a step: 68 steps. For MathInstruct (262k examples) take
train_tokens from `records` in the build's manifest.json.
"""

from phi_jax import configs


def get_config():
  cfg = configs.get("phi1_small")
  cfg.math.sources = ("gsm8k",)
  cfg.data.finetune_rates = {"math_instruct:cot": 0.5, "math_instruct:pot": 0.5}
  cfg.finetune.update(
    steps=68, global_batch=64, learning_rate=2e-5, warmup_steps=2, schedule="cosine"
  )
  cfg.eval.benchmarks = ("gsm8k",)
  return configs.finetune_recipe(cfg)
