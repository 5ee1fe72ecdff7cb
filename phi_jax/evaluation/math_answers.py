"""Final answers of math problems: taken from a model's text or a program's output, and compared
with the gold answer (MAmmoTH's rules, simplified).

    extract_answer("... so she pays 2 * $5 = $10. The answer is $10.")   # "10"
    answer_from_output("x = 3\\n10.0\\n")                                 # "10.0"
    same_answer("10.0", "10"), same_answer("1,000", "1000")             # True, True

Numbers: `number` reads an optional sign, digits with or without commas as thousands separators
(`1,000`; `1,00` is not a number), decimals, an exponent (Python prints `1e-05`), a fraction
`a/b` or `\\frac{a}{b}`, with `$` and whitespace around and a trailing period ignored. A trailing
`%` is dropped and the value kept as written (`25%` reads 25, not 0.25), since GSM8K's golds
write percentages without the sign. Two numbers are the same answer within a relative tolerance
of 1e-4 (MAmmoTH's), except two whole numbers, which must be equal: the tolerance alone would
take 70,001 for GSM8K's 70,000.
"""

from __future__ import annotations

import math
import re

ANSWER_MARKERS = re.compile(r"the answer is|####", re.IGNORECASE)
# A number in running text: a minus counts only where it cannot be a subtraction ("5-3" ends in
# 3, "x = -3" in -3); a number does not start inside a word or another number.
NUMBER_IN_TEXT = re.compile(
  r"(?:(?<![\w)])-)?(?<![\w.])(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?(?:/\d+)?"
)
_PLAIN = re.compile(
  r"[-+]?(?:(?:\d{1,3}(?:,\d{3})+(?![\d,])|\d+)(?:\.\d+)?|\.\d+)(?:[eE][-+]?\d+)?"
)
_FRACTION = re.compile(r"([-+]?)\\d?frac\{([^{}]+)\}\{([^{}]+)\}")
RELATIVE_TOLERANCE = 1e-4
# Floating-point noise a program leaves where the answer is 0 (5.6e-17) still counts as 0.
ABSOLUTE_TOLERANCE = 1e-9


def _boxed(text: str) -> str | None:
  """The contents of the last `\\boxed{...}` in `text` (braces matched), or None."""
  start = text.rfind("\\boxed{")
  if start < 0:
    return None
  depth, first = 0, start + len("\\boxed{")
  for i in range(first, len(text)):
    depth += {"{": 1, "}": -1}.get(text[i], 0)
    if depth < 0:
      return text[first:i]
  return None


def _clean(answer: str) -> str:
  """Without `\\boxed{}`, surrounding whitespace and `$`, a leading colon, a trailing period."""
  answer = _boxed(answer) or answer
  previous = None
  while answer != previous:
    previous = answer
    answer = answer.strip().strip("$").lstrip(":").removesuffix(".")
  return answer


def extract_answer(text: str) -> str | None:
  """The final answer of a chain of thought: the rest of the line after the text's last marker
  (`The answer is`, any case, or GSM8K's `####`: whichever comes last), else the contents of the
  last `\\boxed{}`, else the last number; None when there is none of these. `\\boxed{}`, `$`,
  surrounding whitespace and a trailing period are stripped."""
  markers = list(ANSWER_MARKERS.finditer(text))
  if markers:
    answer = _clean(text[markers[-1].end() :].lstrip().split("\n", 1)[0])
    return answer or None
  boxed = _boxed(text)
  if boxed is not None:
    return _clean(boxed) or None
  numbers = NUMBER_IN_TEXT.findall(text)
  return numbers[-1] if numbers else None


def _plain_number(text: str) -> float | None:
  if not _PLAIN.fullmatch(text):
    return None
  return float(text.replace(",", ""))


def number(text: str | None) -> float | None:
  """The value of `text` read as a number (module docstring: what is accepted), else None."""
  if text is None:
    return None
  text = _clean(text).removesuffix("%").replace(" ", "")
  fraction = _FRACTION.fullmatch(text)
  if fraction:
    sign, top, bottom = fraction.groups()
    text = f"{sign}{top}/{bottom}"
  top, slash, bottom = text.partition("/")
  if not slash:
    return _plain_number(text)
  top, bottom = _plain_number(top), _plain_number(bottom)
  return None if top is None or not bottom else top / bottom


def answer_from_output(output: str) -> str | None:
  """The answer a Program-of-Thought program printed: its last non-empty output line, stripped;
  None when it printed nothing."""
  lines = [line.strip() for line in output.splitlines() if line.strip()]
  return lines[-1] if lines else None


def _normalized(answer: str) -> str:
  return re.sub(r"\s+", "", _clean(answer))


def same_answer(predicted: str | None, gold: str) -> bool:
  """Whether `predicted` answers like `gold`: as numbers (equal when both are whole, else within
  the tolerance) when both read as numbers, else as strings without whitespace, `$`,
  `\\boxed{}` or a trailing period. When only the gold is a number, the prediction's first
  number stands for it ("The answer is 18 dollars" answers 18, as MAmmoTH reads the text after
  its trigger)."""
  if predicted is None:
    return False
  expected = number(gold)
  if expected is not None:
    value = number(predicted)
    if value is None:
      first = NUMBER_IN_TEXT.search(predicted)
      value = number(first.group()) if first else None
    if value is not None:
      if value.is_integer() and expected.is_integer():
        return value == expected
      return math.isclose(value, expected, rel_tol=RELATIVE_TOLERANCE, abs_tol=ABSOLUTE_TOLERANCE)
  return _normalized(predicted) == _normalized(gold)
