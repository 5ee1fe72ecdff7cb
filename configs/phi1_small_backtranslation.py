"""phi-1-small finetuned on backtranslated instruction data: the seed and the curated pairs of a
backtranslation round (`backtranslation`, its parts `:seed` and `:augmented` behind their
tags), from a pretrained workdir, with the `finetune` section's recipe:

    python -m phi_jax.train --config=configs/phi1_small_backtranslation.py --workdir=RUN \\
        --config.train.init_from=PRETRAINED --config.data.dir=DIR/round_2_data

The whole recipe (backward model, augmentation, rounds of curation, each round's model) is the
main job with `backtranslation.rounds` set, on the pretraining config: `python -m
phi_jax.pipeline --config=configs/phi1_small.py --config.backtranslation.rounds=2
--config.backtranslation.scorer=rubric --workdir=DIR` (the paper's A4 threshold is the default).
Weight the parts with `--config.data.finetune_rates='{"backtranslation:seed": 0.5,
"backtranslation:augmented": 0.5}'`; by default the task reads seed and curated pairs as one.
"""

from phi_jax import configs


def get_config():
  cfg = configs.get("phi1_small")
  cfg.backtranslation.update(scorer="rubric", threshold=4)
  cfg.data.finetune_rates = {"backtranslation": 1.0}
  return configs.finetune_recipe(cfg)
