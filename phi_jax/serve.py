"""An OpenAI-compatible HTTP server for a phi_jax checkpoint:

    python -m phi_jax.serve --checkpoint=runs/tiny/finetune [--tokenizer=...] [--port=8000] \
        [--model_name=phi1] [--max_batch=16] [--max_queue=256] [--ready_file=ready.json] \
        [--config=configs/tiny.py --config.sampling.max_new_tokens=256 ...]

    client = openai.OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="none")
    client.completions.create(model="phi1", prompt="def fib(n):", max_tokens=64, stop=["\\ndef"])

Endpoints: POST /v1/completions (`prompt`: a string or a list of them), POST
/v1/chat/completions (`messages`), GET /v1/models, GET /health (the batching counters).
Parameters: `max_tokens` (`max_completion_tokens` in chat; default and upper bound: the config's
`sampling.max_new_tokens`), `temperature` (0 to 2), `top_p` (0 exclusive to 1), `top_k` (an
extension; 0 = off), `n`, `seed`, `stop` (a string or a list), `stream` (server-sent events in
OpenAI's chunk format, ending with `data: [DONE]`; `stream_options.include_usage` adds a usage
chunk). Omitted sampling parameters take the config's `sampling` section (phi_jax.decode); a
request without `seed` gets a random one. Every answer carries `usage` and each choice a
`finish_reason`: "stop" (end-of-text or a stop string) or "length" (max_tokens). Mistakes are
OpenAI-style JSON errors: 400 for bad parameters or a prompt longer than the context leaves room
for, 404 for an unknown model, 503 when `max_queue` requests are waiting already.

The chat template: each message becomes a line "Role: content" (System, User, Assistant; a
"developer" message is a System line), and the prompt ends with "Assistant:", which the model
continues:

    System: You are a helpful assistant.
    User: Write a function that adds two numbers.
    Assistant:

The reply ends at end-of-text, at a stop string, or where the model starts the next turn
("\\nUser:" or "\\nSystem:"); its leading whitespace is dropped.

Requests are batched onto one jitted decoder (phi_jax.batching): each row samples with its own
settings and seed, so a seeded request gets the same text alone or batched with others. SIGTERM
or SIGINT stops accepting connections, finishes the requests in flight, and exits 0.
`--port=0` picks a free port; `--ready_file` is written once the server accepts connections,
{"url": "http://HOST:PORT/v1", "model": NAME}, for a parent process waiting on it.

From Python (e.g. to generate synthetic data from a pretrained model), in a background thread:

    with serve.running("runs/tiny/pretrain", cfg=cfg, port=0) as server:
      client = openai.OpenAI(base_url=server.url, api_key="none")
      client.completions.create(model=server.model, prompt=..., max_tokens=...)

`serve.load(checkpoint_dir, ...)` makes the same server without starting it (`.serve()` runs it
in the calling thread, `.start()` / `.stop()` in a background one), and `serve.Server(decoder,
vocab, ...)` makes one over a `decode.Decoder` already made.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import json
import os
import secrets
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import uvicorn
from absl import flags, logging
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from phi_jax import batching, cli, configs, decode, files, vocabularies

CHAT_ROLES = {"system": "System", "developer": "System", "user": "User", "assistant": "Assistant"}
CHAT_STOP = ("\nUser:", "\nSystem:")  # the model starting the next turn ends its reply
MAX_N = 128  # choices per prompt, OpenAI's limit
# Parameters of OpenAI's API this server does not implement: refused when set, never ignored.
UNSUPPORTED = ("echo", "logprobs", "top_logprobs", "suffix", "logit_bias", "tools", "functions")


def chat_prompt(messages: list[dict]) -> str:
  """The text a chat becomes (the template of the module docstring)."""
  return "".join(f"{CHAT_ROLES[m['role']]}: {m['content']}\n" for m in messages) + "Assistant:"


class ApiError(Exception):
  """An error answered as OpenAI's JSON error object."""

  def __init__(self, status: int, message: str, *, param=None, code=None, kind=None):
    super().__init__(message)
    self.status, self.message, self.param, self.code = status, message, param, code
    self.kind = kind or ("invalid_request_error" if status < 500 else "server_error")

  def response(self) -> JSONResponse:
    error = {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}
    headers = {"Retry-After": "1"} if self.status == 503 else None
    return JSONResponse({"error": error}, status_code=self.status, headers=headers)


def _number(
  body: dict, name: str, default, valid: Callable[[Any], bool], expected: str, integer=False
):
  """body[name] (default when absent or null) if it is a number that is `valid`."""
  value = body.get(name)
  if value is None:
    return default
  number = int if integer else (int, float)
  if isinstance(value, bool) or not isinstance(value, number) or not valid(value):
    raise ApiError(400, f"{name} must be {expected}, not {value!r}", param=name)
  return value


def _strings(body: dict, name: str) -> list[str] | None:
  """body[name] as a list of non-empty strings (one string is a list of one); None if absent."""
  value = body.get(name)
  if value is None:
    return None
  values = [value] if isinstance(value, str) else value
  if (
    not isinstance(values, list) or not values or not all(isinstance(v, str) and v for v in values)
  ):
    raise ApiError(400, f"{name} must be a non-empty string or a list of them", param=name)
  return values


def _content(message: Any, i: int) -> dict:
  """A chat message as {"role", "content": str} (content parts of type text are joined)."""
  param = f"messages[{i}]"
  if not isinstance(message, dict) or message.get("role") not in CHAT_ROLES:
    raise ApiError(400, f"{param} needs a role of {', '.join(CHAT_ROLES)}", param=param)
  content = message.get("content")
  if isinstance(content, list) and all(
    isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
    for p in content
  ):
    content = "".join(p["text"] for p in content)
  if not isinstance(content, str):
    raise ApiError(400, f"{param}.content must be a string or a list of text parts", param=param)
  return {"role": message["role"], "content": content}


@dataclasses.dataclass(frozen=True)
class _Params:
  """A request's parameters, checked."""

  prompts: list[str]
  n: int
  max_tokens: int
  sampling: decode.RowSampling  # stream 0 of the request's seed
  stop: tuple[str, ...]
  stream: bool
  include_usage: bool


def _params(body: dict, chat: bool, sampling: decode.SamplingConfig) -> _Params:
  """The parameters of a completions (or, `chat`, chat completions) request body."""
  for name in UNSUPPORTED:
    if body.get(name):
      raise ApiError(400, f"{name} is not supported by this server", param=name)
  for name in ("presence_penalty", "frequency_penalty"):
    if body.get(name):
      raise ApiError(400, f"{name} is not supported by this server (0 only)", param=name)
  if chat:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
      raise ApiError(400, "messages must be a non-empty list of messages", param="messages")
    prompts = [chat_prompt([_content(m, i) for i, m in enumerate(messages)])]
  else:
    prompts = _strings(body, "prompt")
    if prompts is None:
      raise ApiError(400, "prompt is required: a string or a list of them", param="prompt")
  largest = sampling.max_new_tokens
  tokens_name = (
    "max_completion_tokens" if chat and "max_completion_tokens" in body else "max_tokens"
  )
  max_tokens = _number(
    body,
    tokens_name,
    largest,
    lambda v: 1 <= v <= largest,
    f"an integer from 1 to {largest} (the server's sampling.max_new_tokens)",
    integer=True,
  )
  row = decode.RowSampling(
    temperature=_number(
      body, "temperature", sampling.temperature, lambda v: 0 <= v <= 2, "a number from 0 to 2"
    ),
    top_p=_number(body, "top_p", sampling.top_p, lambda v: 0 < v <= 1, "a number in (0, 1]"),
    top_k=_number(body, "top_k", sampling.top_k, lambda v: v >= 0, "an integer >= 0", True),
    seed=_number(body, "seed", secrets.randbits(32), lambda v: True, "an integer", True) % 2**32,
  )
  stream = body.get("stream") or False
  if not isinstance(stream, bool):
    raise ApiError(400, f"stream must be true or false, not {stream!r}", param="stream")
  options = body.get("stream_options") or {}
  return _Params(
    prompts=prompts,
    n=_number(body, "n", 1, lambda v: 1 <= v <= MAX_N, f"an integer from 1 to {MAX_N}", True),
    max_tokens=max_tokens,
    sampling=row,
    stop=tuple(_strings(body, "stop") or ()) + (CHAT_STOP if chat else ()),
    stream=stream,
    include_usage=isinstance(options, dict) and bool(options.get("include_usage")),
  )


def _post(loop: asyncio.AbstractEventLoop, events: asyncio.Queue, event: Any) -> None:
  """Hands an engine event (from its thread) to the request's coroutine."""
  with contextlib.suppress(RuntimeError):  # the event loop has closed: nobody is waiting
    loop.call_soon_threadsafe(events.put_nowait, event)


def _sse(payload: Any) -> str:
  return f"data: {payload if isinstance(payload, str) else json.dumps(payload)}\n\n"


class _Uvicorn(uvicorn.Server):
  """uvicorn's server, calling `on_ready` once it accepts connections."""

  on_ready: Callable[[], None] | None = None

  async def startup(self, sockets=None) -> None:
    await super().startup(sockets=sockets)
    if self.started and self.on_ready:
      self.on_ready()


def _listen(host: str, port: int) -> socket.socket:
  """A socket bound to (host, port); port 0 = a free one."""
  sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
  sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
  try:
    sock.bind((host, port))
  except OSError as e:
    sock.close()
    raise OSError(
      f"cannot listen on {host}:{port}: {e.strerror} (--port=0 takes a free one)"
    ) from e
  return sock


class Server:
  """The OpenAI-compatible server over one decoder and vocabulary (see the module docstring).

  `serve()` runs it in this thread until `stop()` (or, in the main thread, SIGTERM/SIGINT);
  `start()`, or `with Server(...) as server:`, runs it in a background thread. The socket is
  bound at construction, so `url` is known at once; `engine` is its batching engine.
  """

  def __init__(
    self,
    decoder: decode.Decoder,
    vocab: Any,
    *,
    model_name: str = "phi_jax",
    host: str = "127.0.0.1",
    port: int = 0,
    max_batch: int = 16,
    max_queue: int = 256,
    batch_window_s: float = 0.01,
  ):
    self.decoder, self.vocab, self.model = decoder, vocab, model_name
    self.engine = batching.Engine(
      decoder, vocab, max_batch=max_batch, max_queue=max_queue, window_s=batch_window_s
    )
    self._socket = _listen(host, port)
    bound = self._socket.getsockname()[1]
    self.url = f"http://{f'[{host}]' if ':' in host else host}:{bound}/v1"
    self.created = int(time.time())
    config = uvicorn.Config(
      self.app(), log_level="warning", lifespan="off", timeout_graceful_shutdown=None
    )
    self._uvicorn = _Uvicorn(config)
    self._thread: threading.Thread | None = None

  # --------------------------------------------------------------------- running

  def serve(self, on_ready: Callable[[], None] | None = None) -> None:
    """Serves in this thread until stopped; `on_ready()` once connections are accepted. On the
    way out: no new connections, requests in flight answered, the engine's queue decoded."""
    self.engine.start()
    self._uvicorn.on_ready = on_ready
    try:
      self._uvicorn.run(sockets=[self._socket])
    finally:
      self.engine.close()
      self._socket.close()

  def stop_soon(self) -> None:
    """Asks `serve()` to wind down (as SIGTERM does); returns at once."""
    self._uvicorn.should_exit = True

  def start(self) -> Server:
    """Serves from a background thread; returns once connections are accepted."""
    ready = threading.Event()
    self._thread = threading.Thread(
      target=self.serve, args=(ready.set,), name="phi_jax-serve", daemon=True
    )
    self._thread.start()
    while not ready.wait(0.05):
      if not self._thread.is_alive():
        raise RuntimeError(f"the server at {self.url} stopped while starting (see the log)")
    return self

  def stop(self) -> None:
    """Stops a server started by `start()`, after the requests in flight are answered."""
    self.stop_soon()
    if self._thread is not None:
      self._thread.join()

  def __enter__(self) -> Server:
    return self.start()

  def __exit__(self, *exc) -> None:
    self.stop()

  # --------------------------------------------------------------------- the HTTP API

  def app(self) -> Starlette:
    return Starlette(
      routes=[
        Route("/v1/completions", functools.partial(self._create, chat=False), methods=["POST"]),
        Route("/v1/chat/completions", functools.partial(self._create, chat=True), methods=["POST"]),
        Route("/v1/models", self._models),
        Route("/v1/models/{model:path}", self._model),
        Route("/health", self._health),
      ],
      exception_handlers={
        ApiError: lambda request, e: e.response(),
        HTTPException: lambda request, e: ApiError(e.status_code, e.detail).response(),
      },
    )

  def _model_card(self) -> dict:
    return {"id": self.model, "object": "model", "created": self.created, "owned_by": "phi_jax"}

  async def _models(self, request: Request) -> JSONResponse:
    return JSONResponse({"object": "list", "data": [self._model_card()]})

  async def _model(self, request: Request) -> JSONResponse:
    self._check_model(request.path_params["model"])
    return JSONResponse(self._model_card())

  async def _health(self, request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok", "model": self.model, **self.engine.stats()})

  def _check_model(self, name: Any) -> None:
    if name != self.model:
      raise ApiError(
        404,
        f"The model `{name}` does not exist: this server serves `{self.model}`",
        param="model",
        code="model_not_found",
      )

  def _encode(self, text: str, param: str) -> list[int]:
    ids = list(self.vocab.encode(text))
    room, sampling = self.decoder.max_prompt_len, self.decoder.sampling
    if not ids:
      raise ApiError(400, f"{param} is empty: give at least one token of text", param=param)
    if len(ids) > room:
      raise ApiError(
        400,
        f"the {'chat prompt' if param == 'messages' else 'prompt'} is {len(ids)} tokens; this "
        f"model's context of {self.decoder.config.max_len} "
        f"tokens leaves room for {room} prompt tokens beside up to {sampling.max_new_tokens} "
        f"new ones (prompts are padded to multiples of {sampling.prompt_bucket}): shorten it",
        param=param,
        code="context_length_exceeded",
      )
    return ids

  async def _create(self, request: Request, chat: bool):
    try:
      body = json.loads(await request.body())
    except ValueError as e:
      raise ApiError(400, f"the request body is not valid JSON: {e}") from e
    if not isinstance(body, dict):
      raise ApiError(400, "the request body must be a JSON object")
    if not isinstance(body.get("model"), str):
      raise ApiError(400, "model is required: the name /v1/models lists", param="model")
    self._check_model(body["model"])
    params = _params(body, chat, self.decoder.sampling)
    encoded = [self._encode(p, "messages" if chat else "prompt") for p in params.prompts]
    rows = [
      batching.Row(
        ids,
        dataclasses.replace(params.sampling, stream=i * params.n + j),
        params.max_tokens,
        params.stop,
      )
      for i, ids in enumerate(encoded)
      for j in range(params.n)
    ]
    events: asyncio.Queue = asyncio.Queue()
    job = batching.Job(
      rows, functools.partial(_post, asyncio.get_running_loop(), events), stream=params.stream
    )
    try:
      self.engine.submit(job)
    except batching.QueueFull as e:
      raise ApiError(503, f"the server is busy: {e}; retry later", code="queue_full") from e
    except RuntimeError as e:
      raise ApiError(503, f"the server is shutting down: {e}", code="shutting_down") from e
    reply = _Reply(self.model, chat, sum(len(ids) for ids in encoded))
    if params.stream:
      return StreamingResponse(
        reply.stream(job, events, params.include_usage), media_type="text/event-stream"
      )
    event = await events.get()
    while isinstance(event, batching.Text):
      event = await events.get()
    if isinstance(event, batching.Failed):
      raise ApiError(500, f"decoding failed: {event.message}")
    return JSONResponse(reply.whole(event.completions))


class _Reply:
  """The response objects of one request, whole or as stream chunks, in OpenAI's shapes."""

  def __init__(self, model: str, chat: bool, prompt_tokens: int):
    self.chat, self.prompt_tokens = chat, prompt_tokens
    self.head = {
      "id": f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}",
      "object": "chat.completion" if chat else "text_completion",
      "created": int(time.time()),
      "model": model,
    }

  def usage(self, completions: list[batching.Completion]) -> dict:
    new = sum(c.tokens for c in completions)
    return {
      "prompt_tokens": self.prompt_tokens,
      "completion_tokens": new,
      "total_tokens": self.prompt_tokens + new,
    }

  def whole(self, completions: list[batching.Completion]) -> dict:
    choices = [
      {
        "index": i,
        **(
          {"message": {"role": "assistant", "content": c.text.lstrip()}}
          if self.chat
          else {"text": c.text}
        ),
        "logprobs": None,
        "finish_reason": c.finish_reason,
      }
      for i, c in enumerate(completions)
    ]
    return {**self.head, "choices": choices, "usage": self.usage(completions)}

  def _chunk(self, choices: list[dict], **extra) -> str:
    kind = "chat.completion.chunk" if self.chat else "text_completion"
    return _sse({**self.head, "object": kind, "choices": choices, **extra})

  async def stream(self, job: batching.Job, events: asyncio.Queue, include_usage: bool):
    """Server-sent events: a chunk per piece of text, each choice's finish_reason, [DONE]."""
    started = [not self.chat for _ in job.rows]  # chat: leading whitespace is dropped
    try:
      if self.chat:
        role = {"delta": {"role": "assistant", "content": ""}}
        yield self._chunk(
          [
            {"index": i, **role, "logprobs": None, "finish_reason": None}
            for i in range(len(job.rows))
          ]
        )
      while True:
        event = await events.get()
        if isinstance(event, batching.Text):
          delta = event.delta if started[event.row] else event.delta.lstrip()
          started[event.row] = started[event.row] or bool(delta)
          if delta:
            yield self._chunk([self._stream_choice(event.row, delta, None)])
        elif isinstance(event, batching.Failed):
          error = ApiError(500, f"decoding failed: {event.message}")
          yield _sse(
            {"error": {"message": error.message, "type": error.kind, "param": None, "code": None}}
          )
          return
        else:
          yield self._chunk(
            [self._stream_choice(i, None, c.finish_reason) for i, c in enumerate(event.completions)]
          )
          if include_usage:
            yield self._chunk([], usage=self.usage(event.completions))
          yield _sse("[DONE]")
          return
    finally:
      job.cancel()  # the client may have gone: its rows end at the next chunk

  def _stream_choice(self, index: int, text: str | None, finish_reason: str | None) -> dict:
    if self.chat:
      delta = {"content": text} if text is not None else {}
      return {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
    return {"index": index, "text": text or "", "logprobs": None, "finish_reason": finish_reason}


def load(
  checkpoint_dir: str,
  *,
  cfg: Any = None,
  tokenizer: Any = "",
  step: int | None = None,
  model_name: str = "",
  **options,
) -> Server:
  """A `Server` (not started) over `checkpoint_dir`, a workdir with checkpoints/<step>/. `cfg`: a
  run config (default `configs.base()`) whose `sampling` section sets the defaults and the
  decoder's limits, and whose `eval.tokenizer` / `data.dir` find the tokenizer unless
  `tokenizer` (a path, or a vocabulary) is given. `model_name` defaults to the checkpoint
  directory's name; `options` go to `Server` (host, port, max_batch, max_queue,
  batch_window_s)."""
  checkpoint_dir = files.existing(checkpoint_dir, "checkpoint")  # before the tokenizer
  cfg = configs.base() if cfg is None else cfg
  is_path = isinstance(tokenizer, (str, os.PathLike))
  vocab = vocabularies.for_config(cfg, os.fspath(tokenizer)) if is_path else tokenizer
  decoder = decode.load_decoder(
    checkpoint_dir, decode.sampling_config(cfg, vocabularies.eot_id(vocab)), step
  )
  name = model_name or os.path.basename(checkpoint_dir.rstrip("/"))
  return Server(decoder, vocab, model_name=name, **options)


@contextlib.contextmanager
def running(
  checkpoint_dir: str,
  *,
  cfg: Any = None,
  tokenizer: Any = "",
  step: int | None = None,
  host: str = "127.0.0.1",
  port: int = 0,
  model_name: str = "",
  max_batch: int = 16,
  max_queue: int = 256,
  batch_window_s: float = 0.01,
) -> Iterator[Server]:
  """Serves `checkpoint_dir` from a background thread for the block (arguments as in `load`
  and `Server`); yields the `Server`: `.url` (ending in /v1) and `.model`."""
  server = load(
    checkpoint_dir,
    cfg=cfg,
    tokenizer=tokenizer,
    step=step,
    model_name=model_name,
    host=host,
    port=port,
    max_batch=max_batch,
    max_queue=max_queue,
    batch_window_s=batch_window_s,
  )
  with server:
    yield server


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  cfg, args = configs.resolve_paths(flags.FLAGS.config), flags.FLAGS
  files.existing(args.checkpoint, "--checkpoint")  # named as the flag it came from
  server = load(
    args.checkpoint,
    cfg=cfg,
    tokenizer=args.tokenizer,
    step=args.step,
    model_name=args.model_name,
    host=args.host,
    port=args.port,
    max_batch=args.max_batch,
    max_queue=args.max_queue,
    batch_window_s=args.batch_window_ms / 1000,
  )
  # uvicorn restores these after its own (which wind the server down) and re-raises the signal
  # it caught: the process then exits 0 instead of dying of it.
  for sig in (signal.SIGTERM, signal.SIGINT):
    signal.signal(sig, lambda *_: server.stop_soon())

  def ready():
    if args.ready_file:
      files.write_atomic(
        files.absolute(args.ready_file), json.dumps({"url": server.url, "model": server.model})
      )
    print(f"serving {server.model} at {server.url} (SIGTERM or Ctrl-C stops)", flush=True)

  server.serve(on_ready=ready)


if __name__ == "__main__":
  cli.define_config(
    str(configs.path("tiny")), "Config file whose `sampling` (and `eval.tokenizer`) are used."
  )
  flags.DEFINE_string("checkpoint", None, "Workdir holding checkpoints/<step>/ (train, convert).")
  flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
  flags.DEFINE_string("tokenizer", "", "Tokenizer for --checkpoint (see phi_jax.generate).")
  flags.DEFINE_string("host", "127.0.0.1", "Address to listen on (0.0.0.0: every interface).")
  flags.DEFINE_integer("port", 8000, "Port to listen on; 0 = a free one (see --ready_file).")
  flags.DEFINE_string("model_name", "", "The model's name in the API; default: the workdir's.")
  flags.DEFINE_integer("max_batch", 16, "Most rows (prompts x n) decoded together.", lower_bound=1)
  flags.DEFINE_integer(
    "max_queue", 256, "Most requests waiting; more are answered 503.", lower_bound=1
  )
  flags.DEFINE_float(
    "batch_window_ms",
    10.0,
    "A batch waits this long after each request for another.",
    lower_bound=0,
  )
  flags.DEFINE_string(
    "ready_file", "", 'Written once serving: {"url": ".../v1", "model": NAME} (atomically).'
  )
  flags.mark_flags_as_required(["checkpoint"])
  cli.run(main)
