"""The instruction prompt: Alpaca's template, which MAmmoTH trained on MathInstruct with and
evaluated with. Training (phi_jax.tasks' instruction tasks) and evaluation
(phi_jax.evaluation.math_eval) build prompts here, so the two cannot drift.

    prompt("What is 2 + 3?")               # the model's input; the response follows it
    prompt("What is 2 + 3?" + POT_TRIGGER)  # asks for a program that prints the answer
"""

from __future__ import annotations

TEMPLATE = (
  "Below is an instruction that describes a task. "
  "Write a response that appropriately completes the request.\n\n"
  "### Instruction:\n{instruction}\n\n### Response:\n"
)
# The text before and after the instruction, for graph code (tf.strings.join) that cannot format.
PREFIX, SUFFIX = TEMPLATE.split("{instruction}")
# Appended to a question to ask for a Program-of-Thought answer (MAmmoTH's evaluation).
POT_TRIGGER = " Let's write a program."


def prompt(instruction: str) -> str:
  return PREFIX + instruction + SUFFIX
