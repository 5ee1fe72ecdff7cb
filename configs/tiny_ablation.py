"""The data-quality ablation in miniature (configs/tiny.py's 2-layer model), sized for a
2-core CPU's 45 minutes with the corpus build (the README has the measured time): five arms x
three seeds, each pretrained for 100 steps of 8 x 256 tokens (205k tokens, under one epoch of
every arm), the finetuned arm 30 steps more. Every solution of HumanEval and MBPP is scored by
its loss; pass@1 (0 at this size) on the first 8 problems of each, for the record.

    python -m phi_jax.ablation --config=configs/tiny_ablation.py --workdir=DIR
"""

from phi_jax import configs


def get_config():
  cfg = configs.get("tiny")
  cfg.train.update(steps=100, global_batch=8, log_every=20)
  cfg.optim.update(warmup_steps=10, decay_steps=100)
  cfg.finetune.update(steps=30, global_batch=8, warmup_steps=3)
  cfg.eval.every_steps = 0  # the runs are scored once, at the end
  cfg.checkpoint.every_steps = 0
  cfg.sampling.max_new_tokens = 96
  cfg.ablation.pass_at_1_problems = 8
  return cfg
