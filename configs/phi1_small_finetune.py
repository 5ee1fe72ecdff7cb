"""phi-1-small finetuned on CodeExercises with the paper's finetuning recipe."""

from phi_jax import configs


def get_config():
  return configs.finetune_recipe(configs.get("phi1_small"))
