"""OpenAIEngine against a real loopback HTTP server that speaks chat completions."""

from __future__ import annotations

import base64
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from PIL import Image

from worker.engines.base import ChatTurn, EngineError
from worker.engines.openai_engine import OpenAIEngine


class FakeServer:
    """Answers POST /v1/chat/completions from a script of (status, headers, body) steps.

    A step's body may be a dict (sent as JSON), a list of SSE deltas (streamed), or
    "hang" (accepts, then never answers). The last step repeats.
    """

    def __init__(self):
        self.requests: list[dict] = []
        self.script: list[tuple[int, dict, object]] = []
        self.release = threading.Event()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.httpd.server_port}/v1"
        threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True).start()

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                server.requests.append({"path": self.path, "headers": dict(self.headers),
                                        "json": json.loads(body)})
                step = server.script[min(len(server.requests), len(server.script)) - 1]
                server.answer(self, *step)

        return Handler

    def answer(self, h: BaseHTTPRequestHandler, status: int, headers: dict, body) -> None:
        if body == "hang":
            self.release.wait(10)
            return
        if isinstance(body, list):
            h.send_response(status)
            h.send_header("Content-Type", "text/event-stream")
            h.send_header("Connection", "close")
            h.end_headers()
            for piece in body:
                if piece == "hang":
                    self.release.wait(10)
                    return
                chunk = {"choices": [{"index": 0, "delta": {"content": piece}}]}
                h.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                h.wfile.flush()
            h.wfile.write(b": keep-alive\n\ndata: [DONE]\n\n")
            return
        data = json.dumps(body).encode()
        h.send_response(status)
        for k, v in {"Content-Type": "application/json", **headers}.items():
            h.send_header(k, v)
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)

    def close(self):
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


def reply(text: str) -> dict:
    return {"choices": [{"index": 0, "message": {"role": "assistant", "content": text}}]}


def error(message: str) -> dict:
    return {"error": {"message": message, "type": "invalid_request_error"}}


@pytest.fixture
def server():
    s = FakeServer()
    yield s
    s.close()


def engine(server: FakeServer, **kw) -> OpenAIEngine:
    opts = {"family": "qwen2.5-vl", "timeout_s": 5, "backoff_s": 0.01, "stream": False, **kw}
    return OpenAIEngine(server.url, "Qwen/Qwen2.5-VL-7B-Instruct", **opts)


def test_request_carries_image_before_text_model_and_bearer(server):
    server.script = [(200, {}, reply("a red square"))]
    picture = Image.new("RGB", (64, 48), "red")
    turns = [ChatTurn("system", "Be brief."), ChatTurn("user", "What is this?", (picture,))]

    out = engine(server, api_key="sk-test").generate(turns, max_new_tokens=77)

    assert out == "a red square"
    (req,) = server.requests
    assert req["path"] == "/v1/chat/completions"
    assert req["headers"]["Authorization"] == "Bearer sk-test"
    body = req["json"]
    assert body["model"] == "Qwen/Qwen2.5-VL-7B-Instruct"
    assert body["max_tokens"] == 77 and body["temperature"] == 0 and body["stream"] is False
    assert body["messages"][0] == {"role": "system", "content": "Be brief."}
    image, text = body["messages"][1]["content"]
    assert text == {"type": "text", "text": "What is this?"}
    url = image["image_url"]["url"]
    assert image["type"] == "image_url" and url.startswith("data:image/jpeg;base64,")
    assert base64.b64decode(url.split(",", 1)[1])[:2] == b"\xff\xd8"  # a JPEG


def test_no_bearer_without_key_and_png_for_alpha(server):
    server.script = [(200, {}, reply("ok"))]
    picture = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    engine(server).generate([ChatTurn("user", "hi", (picture,))], max_new_tokens=5)
    req = server.requests[0]
    assert "Authorization" not in req["headers"]
    url = req["json"]["messages"][0]["content"][0]["image_url"]["url"]
    assert url.startswith("data:image/png;base64,")


def test_streaming_calls_on_text_with_growing_prefixes(server):
    server.script = [(200, {}, ["Hel", "lo, ", "world", "!"])]
    seen: list[str] = []

    out = engine(server, stream=True).generate([ChatTurn("user", "hi")], max_new_tokens=20,
                                               on_text=seen.append)

    assert out == "Hello, world!"
    assert seen == ["Hel", "Hello, ", "Hello, world", "Hello, world!"]
    assert server.requests[0]["json"]["stream"] is True


def test_429_then_200_succeeds_after_a_retry(server):
    server.script = [(429, {"Retry-After": "0"}, error("Rate limit reached")),
                     (200, {}, reply("fine"))]
    eng = engine(server, backoff_s=5)  # Retry-After: 0 must win over the long backoff
    started = time.monotonic()
    assert eng.generate([ChatTurn("user", "hi")], max_new_tokens=5) == "fine"
    assert time.monotonic() - started < 2
    assert len(server.requests) == 2


def test_500_three_times_raises_with_the_servers_message(server):
    server.script = [(500, {}, error("CUDA out of memory"))]
    with pytest.raises(EngineError, match="CUDA out of memory"):
        engine(server, retries=3).generate([ChatTurn("user", "hi")], max_new_tokens=5)
    assert len(server.requests) == 3


def test_400_raises_at_once_without_retry(server):
    server.script = [(400, {}, error("max_tokens is too large"))]
    with pytest.raises(EngineError, match="refused this request: max_tokens is too large"):
        engine(server).generate([ChatTurn("user", "hi")], max_new_tokens=5)
    assert len(server.requests) == 1


@pytest.mark.parametrize("body", ["hang", ["partial ", "hang"]], ids=["silent", "mid-stream"])
def test_a_server_that_hangs_times_out_within_timeout_s(server, body):
    server.script = [(200, {}, body)]
    started = time.monotonic()
    with pytest.raises(EngineError, match="did not answer in time"):
        engine(server, timeout_s=1, stream=True).generate([ChatTurn("user", "hi")],
                                                           max_new_tokens=5)
    assert time.monotonic() - started < 2.5


def test_connection_refused_raises_engine_error():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    eng = OpenAIEngine(f"http://127.0.0.1:{port}/v1", "m", family="qwen2-vl",
                       timeout_s=3, backoff_s=0.01)
    with pytest.raises(EngineError, match="cannot be reached"):
        eng.generate([ChatTurn("user", "hi")], max_new_tokens=5)


def test_sizes_follow_the_family():
    qwen25 = OpenAIEngine("http://x", "m", family="qwen2.5-vl")
    qwen1 = OpenAIEngine("http://x", "m", family="qwen-vl")
    assert qwen25.input_size(1000, 500) == (1008, 504)
    assert qwen1.input_size(1000, 500) == (1000, 500)
    assert qwen25.image_tokens(1000, 500) == 1008 * 504 // 784
    assert qwen1.image_tokens(1000, 500) == 256
