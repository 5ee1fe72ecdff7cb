"""The tiny model finetuned with the paper's recipe, scaled down: the pretraining -> finetuning
handoff in minutes. Needs `--config.train.init_from=<a tiny pretraining workdir>`."""

from phi_jax import configs


def get_config():
  cfg = configs.finetune_recipe(configs.get("tiny"))
  cfg.train.update(steps=100, global_batch=16)
  cfg.optim.update(warmup_steps=10, decay_steps=100)
  return cfg
