"""Evaluation: benchmarks (HumanEval, MBPP), the sandbox that runs model-written code, the
judge that scores it from outside, and pass@k."""
