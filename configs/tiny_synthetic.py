"""configs/tiny.py's main job with synthetic data its own pretrained model writes: after
pretraining, phi_jax.serve serves DIR/pretrain and the corpus build asks it for textbooks and
exercises through the OpenAI API, as it would ask vLLM or OpenAI; what passes validation joins
CodeTextbook and CodeExercises, and so the finetuning data. No network is needed.

A 2-layer model trained for minutes writes poor textbooks: none of its answers is Python that
parses (2026-12-03: under the default rules 64 of 64 textbooks were rejected, and 64 exercises
probed at several temperatures and prompts all broke a code rule), so this config skips the
rules that ask for Python (`synthetic.skip_rules`), applies only empty, refusal and too short,
and keeps the rest as it came, an exercise's prompt being the signature and docstring it was
given. What it keeps teaches nothing; the point is the path. Never skip rules for a real
model: point the same stages at one with --config.synthetic.backend=openai
--config.synthetic.base_url=URL --config.synthetic.model=NAME (chat mode and the default
templates and rules; see docs/corpus.md).

Completion mode: the prompt is the document's start (a docstring, or a signature and docstring)
and the model continues it, which is what a base model can do.
"""

from phi_jax import configs


def get_config():
  cfg = configs.get("tiny")
  cfg.synthetic.update(
    backend="pretrained",
    mode="completions",
    textbooks=64,
    exercises=128,
    temperature=0.8,
    min_tokens=4,
    skip_rules=(
      "truncated",
      "code_syntax",
      "no_code",
      "no_function",
      "no_docstring",
      "no_body",
      "tests_failed",
    ),
    textbook_template="",
    textbook_start='"""{style} on {topic}, for {audience}."""\n\n',
    textbook_stop=("\n\n\n",),
    textbook_max_tokens=96,
    exercise_template="",
    exercise_start=(
      "def {function_name}(values):\n"
      '    """{difficulty} exercise on {concept}: {function_name} of the values."""\n'
    ),
    exercise_stop=("\ndef ", "\nclass ", "\n\n\n"),
    exercise_max_tokens=96,
  )
  return cfg
