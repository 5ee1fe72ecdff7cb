"""The paper's annotation by an LLM judge, through any OpenAI-compatible chat endpoint.

`LLMJudgeAnnotator` asks the judge for a text's educational value on a 0-10 scale and
`parse_judgement` reads the score out of its reply.
"""

from __future__ import annotations

import re

from data_pipeline import annotators, generation


class LLMJudgeError(RuntimeError):
  """The LLM judge could not produce a score (HTTP failure after retries, or an unparseable reply)."""


LLM_JUDGE_SYSTEM_PROMPT = (
  "You are an expert programming teacher who rates source code for its educational value."
)
LLM_JUDGE_PROMPT = (
  "Determine the {question} of the following code.\n"
  "Code that is clear, self-contained, well documented and teaches algorithms or language "
  "concepts has high value; configuration, boilerplate, data tables, generated code and code "
  "that mostly calls external systems have low value.\n"
  "Answer on the first line with 'Score: N', N an integer from 0 (none) to 10 (excellent), "
  "then at most one sentence of justification.\n\n"
  "```python\n{code}\n```"
)

_SCORE_PATTERN = re.compile(
  r"score\W{0,3}(?:is\W{0,3})?(-?\d+(?:\.\d+)?)(?:\s*(?:/|out of)\s*(\d+(?:\.\d+)?))?",
  re.IGNORECASE,
)
_FRACTION_PATTERN = re.compile(r"(-?\d+(?:\.\d+)?)\s*(?:/|out of)\s*(\d+(?:\.\d+)?)", re.IGNORECASE)
_NUMBER_PATTERN = re.compile(r"-?\d+(?:\.\d+)?")
_YES_NO_PATTERN = re.compile(r"^\W*(yes|no)\b", re.IGNORECASE)


def parse_judgement(reply: str, scale: float = 10.0) -> float:
  """The score in [0, 1] of a judge's reply.

  Understands 'Score: 7', 'score = 7/10', '7 out of 10', a bare leading number (on the 0..scale
  range asked for), and a leading 'yes'/'no' (1.0/0.0). Raises ValueError on anything else or a
  number out of range.
  """
  text = reply.strip()
  match = _SCORE_PATTERN.search(text) or _FRACTION_PATTERN.search(text)
  if match:
    value = float(match.group(1))
    denominator = float(match.group(2)) if match.group(2) else scale
  else:
    yes_no = _YES_NO_PATTERN.match(text)
    if yes_no:
      return 1.0 if yes_no.group(1).lower() == "yes" else 0.0
    number = _NUMBER_PATTERN.match(text)
    if not number:
      raise ValueError(f"no score in the judge's reply: {text[:200]!r}")
    value, denominator = float(number.group(0)), scale
  if denominator <= 0 or not 0.0 <= value <= denominator:
    raise ValueError(f"score {value} out of range 0..{denominator} in reply {text[:200]!r}")
  return value / denominator


class LLMJudgeAnnotator(annotators.Annotator):
  """The paper's annotation by an LLM, through any OpenAI-compatible chat endpoint.

  Asks `model` at `base_url` (e.g. http://localhost:8000/v1) for the educational value on a
  0-10 scale and parses the reply with `parse_judgement` (a yes/no answer also works). Requests go
  through `generation.OpenAIBackend`: the API key comes from the environment variable
  `api_key_env` in each worker, and 429, 5xx, timeouts and dropped connections are retried
  `max_retries` times with exponential backoff; other errors and unparseable replies raise
  `LLMJudgeError`. Code longer than `max_chars` is cut.
  """

  def __init__(
    self,
    base_url: str,
    model: str,
    *,
    api_key_env: str = "OPENAI_API_KEY",
    timeout: float = 60.0,
    max_retries: int = 3,
    backoff_s: float = 1.0,
    threshold: float = 0.5,
    max_chars: int = 12_000,
    temperature: float = 0.0,
    max_tokens: int = 64,
  ):
    self.backend = generation.OpenAIBackend(
      base_url,
      model,
      api_key_env=api_key_env,
      timeout_s=timeout,
      max_retries=max_retries,
      backoff_s=backoff_s,
      concurrency=1,
    )
    self.threshold = threshold
    self.max_chars = max_chars
    self.temperature = temperature
    self.max_tokens = max_tokens

  def __repr__(self):
    return f"LLMJudgeAnnotator(base_url={self.backend.base_url!r}, model={self.backend.model!r})"

  def request(self, text: str) -> generation.Request:
    prompt = LLM_JUDGE_PROMPT.format(
      question=annotators.EDUCATIONAL_VALUE_QUESTION, code=text[: self.max_chars]
    )
    return generation.Request(
      prompt,
      system=LLM_JUDGE_SYSTEM_PROMPT,
      max_tokens=self.max_tokens,
      temperature=self.temperature,
    )

  def complete(self, text: str) -> str:
    """The judge's raw reply for `text`."""
    (outcome,) = generation.generate(self.backend, None, [self.request(text)])
    if outcome.response is None:
      raise LLMJudgeError(
        f"{self.backend.model} at {self.backend.base_url}: gave up after {outcome.attempts} "
        f"attempt(s): {outcome.detail or outcome.failure}"
      )
    return outcome.response.text

  def score(self, text: str) -> float:
    reply = self.complete(text)
    try:
      return parse_judgement(reply)
    except ValueError as error:
      raise LLMJudgeError(f"{self.backend.model} at {self.backend.base_url}: {error}") from error
