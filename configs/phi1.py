"""phi-1 (1.3B): 24 layers, d_model 2048, 32 heads x 64, MLP 8192, vocab 51200."""

from phi_jax import configs


def get_config():
  cfg = configs.base()  # the base model section and recipe are phi-1 pretraining
  cfg.model.dtype = "bfloat16"  # mixed precision: fp32 params, bf16 compute
  # TPU-first: the splash kernel. The paper trained with attention and residual dropout 0.1 (the
  # released config says 0); splash has no attention dropout, so only the residual one stays.
  # The paper's exact setting: model.attention=xla model.attn_dropout=0.1.
  cfg.model.update(attention="splash", attn_dropout=0.0, resid_dropout=0.1)
  # The paper's batch never fits a chip at once: the step is compiled for the slice first, and
  # the largest micro-batch that fits, then the cheapest remat policy, are used (phi_jax.aot.fit).
  cfg.model.remat = "auto"
  cfg.train.micro_batch = "auto"
  return cfg
