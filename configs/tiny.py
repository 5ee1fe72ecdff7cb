"""A phi-shaped model small enough to train on a laptop CPU in minutes."""

from phi_jax import configs


def get_config():
  cfg = configs.base()
  cfg.model.update(
    vocab_size=8192,
    d_model=128,
    n_layers=2,
    n_heads=4,
    head_dim=32,
    mlp_dim=512,
    rotary_dim=16,
    max_len=1024,
  )  # rotary: max_len costs nothing
  # loss_chunk: the [16, 256, 8192] logits would dominate a CPU step; chunks of 8 positions
  # stay in cache (docs/measurements.md).
  cfg.train.update(steps=300, global_batch=16, seq_len=256, log_every=10, loss_chunk=8)
  cfg.optim.update(warmup_steps=30, decay_steps=300)
  cfg.finetune.update(steps=100, global_batch=16, warmup_steps=10)
  # The held-out loss curve of the main job; pass@1 is measured once, on the final params.
  cfg.eval.every_steps = 50
  cfg.sampling.max_new_tokens = 256
  cfg.checkpoint.update(every_steps=100)
  cfg.corpus.quality_model_steps = 50  # the classifier's embedding model; keeps the main job short
  return cfg
