"""configs/tiny.py's main job with instruction backtranslation (Humpback) in place of the
CodeExercises finetune: the seed is the corpus's own CodeExercises (a docstring asks, the
function answers), the unlabelled texts are its functions with their docstrings removed and its
textbook passages. After pretraining: the backward model, finetuned on the seed turned round,
writes an instruction for each unlabelled text; M0 trains on the seed; two rounds of curation
and training follow (M0 rates, M1 trains on seed + kept; M1 rates, M2 trains), each with its
control (seed + as many augmented pairs, unscored). All five are scored on HumanEval and MBPP:
pass@1 and the loss of the reference solutions.

A 2-layer model cannot follow a rubric (it writes no `Score: n`), so curation here is by
likelihood: the model's mean per-token log-probability of each output given its instruction,
the better half kept. Its greedy instructions are blank lines, so it samples them (temperature
0.7), and keeps those the token cap cuts (keep_runaway: counted, not skipped). The point is the
path; a real run: a larger model and scorer="rubric" (or an OpenAI-compatible judge), the
paper's A4 threshold.
"""

from phi_jax import configs


def get_config():
  cfg = configs.get("tiny")
  cfg.backtranslation.update(
    rounds=2,
    max_seed=1024,
    max_unlabelled=1024,
    scorer="likelihood",
    instruction_max_tokens=48,
    instruction_temperature=0.7,
    keep_runaway=True,
  )
  return cfg
