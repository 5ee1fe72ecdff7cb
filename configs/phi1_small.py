"""phi-1-small (350M): 20 layers, d_model 1024, 16 heads x 64, MLP 4096, vocab 51200."""

from phi_jax import configs


def get_config():
  cfg = configs.get("phi1")
  cfg.model.update(d_model=1024, n_layers=20, n_heads=16, mlp_dim=4096)
  return cfg
