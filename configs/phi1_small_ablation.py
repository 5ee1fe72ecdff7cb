"""The data-quality ablation at the paper's scale: phi-1-small (350M) pretrained on each data arm
with phi-1-base's schedule (24,000 steps of 1024 x 2048 tokens, about 50B), three seeds, every
HumanEval and MBPP problem scored; the finetuned arm adds the `finetune` section (6,000 steps of
256 sequences). On a TPU slice, with a built corpus:

    python -m phi_jax.ablation --config=configs/phi1_small_ablation.py --workdir=gs://B/ablation \\
        --config.ablation.data_dir=gs://B/corpus

The paper's 350M points (HumanEval pass@1): unfiltered 12.19%, filtered 17.68%, filtered with
synthetic textbooks 20.12%, finetuned 45%; its unfiltered model saw about 200B tokens
(--config.train.steps=96_000 --config.optim.decay_steps=96_000 for that budget). Numbers are
left to whoever runs it.
"""

from phi_jax import configs


def get_config():
  cfg = configs.get("phi1_small")
  cfg.ablation.seeds = (0, 1, 2)
  return cfg
