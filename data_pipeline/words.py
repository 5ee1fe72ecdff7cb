"""Code-aware word tokenization shared by deduplication and decontamination.

A "word" is a maximal run of identifier characters (`\\w+`: letters, digits, underscore, any
script), so tokenization does not depend on whitespace or formatting: `foo(bar,baz)` and
`foo( bar , baz )` both give `foo bar baz`; operators and punctuation are dropped, case is kept.
This is the tokenization the n-gram overlap rule and the MinHash shingles are defined on.
"""

from __future__ import annotations

import re

_WORD = re.compile(r"\w+")


def code_words(text: str) -> list[str]:
  """The words of `text`, in order."""
  return _WORD.findall(text)
