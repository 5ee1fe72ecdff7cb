"""The instruction prompt: Alpaca's template, which MAmmoTH trained on MathInstruct with and
evaluated with. Training (phi_jax.tasks' instruction tasks) and evaluation
(phi_jax.evaluation.math_eval) build prompts here, so the two cannot drift.

    prompt("What is 2 + 3?")               # the model's input; the response follows it
    prompt("What is 2 + 3?" + POT_TRIGGER)  # asks for a program that prints the answer
    prompt("Name a prime.", system="Answer in the style of an AI assistant.")  # a tagged turn
"""

from __future__ import annotations

TEMPLATE = (
  "Below is an instruction that describes a task. "
  "Write a response that appropriately completes the request.\n\n"
  "### Instruction:\n{instruction}\n\n### Response:\n"
)
# The text before and after the instruction, for graph code (tf.strings.join) that cannot format.
PREFIX, SUFFIX = TEMPLATE.split("{instruction}")
# Between a system tag (Humpback's, telling seed from augmented pairs) and the template.
SYSTEM_SEPARATOR = "\n\n"
# Appended to a question to ask for a Program-of-Thought answer (MAmmoTH's evaluation).
POT_TRIGGER = " Let's write a program."
# A model that goes on after its response writes the next turn: generation stops there.
STOP = ("\n### Instruction",)


def prompt(instruction: str, system: str = "") -> str:
  return (system + SYSTEM_SEPARATOR if system else "") + PREFIX + instruction + SUFFIX
