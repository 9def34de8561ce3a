"""Engine errors end to end: what a chat user reads when the model server fails.

A loopback OpenAI-compatible server misbehaves on purpose (refuses, is busy, fails,
breaks off a stream); a real ``qvl worker`` process runs the turn with the openai
engine; the core hands back the Reply. The user must read the short sentence from
the message table, in their language, never the generic apology or a traceback,
and the operator's log must name the failure.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from http.server import BaseHTTPRequestHandler

import pytest

from bots.core import Core
from qvl.messages import say
from qvl.protocol import Accepted, IncomingMessage, Reply
from tests.integration.test_openai_engine import FakeServer

PLATFORM = "test"


class ScriptedServer(FakeServer):
    """Answers POST /v1/chat/completions from a script of (status, headers, body) steps;
    the last step repeats. A body is a dict (sent as JSON) or a stream: a list of SSE
    ``data:`` payloads (dicts), optionally ending in one of

    - ``"cut"``: chunked transfer encoding, closed before the final chunk (a dropped connection);
    - ``"eof"``: no length, ``Connection: close``, closed without ``data: [DONE]``;

    else the stream ends with ``data: [DONE]``.
    """

    def answer(self, h: BaseHTTPRequestHandler, status: int, headers: dict, body) -> None:
        if isinstance(body, list):
            end = body[-1] if body and isinstance(body[-1], str) else "done"
            chunks = [f"data: {json.dumps(c)}\n\n".encode() for c in body if isinstance(c, dict)]
            h.send_response(status)
            h.send_header("Content-Type", "text/event-stream")
            if end == "cut":
                h.send_header("Transfer-Encoding", "chunked")
            h.send_header("Connection", "close")
            h.end_headers()
            for chunk in chunks:
                if end == "cut":
                    chunk = f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"
                h.wfile.write(chunk)
                h.wfile.flush()
            if end == "done":
                h.wfile.write(b"data: [DONE]\n\n")
            h.close_connection = True  # "cut" never sends the terminating 0-length chunk
            return
        super().answer(h, status, headers, body)


def error(message: str, kind: str = "invalid_request_error") -> dict:
    return {"error": {"message": message, "type": kind, "param": None, "code": None}}


def delta(text: str) -> dict:
    return {"choices": [{"index": 0, "delta": {"content": text}}]}


@pytest.fixture
def server():
    s = ScriptedServer()
    yield s
    s.close()


@pytest.fixture
def openai_worker(settings_for, worker_factory, server):
    """Settings for the openai engine on the scripted server, and a worker running them."""
    settings = settings_for(engine="openai", model="Qwen/Qwen2.5-VL-7B-Instruct",
                            family="qwen2.5-vl", openai_base_url=server.url)
    no_proxy = {"NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}
    worker = worker_factory(settings, extra_env=no_proxy)
    return settings, worker


def message(text: str, *, language: str | None = None) -> IncomingMessage:
    return IncomingMessage(platform=PLATFORM, chat_id="chan1", user_id="alice",
                           message_id=uuid.uuid4().hex, text=text, language=language)


async def _final_state(core: Core, job_id: int, timeout: float) -> str:
    last = None
    async with asyncio.timeout(timeout):
        async for status in core.watch(job_id, poll_s=0.2):
            last = status.state
    return last


def ask(settings, msg: IncomingMessage, *, via_stream: bool = False, timeout: float = 60) -> Reply:
    """Send ``msg`` through the core; the Reply the chat user gets once the turn ends.

    ``via_stream``: take it from ``core.replies(platform)``, as a frontend's delivery
    loop does; else claim it with ``core.take_reply(job_id)``.
    """

    async def scenario() -> Reply:
        core = Core(settings)
        try:
            accepted = await core.handle(msg)
            assert isinstance(accepted, Accepted), accepted
            if via_stream:
                async with asyncio.timeout(timeout):
                    async for reply in core.replies(PLATFORM, sweep_s=0.3):
                        assert reply.job_id == accepted.job_id
                        await core.sent(reply)
                        return reply
            assert await _final_state(core, accepted.job_id, timeout) == "failed"
            reply = await core.take_reply(accepted.job_id)
            assert reply is not None
            return reply
        finally:
            await core.close()

    return asyncio.run(scenario())


def assert_short_error(reply: Reply, language: str | None = None) -> None:
    """An error reply with one short readable sentence, not the apology, not a traceback."""
    assert reply.error is True
    assert reply.images == ()
    assert reply.text and reply.text != say("sorry", language) and reply.text != say("sorry", None)
    assert "Traceback" not in reply.text and 'File "' not in reply.text
    assert "Error:" not in reply.text  # no exception class names (ChunkedEncodingError: ...)
    assert "\n" not in reply.text and len(reply.text) < 300


def assert_logged(worker, job_id: int, *needles: str) -> None:
    """The worker's log names the failure for the operator (and did not crash)."""
    log = worker.log.read_text(errors="replace")
    lines = [line for line in log.splitlines() if f"job {job_id} failed: " in line]
    assert lines, f"no 'job {job_id} failed' line in the worker log:\n{worker.output()}"
    for needle in needles:
        assert any(needle in line for line in lines), (needle, lines)
    assert f"job {job_id} crashed" not in log


def test_400_shows_the_servers_reason_and_is_not_retried(openai_worker, server):
    settings, worker = openai_worker
    server.script = [(400, {}, error("max_tokens is too large"))]

    reply = ask(settings, message("what is in the picture?"), via_stream=True)

    assert_short_error(reply)
    assert reply.text == say("server_refused", None, detail="max_tokens is too large")
    assert reply.text == "The model server refused this request: max_tokens is too large"
    assert len(server.requests) == 1  # a 400 is final
    assert server.requests[0]["path"] == "/v1/chat/completions"
    assert_logged(worker, reply.job_id, "refused this request: max_tokens is too large")


def test_400_in_chinese_reads_the_chinese_sentence(openai_worker, server):
    settings, worker = openai_worker
    server.script = [(400, {}, error("max_tokens is too large"))]

    reply = ask(settings, message("图片里有什么？", language="zh"))

    assert_short_error(reply, "zh")
    assert reply.text == "模型服务拒绝了这个请求：max_tokens is too large"
    assert reply.text == say("server_refused", "zh", detail="max_tokens is too large")
    assert len(server.requests) == 1
    # the operator reads English whatever the user's language
    assert_logged(worker, reply.job_id, "The model server refused this request: max_tokens is too large")


def test_429_then_500s_are_retried_and_the_last_error_is_shown(openai_worker, server):
    settings, worker = openai_worker
    server.script = [(429, {"Retry-After": "0"}, error("Rate limit reached", "rate_limit_error")),
                     (500, {"Retry-After": "0"}, error("CUDA out of memory", "server_error"))]

    reply = ask(settings, message("describe it"))

    assert_short_error(reply)
    assert len(server.requests) > 1  # retried
    assert len(server.requests) == 3  # the engine's default: three attempts
    # the last answer was the 500: the user reads the server's failure, with its reason
    assert reply.text == say("server_failed", None, detail="500: CUDA out of memory")
    assert "failed" in reply.text and "CUDA out of memory" in reply.text
    assert reply.text != say("server_busy", None)
    assert_logged(worker, reply.job_id, "The model server failed (500: CUDA out of memory)")


def test_429_every_time_reads_busy(openai_worker, server):
    settings, worker = openai_worker
    server.script = [(429, {"Retry-After": "0"}, error("Rate limit reached", "rate_limit_error"))]

    reply = ask(settings, message("describe it"))

    assert_short_error(reply)
    assert len(server.requests) == 3
    assert reply.text == say("server_busy", None)
    assert_logged(worker, reply.job_id, "busy")


def test_stream_dropped_mid_answer_reads_broke_off(openai_worker, server):
    settings, worker = openai_worker
    server.script = [(200, {}, [delta("A red "), "cut"])]

    reply = ask(settings, message("what colour is it?"))

    assert_short_error(reply)
    assert reply.text == say("server_broke_off", None)
    assert "A red" not in reply.text  # the partial answer is not passed off as the answer
    assert len(server.requests) == 1
    assert_logged(worker, reply.job_id, "broke off", "cause: ")


def test_error_chunk_in_stream_reads_server_failed(openai_worker, server):
    settings, worker = openai_worker
    server.script = [(200, {}, [delta("A red "), error("engine died mid-generation", "server_error")])]

    reply = ask(settings, message("what colour is it?"))

    assert_short_error(reply)
    assert reply.text == say("server_failed", None, detail="engine died mid-generation")
    assert_logged(worker, reply.job_id, "engine died mid-generation")


def test_stream_closed_without_done_reads_broke_off(openai_worker, server):
    settings, worker = openai_worker
    server.script = [(200, {}, [delta("A red "), "eof"])]

    async def scenario() -> Reply:
        core = Core(settings)
        try:
            accepted = await core.handle(message("what colour is it?"))
            await _final_state(core, accepted.job_id, 60)
            return await core.take_reply(accepted.job_id)
        finally:
            await core.close()

    reply = asyncio.run(scenario())
    assert reply is not None
    assert_short_error(reply)
    assert reply.text == say("server_broke_off", None)
