"""Text generation for the corpus build: one request in, one response or one failure reason out.

    backend = generation.OpenAIBackend("http://localhost:8000/v1", "phi-1")   # any such server
    backend = generation.DecoderBackend("runs/tiny/pretrain", tokenizer="runs/tiny/data/...")
    cache = generation.ResponseCache("gs://bucket/corpus/generation_cache")
    outcomes = generation.generate(backend, cache, [generation.Request("Write ...")])

The synthetic-data stages (`data_pipeline.synthetic`) and instruction backtranslation share it.

- **Backends.** `OpenAIBackend` talks to any OpenAI-compatible server (`/v1/chat/completions` or
  `/v1/completions`) through the `openai` client, with a per-request timeout and its own
  retries: 429, 5xx, timeouts and dropped connections are retried with exponential backoff
  (honouring Retry-After), other errors fail the request at once. `DecoderBackend` runs a phi_jax
  checkpoint (or a converted Hugging Face directory) in this process, batched on the device mesh
  by `phi_jax.decode`.
- **Nothing is paid for twice.** A response is stored as soon as it arrives, under a digest of
  (backend kind, model, request), one small file each, written whole (`files.write_atomic`), so a
  build that is killed or rerun requests only what it does not have. Failures are not stored: a
  rerun retries them.
- **Accounting.** Every outcome says whether it came from the cache, how many attempts it took,
  its token usage, or why it failed (`failure`: a short reason used in counter names).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import hashlib
import json
import os
import random
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import openai
from etils import epath

from phi_jax import batching, checkpoint, decode, files, serve, vocabularies

CHAT = "chat"
COMPLETIONS = "completions"


@dataclasses.dataclass(frozen=True)
class Request:
  """One generation: a chat (`system` + `prompt` as the user's turn) or a plain completion of
  `prompt`, with its sampling settings (all part of the cache key)."""

  prompt: str
  mode: str = CHAT  # CHAT or COMPLETIONS
  system: str = ""
  max_tokens: int = 1024
  temperature: float = 1.0
  top_p: float = 1.0
  seed: int = 0
  stop: tuple[str, ...] = ()

  def __post_init__(self):
    if self.mode not in (CHAT, COMPLETIONS):
      raise ValueError(f"request mode must be {CHAT!r} or {COMPLETIONS!r}, got {self.mode!r}")
    if self.max_tokens < 1 or self.temperature < 0 or not 0 < self.top_p <= 1:
      raise ValueError(f"a request needs max_tokens >= 1, temperature >= 0, 0 < top_p <= 1: {self}")


@dataclasses.dataclass(frozen=True)
class Response:
  text: str
  finish_reason: str  # "stop" (end-of-text or a stop string) or "length" (max_tokens)
  prompt_tokens: int
  completion_tokens: int


@dataclasses.dataclass(frozen=True)
class Outcome:
  """What became of one request: a response, or the reason there is none."""

  request: Request
  response: Response | None
  failure: str = ""  # "" when there is a response
  detail: str = ""  # what the failure said (the server's message, the exception)
  cached: bool = False
  attempts: int = 0  # requests sent to the backend (0 when cached or over the budget)


class GenerationFailed(Exception):
  """One request failed for good; `reason` names why (counter-name safe)."""

  def __init__(self, reason: str, detail: str = ""):
    super().__init__(f"{reason}: {detail}" if detail else reason)
    self.reason = reason


class Backend(Protocol):
  """What generates text. `identity` names the backend and model in cache keys; `complete`
  answers every request, in order, failures included (never raises for one request)."""

  identity: str

  def complete(
    self, requests: Sequence[Request], budget: Budget, on_outcome: Callable[[int, Outcome], None]
  ) -> list[Outcome]: ...


def request_key(identity: str, request: Request) -> str:
  fields = {"backend": identity, **dataclasses.asdict(request)}
  return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


class ResponseCache:
  """Responses on any filesystem epath reaches: `<dir>/<key[:2]>/<key>.json`, each written whole."""

  def __init__(self, directory: epath.PathLike):
    self.directory = epath.Path(directory)

  def _path(self, key: str) -> epath.Path:
    return self.directory / key[:2] / f"{key}.json"

  def get(self, key: str) -> Response | None:
    path = self._path(key)
    if not path.exists():
      return None
    return Response(**json.loads(path.read_text())["response"])

  def put(self, key: str, request: Request, response: Response) -> None:
    record = {"request": dataclasses.asdict(request), "response": dataclasses.asdict(response)}
    files.write_atomic(self._path(key), json.dumps(record, sort_keys=True))


class Budget:
  """At most `limit` requests sent to a paid backend (0: no limit), retries included;
  thread-safe. `DecoderBackend` runs here and spends none."""

  def __init__(self, limit: int):
    self.limit, self.used = limit, 0
    self._lock = threading.Lock()

  def take(self) -> bool:
    with self._lock:
      if self.limit and self.used >= self.limit:
        return False
      self.used += 1
      return True


_RETRIED_STATUS = {408, 409, 429}


def _retry_after_s(error: openai.APIStatusError) -> float | None:
  headers = error.response.headers
  try:
    if "retry-after-ms" in headers:
      return float(headers["retry-after-ms"]) / 1000
    if "retry-after" in headers:
      return float(headers["retry-after"])
  except ValueError:
    return None
  return None


class OpenAIBackend:
  """An OpenAI-compatible server: `base_url` like http://localhost:8000/v1.

  The API key is read from the environment variable `api_key_env` when the client is made (in
  each Beam worker, never pickled); local servers need none. Each request is retried up to
  `max_retries` times on 408/409/429/5xx, timeouts and connection errors, waiting
  `backoff_s` x 2^attempt (x a random 0.5..1.5, or the server's Retry-After) between tries.
  """

  def __init__(
    self,
    base_url: str,
    model: str,
    *,
    api_key_env: str = "OPENAI_API_KEY",
    timeout_s: float = 120.0,
    max_retries: int = 4,
    backoff_s: float = 1.0,
    concurrency: int = 8,
  ):
    if not base_url or not model:
      raise ValueError(
        f"an OpenAI-compatible backend needs a base URL and a model (got {base_url!r}, "
        f"{model!r}): e.g. base_url='http://localhost:8000/v1' and the name /v1/models lists"
      )
    self.base_url, self.model, self.api_key_env = base_url.rstrip("/"), model, api_key_env
    self.timeout_s, self.max_retries, self.backoff_s = timeout_s, max_retries, backoff_s
    self.concurrency = concurrency
    # The model's name, not the server's address, identifies answers: a server restarted on
    # another port (the main job's own) still hits the cache. Serve other weights under another
    # name.
    self.identity = f"openai:{model}"
    self._client = None

  def __getstate__(self):
    return {**self.__dict__, "_client": None}

  def client(self) -> openai.OpenAI:
    if self._client is None:
      self._client = openai.OpenAI(
        base_url=self.base_url,
        api_key=os.environ.get(self.api_key_env) or "unused",
        timeout=self.timeout_s,
        max_retries=0,  # retried here, where attempts are counted and the backoff is ours
      )
    return self._client

  def _send(self, request: Request) -> Response:
    sampling = dict(
      model=self.model,
      max_tokens=request.max_tokens,
      temperature=request.temperature,
      top_p=request.top_p,
      seed=request.seed,
      stop=list(request.stop) or None,
    )
    if request.mode == CHAT:
      messages = [{"role": "system", "content": request.system}] if request.system else []
      messages.append({"role": "user", "content": request.prompt})
      reply = self.client().chat.completions.create(messages=messages, **sampling)
      text = reply.choices[0].message.content if reply.choices else None
    else:
      reply = self.client().completions.create(prompt=request.prompt, **sampling)
      text = reply.choices[0].text if reply.choices else None
    if text is None:
      raise GenerationFailed("malformed", "a reply without choices or text")
    usage = reply.usage
    return Response(
      text=text,
      finish_reason=reply.choices[0].finish_reason or "stop",
      prompt_tokens=usage.prompt_tokens if usage else 0,
      completion_tokens=usage.completion_tokens if usage else 0,
    )

  def _one(self, request: Request, budget: Budget) -> Outcome:
    attempts = 0
    while True:
      if not budget.take():
        detail = f"the request budget of {budget.limit} is spent"
        return Outcome(request, None, failure="budget", detail=detail, attempts=attempts)
      attempts += 1
      wait = self.backoff_s * 2 ** (attempts - 1) * random.uniform(0.5, 1.5)
      try:
        return Outcome(request, self._send(request), attempts=attempts)
      except GenerationFailed as failure:
        reason, detail, final = failure.reason, str(failure), True
      except openai.APITimeoutError as error:
        reason, detail, final = "timeout", f"no answer within {self.timeout_s} s: {error}", False
      except openai.APIConnectionError as error:
        reason, detail, final = "connection", f"cannot reach {self.base_url}: {error}", False
      except openai.APIStatusError as error:
        reason, detail = f"http_{error.status_code}", f"HTTP {error.status_code}: {error}"
        final = error.status_code not in _RETRIED_STATUS and error.status_code < 500
        wait = _retry_after_s(error) or wait
      except (openai.APIResponseValidationError, ValueError, TypeError) as error:
        reason, detail, final = "malformed", f"not an OpenAI-shaped reply: {error}", True
      if final or attempts > self.max_retries:
        return Outcome(request, None, failure=reason, detail=detail[:500], attempts=attempts)
      time.sleep(min(wait, 60.0))

  def complete(
    self, requests: Sequence[Request], budget: Budget, on_outcome: Callable[[int, Outcome], None]
  ) -> list[Outcome]:
    def one(i: int) -> Outcome:
      outcome = self._one(requests[i], budget)
      on_outcome(i, outcome)
      return outcome

    with concurrent.futures.ThreadPoolExecutor(max(1, self.concurrency)) as pool:
      return list(pool.map(one, range(len(requests))))


class DecoderBackend:
  """A phi_jax checkpoint workdir (trained, or converted from Hugging Face) decoding in this
  process, batched on the mesh by `phi_jax.batching` (each row with its own sampling and seed),
  as `phi_jax.serve` does: chat requests use the server's chat template."""

  def __init__(
    self, checkpoint_dir: str, *, tokenizer: str, step: int | None = None, max_batch: int = 32
  ):
    self.checkpoint_dir, self.tokenizer, self.step = checkpoint_dir, tokenizer, step
    self.max_batch = max_batch
    self.identity = f"phi_jax:{files.absolute(checkpoint_dir)}:{step}"
    self._loaded = None

  def __getstate__(self):
    return {**self.__dict__, "_loaded": None}

  def _load(self):
    if self._loaded is None:
      vocab = vocabularies.make_vocabulary(self.tokenizer)
      config, params = checkpoint.restore_params(
        files.existing(self.checkpoint_dir, "checkpoint"), self.step
      )
      self._loaded = vocab, config, params
    return self._loaded

  def _row(self, request: Request, decoder: decode.Decoder, vocab) -> batching.Row:
    chat = request.mode == CHAT
    if chat:
      messages = [{"role": "system", "content": request.system}] if request.system else []
      text = serve.chat_prompt([*messages, {"role": "user", "content": request.prompt}])
    else:
      text = request.prompt
    return batching.Row(
      list(vocab.encode(text))[-decoder.max_prompt_len :],  # as generate_text: the end is kept
      decode.RowSampling(request.temperature, top_p=request.top_p, seed=request.seed % 2**32),
      request.max_tokens,
      request.stop + (serve.CHAT_STOP if chat else ()),
    )

  def complete(
    self, requests: Sequence[Request], budget: Budget, on_outcome: Callable[[int, Outcome], None]
  ) -> list[Outcome]:
    del budget  # nothing to pay for
    if not requests:
      return []
    vocab, config, params = self._load()
    longest = max(r.max_tokens for r in requests)
    sampling = decode.SamplingConfig(max_new_tokens=longest, eos_id=vocabularies.eot_id(vocab))
    decoder = decode.Decoder(config, params, sampling)
    if decoder.max_prompt_len <= 0:
      detail = f"max_tokens={longest} leaves no room for a prompt in max_len {config.max_len}"
      return [Outcome(r, None, failure="prompt_too_long", detail=detail) for r in requests]
    engine = batching.Engine(decoder, vocab, max_batch=self.max_batch, max_queue=len(requests))
    outcomes: list[Any] = [None] * len(requests)

    def notify(i: int, row: batching.Row, event) -> None:
      if isinstance(event, batching.Done):
        (completion,) = event.completions
        text = completion.text.lstrip() if requests[i].mode == CHAT else completion.text
        response = Response(text, completion.finish_reason, len(row.prompt), completion.tokens)
        outcomes[i] = Outcome(requests[i], response, attempts=1)
      elif isinstance(event, batching.Failed):
        outcomes[i] = Outcome(requests[i], None, failure="decoder", detail=event.message)
      else:
        return
      on_outcome(i, outcomes[i])

    engine.start()
    for i, request in enumerate(requests):
      row = self._row(request, decoder, vocab)
      engine.submit(batching.Job([row], functools.partial(notify, i, row)))
    engine.close()  # decodes everything queued, then returns
    return outcomes


def generate(
  backend: Backend,
  cache: ResponseCache | None,
  requests: Sequence[Request],
  budget: Budget | None = None,
) -> list[Outcome]:
  """Each request's outcome, in order: from the cache when it has it, else from `backend`, and
  then stored as soon as it arrives (a build killed midway keeps what it paid for)."""
  keys = [request_key(backend.identity, r) for r in requests]
  outcomes: list[Any] = [None] * len(requests)
  missing = []
  for i, key in enumerate(keys):
    hit = cache.get(key) if cache is not None else None
    if hit is None:
      missing.append(i)
    else:
      outcomes[i] = Outcome(requests[i], hit, cached=True)

  def store(j: int, outcome: Outcome) -> None:
    if cache is not None and outcome.response is not None:
      cache.put(keys[missing[j]], requests[missing[j]], outcome.response)

  answers = backend.complete([requests[i] for i in missing], budget or Budget(0), store)
  for i, outcome in zip(missing, answers):
    outcomes[i] = outcome
  return outcomes
