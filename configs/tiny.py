"""A phi-shaped model small enough to train on a laptop CPU in minutes."""

from phi_jax import configs


def get_config():
  cfg = configs.base()
  cfg.model.update(vocab_size=8192, d_model=128, n_layers=2, n_heads=4, head_dim=32,
                   mlp_dim=512, rotary_dim=16, max_len=512)
  cfg.train.update(steps=300, global_batch=16, seq_len=256, log_every=10)
  cfg.optim.update(warmup_steps=30, decay_steps=300)
  cfg.checkpoint.update(every_steps=100)
  return cfg
