"""phi-1-small instruction-tuned on math with MAmmoTH's recipe: the Alpaca prompt, loss on the
response only, cosine schedule with 3% warmup, learning rate 2e-5 (theirs for 7B and 13B), three
epochs. It starts from a pretrained workdir: --config.train.init_from=DIR.

The data: GSM8K's train split as CoT and verified PoT (math.sources="gsm8k"), or MathInstruct
itself: --config.math.sources='("MathInstruct.json",)' (their JSON file, CoT and PoT told apart
by its source paths). Build it with
`python -m data_pipeline.build --config=configs/phi1_small_math.py --out=DIR` and pass
--config.data.dir=DIR; score with
`python -m phi_jax.evaluate --benchmark=gsm8k --checkpoint=RUN --config=configs/phi1_small_math.py`.

Steps are three epochs of the default data: GSM8K's 7,473 CoT and ~7,000 PoT examples hold
about 3.4M tokens, packed into 64 rows of 2,048 tokens per step, 26 steps an epoch. For
MathInstruct (262k examples) scale steps with its token count (`records` in the build's
manifest.json): 3 x train_tokens / (global_batch x seq_len).
"""

from phi_jax import configs


def get_config():
  cfg = configs.get("phi1_small")
  cfg.math.sources = ("gsm8k",)
  cfg.data.finetune_rates = {"math_instruct:cot": 0.5, "math_instruct:pot": 0.5}
  cfg.finetune.update(
    steps=78, global_batch=64, learning_rate=2e-5, warmup_steps=3, schedule="cosine"
  )
  cfg.eval.benchmarks = ("gsm8k",)
  return configs.finetune_recipe(cfg)
