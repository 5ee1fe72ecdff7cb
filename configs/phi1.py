"""phi-1 (1.3B): 24 layers, d_model 2048, 32 heads x 64, MLP 8192, vocab 51200."""

from phi_jax import configs


def get_config():
  return configs.base()  # the base model section is phi-1
