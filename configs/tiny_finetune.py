"""The tiny model finetuned with the paper's recipe, scaled down (`cfg.finetune` of tiny): the
pretraining -> finetuning handoff in minutes. Needs `--config.train.init_from=<a tiny
pretraining workdir>`."""

from phi_jax import configs


def get_config():
  return configs.finetune_recipe(configs.get("tiny"))
