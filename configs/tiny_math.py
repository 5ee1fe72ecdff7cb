"""configs/tiny.py's main job with MAmmoTH's math recipe in place of CodeExercises: pretraining
on the code corpus as before, then instruction tuning on GSM8K's train split as chains of
thought (CoT) and as programs made from its calculator annotations (PoT, each verified in the
sandbox), half and half, and evaluation on GSM8K's test problems with hybrid decoding (the
program first, the chain of thought when the program gives no answer). No download: GSM8K
comes from eval.gsm8k_path, the project's copy, or a checked download.

A 2-layer model trained for minutes solves no GSM8K problem; the point is the path. A real
run: configs/phi1_small_math.py from a pretrained workdir.
"""

from phi_jax import configs


def get_config():
  cfg = configs.get("tiny")
  cfg.math.sources = ("gsm8k",)
  cfg.data.finetune_rates = {"math_instruct:cot": 0.5, "math_instruct:pot": 0.5}
  cfg.finetune.update(schedule="cosine", warmup_steps=3)  # MAmmoTH: cosine, 3% warmup
  cfg.eval.update(benchmarks=("gsm8k",), max_problems=64)
  return cfg
