"""A fake OpenAI-compatible server on loopback that fails some requests on purpose, and counts
every request it receives by prompt. Tests start it and stop it:

    with FakeOpenAI(answer) as server:   # answer(prompt, attempt) -> Reply
      client = OpenAI(base_url=server.url, api_key="x")

`answer` decides per prompt and per attempt (1, 2, ...): a text (HTTP 200, OpenAI-shaped JSON),
an HTTP error status (with Retry-After-Ms so retries are quick), a delay before answering
(slower than the client's timeout to make one time out), or a body that is not JSON. `answered`
counts the texts a client received: a reply slower than `client_timeout_s` is not one.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclasses.dataclass(frozen=True)
class Reply:
  text: str = ""  # the answer, or the error's message when status is not 200
  status: int = 200
  delay_s: float = 0.0
  garbage: bool = False  # a 200 whose body is not JSON
  finish_reason: str = "stop"


class FakeOpenAI:
  def __init__(self, answer: Callable[[str, int], Reply], client_timeout_s: float = float("inf")):
    self.answer, self.client_timeout_s = answer, client_timeout_s
    self.requests: collections.Counter[str] = collections.Counter()  # prompt -> requests
    self.answered: collections.Counter[str] = collections.Counter()  # prompt -> 200 with text
    self.received: list[dict] = []  # every request: path, headers, JSON body
    self.in_flight = 0  # requests received and not yet answered
    self._lock = threading.Lock()
    fake = self

    class Handler(BaseHTTPRequestHandler):
      def log_message(self, *args):
        del args

      def do_POST(self):
        with fake._lock:
          fake.in_flight += 1
        try:
          self._answer()
        finally:
          with fake._lock:
            fake.in_flight -= 1

      def _answer(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        chat = self.path.endswith("/chat/completions")
        prompt = body["messages"][-1]["content"] if chat else body["prompt"]
        with fake._lock:
          fake.requests[prompt] += 1
          attempt = fake.requests[prompt]
          fake.received.append(
            {
              "path": self.path,
              "headers": {k.lower(): v for k, v in self.headers.items()},
              "json": body,
            }
          )
        reply = fake.answer(prompt, attempt)
        time.sleep(reply.delay_s)
        if reply.status != 200:
          payload = {"error": {"message": reply.text or "injected failure", "type": "error"}}
          self._send(reply.status, json.dumps(payload).encode(), {"retry-after-ms": "10"})
          return
        if reply.garbage:
          self._send(200, b"<html>not json", {})
          return
        choice = {"index": 0, "finish_reason": reply.finish_reason}
        if chat:
          choice["message"] = {"role": "assistant", "content": reply.text}
        else:
          choice["text"] = reply.text
        tokens = len(reply.text.split())
        payload = {
          "id": "fake",
          "object": "chat.completion" if chat else "text_completion",
          "created": 0,
          "model": body["model"],
          "choices": [choice],
          "usage": {
            "prompt_tokens": len(prompt.split()),
            "completion_tokens": tokens,
            "total_tokens": len(prompt.split()) + tokens,
          },
        }
        if reply.delay_s < fake.client_timeout_s:
          with fake._lock:
            fake.answered[prompt] += 1
        self._send(200, json.dumps(payload).encode(), {})

      def _send(self, status: int, data: bytes, headers: dict):
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in headers.items():
          self.send_header(key, value)
        self.end_headers()
        try:
          self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):  # the client timed out and left
          pass

    self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    self._server.daemon_threads = True
    self.url = f"http://127.0.0.1:{self._server.server_address[1]}/v1"
    self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

  def wait_idle(self, timeout_s: float = 30.0) -> None:
    """Waits until every request received has been answered (e.g. after its client was killed)."""
    deadline = time.monotonic() + timeout_s
    while self.in_flight and time.monotonic() < deadline:
      time.sleep(0.01)
    assert not self.in_flight, f"{self.in_flight} requests still unanswered after {timeout_s} s"

  def __enter__(self) -> FakeOpenAI:
    self._thread.start()
    return self

  def __exit__(self, *exc):
    self._server.shutdown()
    self._server.server_close()
