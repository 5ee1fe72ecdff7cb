"""The OpenAI-compatible server (phi_jax.serve) through the official `openai` client: a tiny
model with random params and a small byte-level BPE tokenizer, served on loopback."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import jax
import openai
import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from phi_jax import batching, checkpoint, configs, decode, serve
from phi_jax import model as model_lib

REPO = Path(__file__).resolve().parents[1]
PROMPTS = ["def add(a, b):", "import os\n", "class Point:\n  def __init__(self"]
MAX_NEW = 24


def _tokenizer(path: Path) -> int:
  """A byte-level BPE tokenizer.json trained on ASCII Python source (so that every token
  decodes to whole characters); returns its size."""
  source = "".join(Path(m.__file__).read_text() for m in (json, threading, subprocess))
  tokenizer = Tokenizer(models.BPE())
  tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tokenizer.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=400, show_progress=False)
  tokenizer.train_from_iterator([source.encode("ascii", "ignore").decode()], trainer=trainer)
  tokenizer.add_special_tokens(["<|endoftext|>"])
  tokenizer.save(str(path))
  return tokenizer.get_vocab_size()


def _config(tokenizer: Path):
  cfg = configs.get("tiny")
  cfg.eval.tokenizer = str(tokenizer)
  cfg.sampling.update(max_new_tokens=MAX_NEW, prompt_bucket=32, chunk_tokens=8)
  return cfg


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
  """A checkpoint of the tiny model (random params), its tokenizer.json beside it."""
  workdir = tmp_path_factory.mktemp("serve") / "tiny"
  size = _tokenizer(workdir.parent / "tokenizer.json")
  config = dataclasses.replace(model_lib.as_model_config(configs.get("tiny")), vocab_size=size)
  checkpoint.save_params(workdir, config, model_lib.init(config, jax.random.key(0)))
  return workdir


@pytest.fixture(scope="module")
def tokenizer(workdir) -> Path:
  return workdir.parent / "tokenizer.json"


@pytest.fixture(scope="module")
def server(workdir, tokenizer):
  cfg = _config(tokenizer)
  with serve.running(
    str(workdir), cfg=cfg, model_name="tiny", max_batch=8, batch_window_s=0.2
  ) as s:
    yield s


@pytest.fixture(scope="module")
def client(server):
  return openai.OpenAI(base_url=server.url, api_key="none", max_retries=0, timeout=300)


@pytest.fixture(scope="module")
def greedy(server):
  """decode.generate_text's greedy continuation of each of PROMPTS (the reference)."""
  return decode.generate_text(server.decoder, server.vocab, PROMPTS)


def _post(server, path: str, data: bytes) -> tuple[int, dict]:
  request = urllib.request.Request(
    server.url + path, data=data, headers={"Content-Type": "application/json"}
  )
  try:
    with urllib.request.urlopen(request, timeout=60) as response:
      return response.status, json.loads(response.read())
  except urllib.error.HTTPError as error:
    return error.code, json.loads(error.read())


def _wait_for(condition, what: str, timeout: float = 60.0):
  deadline = time.monotonic() + timeout
  while not condition():
    assert time.monotonic() < deadline, f"timed out waiting for {what}"
    time.sleep(0.02)


def test_greedy_completions_equal_generate_text(server, client, greedy):
  assert any(greedy) and len(set(greedy)) > 1  # the model says something, not always the same
  response = client.completions.create(model="tiny", prompt=PROMPTS, temperature=0)
  assert [c.text for c in response.choices] == greedy
  assert [c.index for c in response.choices] == [0, 1, 2]
  encoded = [server.vocab.encode(p) for p in PROMPTS]
  assert response.usage.prompt_tokens == sum(len(ids) for ids in encoded)
  new = server.decoder.generate(encoded)
  assert response.usage.completion_tokens == sum(len(t) for t in new)
  assert response.usage.total_tokens == response.usage.prompt_tokens + sum(len(t) for t in new)
  for choice, tokens in zip(response.choices, new):
    assert choice.finish_reason == ("length" if len(tokens) == MAX_NEW else "stop")
  # max_tokens cuts each row where the model's first 5 tokens end.
  short = client.completions.create(model="tiny", prompt=PROMPTS[0], max_tokens=5)
  assert short.choices[0].text == decode.continuation(server.vocab, encoded[0], new[0][:5])
  assert short.choices[0].finish_reason == "length" and short.usage.completion_tokens == 5


def test_chat_completions_follow_the_template(server, client):
  messages = [
    {"role": "system", "content": "You write Python."},
    {"role": "user", "content": "Add two numbers."},
  ]
  prompt = serve.chat_prompt(messages)
  assert prompt == "System: You write Python.\nUser: Add two numbers.\nAssistant:"
  expected = decode.generate_text(server.decoder, server.vocab, [prompt], stop=serve.CHAT_STOP)
  response = client.chat.completions.create(model="tiny", messages=messages)
  assert response.choices[0].message.role == "assistant"
  assert response.choices[0].message.content == expected[0].lstrip()
  assert response.usage.prompt_tokens == len(server.vocab.encode(prompt))


def test_streaming_sends_the_same_text_in_pieces(client, greedy):
  chunks = list(client.completions.create(model="tiny", prompt=PROMPTS[2], stream=True))
  pieces = [c.choices[0].text for c in chunks if c.choices and c.choices[0].text]
  assert "".join(pieces) == greedy[2] and len(pieces) > 1
  assert chunks[-1].choices[0].finish_reason in ("stop", "length")
  messages = [{"role": "user", "content": "Hello"}]
  whole = client.chat.completions.create(model="tiny", messages=messages, seed=3, temperature=1)
  stream = client.chat.completions.create(
    model="tiny",
    messages=messages,
    seed=3,
    temperature=1,
    stream=True,
    stream_options={"include_usage": True},
  )
  chunks = list(stream)
  text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
  assert text == whole.choices[0].message.content
  assert chunks[0].choices[0].delta.role == "assistant"
  assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_stop_strings_end_the_text(server, client, greedy):
  full = greedy[0]
  stop = full[4:6]
  response = client.completions.create(model="tiny", prompt=PROMPTS[0], stop=[stop, "@@@"])
  choice = response.choices[0]
  assert choice.text == full[: full.index(stop)] and choice.finish_reason == "stop"
  # usage counts the tokens up to the one that completed the stop string
  encoded = server.vocab.encode(PROMPTS[0])
  tokens = server.decoder.generate([encoded])[0]
  used = response.usage.completion_tokens
  assert stop in decode.continuation(server.vocab, encoded, tokens[:used])
  assert stop not in decode.continuation(server.vocab, encoded, tokens[: used - 1])
  streamed = client.completions.create(model="tiny", prompt=PROMPTS[0], stop=stop, stream=True)
  assert "".join(c.choices[0].text for c in streamed if c.choices) == choice.text


def test_n_choices_and_seeds(client):
  kw = dict(model="tiny", prompt=PROMPTS[1], temperature=1.5, n=3, seed=7)
  first = [c.text for c in client.completions.create(**kw).choices]
  assert len(first) == 3 and len(set(first)) == 3  # three samples, each its own stream
  assert [c.text for c in client.completions.create(**kw).choices] == first
  other = [c.text for c in client.completions.create(**{**kw, "seed": 8}).choices]
  assert other != first


def _in_threads(calls):
  """Runs each call in a thread of its own; their results, in order."""
  results = [None] * len(calls)

  def run(i):
    results[i] = calls[i]()

  threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
  for t in threads:
    t.start()
  return threads, results


def test_a_seeded_request_samples_the_same_alone_or_batched(server, client):
  seeded = lambda: client.completions.create(
    model="tiny", prompt=PROMPTS[0], temperature=1.2, top_p=0.9, seed=11
  )
  alone = seeded().choices[0].text
  others = [
    lambda: client.completions.create(model="tiny", prompt=PROMPTS[1], temperature=0.7),
    lambda: client.completions.create(model="tiny", prompt=PROMPTS[2], max_tokens=3),
    lambda: client.completions.create(model="tiny", prompt=PROMPTS[0], temperature=1.2, n=2),
  ]
  before = server.engine.stats()
  with server.engine.paused():  # all four requests queue up, then run as one batch
    threads, results = _in_threads([*others, seeded])
    _wait_for(lambda: server.engine.stats()["queued"] == 4, "4 queued requests")
  for t in threads:
    t.join()
  after = server.engine.stats()
  assert after["batches"] == before["batches"] + 1 and after["largest_batch"] >= 5
  assert results[-1].choices[0].text == alone
  assert results[1].choices[0].finish_reason == "length" and results[1].usage.completion_tokens == 3


def test_concurrent_clients_share_batches(server, client, greedy):
  before = server.engine.stats()
  threads, results = _in_threads(
    [
      lambda i=i: client.completions.create(model="tiny", prompt=PROMPTS[i % 3], temperature=0)
      for i in range(8)
    ]
  )
  for t in threads:
    t.join()
  assert [r.choices[0].text for r in results] == [greedy[i % 3] for i in range(8)]
  after = server.engine.stats()
  assert after["requests"] - before["requests"] == 8
  assert after["rows"] - before["rows"] == 8
  assert after["batches"] - before["batches"] < 8  # batched (the window is 0.2 s)
  health = json.loads(urllib.request.urlopen(server.url.removesuffix("/v1") + "/health").read())
  assert health["status"] == "ok" and health["batches"] == after["batches"]


def test_a_full_queue_answers_503(server):
  busy = serve.Server(server.decoder, server.vocab, model_name="tiny", max_batch=8, max_queue=1)
  with busy, busy.engine.paused():
    client = openai.OpenAI(base_url=busy.url, api_key="none", max_retries=0, timeout=300)
    threads, results = _in_threads(
      [lambda: client.completions.create(model="tiny", prompt=PROMPTS[0], max_tokens=2)]
    )
    _wait_for(lambda: busy.engine.stats()["queued"] == 1, "the queued request")
    with pytest.raises(openai.InternalServerError) as caught:
      client.completions.create(model="tiny", prompt=PROMPTS[1])
    assert caught.value.status_code == 503
    assert caught.value.body["code"] == "queue_full" and "max_queue" in caught.value.body["message"]
  for t in threads:
    t.join()
  assert results[0].choices[0].finish_reason in ("stop", "length")


def test_mistakes_are_openai_errors(server, client):
  with pytest.raises(openai.NotFoundError, match="`gpt-4` does not exist.*`tiny`"):
    client.completions.create(model="gpt-4", prompt="x")
  long_prompt = " ".join(f"word{i}" for i in range(1200))
  n_tokens = len(server.vocab.encode(long_prompt))
  room = server.decoder.max_prompt_len
  with pytest.raises(openai.BadRequestError, match=f"{n_tokens} tokens.*room for {room}") as e:
    client.completions.create(model="tiny", prompt=long_prompt)
  assert e.value.body["code"] == "context_length_exceeded" and e.value.body["param"] == "prompt"
  bad = [
    (dict(max_tokens=-1), "max_tokens must be an integer from 1 to 24"),
    (dict(max_tokens=25), "max_tokens must be an integer from 1 to 24"),
    (dict(temperature=2.5), "temperature must be a number from 0 to 2"),
    (dict(top_p=0), r"top_p must be a number in \(0, 1\]"),
    (dict(n=0), "n must be an integer from 1 to 128"),
    (dict(echo=True), "echo is not supported"),
  ]
  for kw, message in bad:
    with pytest.raises(openai.BadRequestError, match=message):
      client.completions.create(model="tiny", prompt="x", **kw)
  with pytest.raises(openai.BadRequestError, match="role of system"):
    client.chat.completions.create(model="tiny", messages=[{"role": "tool", "content": "x"}])
  status, body = _post(server, "/completions", b'{"model": "tiny", "prompt": ')
  assert status == 400 and "not valid JSON" in body["error"]["message"]
  assert body["error"]["type"] == "invalid_request_error"
  status, body = _post(server, "/completions", b'{"model": "tiny"}')
  assert status == 400 and body["error"]["param"] == "prompt"
  status, body = _post(server, "/chat/completions", b'{"model": "tiny", "messages": []}')
  assert status == 400 and body["error"]["param"] == "messages"
  assert [m.id for m in client.models.list().data] == ["tiny"]
  with pytest.raises(openai.NotFoundError):
    client.models.retrieve("other")


def test_the_engine_drops_jobs_whose_clients_went_and_refuses_jobs_once_closed(server):
  engine = batching.Engine(server.decoder, server.vocab)
  events = []
  job = batching.Job([batching.Row([5], decode.RowSampling(), 1)], events.append)
  engine.start()
  with engine.paused():
    engine.submit(job)
    job.cancel()
  engine.close()
  assert events == [] and engine.stats()["requests"] == 0
  with pytest.raises(RuntimeError, match="shutting down"):
    engine.submit(job)


def _serve_command(*flags):
  return [sys.executable, "-m", "phi_jax.serve", *flags]


def _environment():
  return {**os.environ, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu"}


def test_cli_names_a_missing_checkpoint(tmp_path):
  result = subprocess.run(
    _serve_command("--checkpoint=nothing/here"),
    cwd=tmp_path,
    env=_environment(),
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert result.returncode == 1
  last = result.stderr.strip().splitlines()[-1]
  assert "python -m phi_jax.serve: error:" in last and f"{tmp_path}/nothing/here" in last


@pytest.mark.slow
def test_cli_serves_until_sigterm_and_finishes_the_request_in_flight(workdir, tokenizer, tmp_path):
  ready = tmp_path / "ready.json"
  process = subprocess.Popen(
    _serve_command(
      f"--checkpoint={workdir}",
      f"--tokenizer={tokenizer}",
      "--port=0",
      "--model_name=cli",
      f"--ready_file={ready}",
      f"--config.sampling.max_new_tokens={MAX_NEW}",
      "--config.sampling.prompt_bucket=32",
      "--config.sampling.chunk_tokens=4",
    ),
    env=_environment(),
    stdout=subprocess.PIPE,
    stderr=subprocess.STDOUT,
    text=True,
  )
  try:
    _wait_for(lambda: ready.exists() or process.poll() is not None, "the ready file", 300)
    assert process.poll() is None, process.stdout.read()
    info = json.loads(ready.read_text())
    assert info["model"] == "cli" and info["url"].startswith("http://127.0.0.1:")
    client = openai.OpenAI(base_url=info["url"], api_key="none", max_retries=0, timeout=300)
    stream = client.chat.completions.create(
      model="cli", messages=[{"role": "user", "content": "Hi"}], stream=True
    )
    first = next(iter(stream))  # the role chunk: the request is in flight
    assert first.choices[0].delta.role == "assistant"
    process.send_signal(signal.SIGTERM)
    rest = list(stream)
    assert rest[-1].choices[0].finish_reason in ("stop", "length")
    assert process.wait(timeout=120) == 0
    output = process.stdout.read()
    assert f"serving cli at {info['url']}" in output
    with pytest.raises(openai.APIConnectionError):  # no longer listening
      client.models.list()
  finally:
    if process.poll() is None:
      process.kill()
