"""A crowd at once: one `qvl worker` (no flags) keeps a batching model server busy, loses
no turn when killed with many in flight, and one person's questions do not hold back
another's first. Real worker processes, Redis, SQLite and PostgreSQL; the model server
is a loopback stand-in that speaks chat completions and counts what is in flight."""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from sqlalchemy import select

from bots.core import Core
from qvl.protocol import Accepted, IncomingMessage, Reply, Where
from storage.models import Job

PLATFORM = "crowd"
NO_PROXY = {"NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}


class BatchingServer:
    """Answers every chat-completions request after ``hold_s`` (or, while ``held``, only
    once released), however many are in flight, as a batching server far from full does.
    The answer names the question: "answer to <last user text>"."""

    def __init__(self, hold_s: float = 1.0):
        self.hold_s = hold_s
        self.held = threading.Event()  # set: requests wait for `release`
        self.release = threading.Event()
        self.lock = threading.Lock()
        self.in_flight = self.peak = self.requests = 0
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_port}/v1"
        threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True).start()

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                question = body["messages"][-1]["content"]
                if isinstance(question, list):
                    question = " ".join(p.get("text", "") for p in question)
                with server.lock:
                    server.requests += 1
                    server.in_flight += 1
                    server.peak = max(server.peak, server.in_flight)
                try:
                    if server.held.is_set():
                        server.release.wait(60)
                    else:
                        server.release.wait(server.hold_s)
                    self._stream(f"answer to {question}")
                except OSError:
                    pass  # the worker that asked is gone
                finally:
                    with server.lock:
                        server.in_flight -= 1

            def _stream(self, text: str) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Connection", "close")
                self.end_headers()
                for piece in (text[: len(text) // 2], text[len(text) // 2:]):
                    chunk = {"choices": [{"index": 0, "delta": {"content": piece}}]}
                    self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                self.wfile.write(b"data: [DONE]\n\n")

        return Handler

    def close(self):
        self.release.set()
        self.httpd.shutdown()


@pytest.fixture
def server():
    s = BatchingServer()
    yield s
    s.close()


@pytest.fixture
def crowd_settings(settings_for, server):
    # A dead worker is noticed in seconds, so that the kill test runs in seconds.
    return settings_for(engine="openai", model="Qwen/Qwen2.5-VL-7B-Instruct", family="qwen2.5-vl",
                        openai_base_url=server.url, rate_limit_turns=0, worker_lost_s=3, heartbeat_s=0.5,
                        reconcile_interval_s=1, redispatch_s=1)


def message(conversation: int, text: str, *, user: str | None = None, space: str | None = None) -> IncomingMessage:
    where = Where(space_id=space, channel_id=f"chan{conversation}") if space else Where()
    return IncomingMessage(platform=PLATFORM, chat_id=f"chan{conversation}", user_id=user or f"user{conversation}",
                           message_id=uuid.uuid4().hex, text=text, where=where)


def wait_until(condition, *, timeout: float, message) -> None:
    """Poll ``condition`` (a cheap in-memory check) until true; fail with ``message()``."""
    import time

    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(message())
        time.sleep(0.05)


async def crowd(core: Core, conversations: int, turns: int, *, timeout: float = 90) -> dict[int, list[Reply]]:
    """Every conversation asks ``turns`` questions, each after the answer to the one
    before; the delivery loop hands the replies back. Returns each conversation's replies."""
    delivered: dict[int, asyncio.Future] = {}
    early: dict[int, Reply] = {}

    async def send(reply: Reply) -> None:
        await core.sent(reply)  # acknowledged before the conversation goes on (as a frontend does)
        future = delivered.pop(reply.job_id, None)
        if future is None:
            early[reply.job_id] = reply
        else:
            future.set_result(reply)

    async def conversation(n: int) -> list[Reply]:
        replies = []
        for t in range(turns):
            accepted = await core.handle(message(n, f"c{n} t{t}"))
            assert isinstance(accepted, Accepted), accepted
            if accepted.job_id in early:
                replies.append(early.pop(accepted.job_id))
                continue
            delivered[accepted.job_id] = asyncio.get_running_loop().create_future()
            replies.append(await delivered[accepted.job_id])
        return replies

    delivery = asyncio.create_task(core.serve_replies(PLATFORM, send))
    try:
        async with asyncio.timeout(timeout):
            results = await asyncio.gather(*(conversation(n) for n in range(conversations)))
    finally:
        delivery.cancel()
    return dict(enumerate(results))


def test_one_worker_keeps_a_batching_server_busy(crowd_settings, worker_factory, server):
    """16 conversations at once: the server sees them all in flight together (before,
    it never saw more than one), and each answer reaches its own conversation, in order."""
    worker_factory(crowd_settings, extra_env=NO_PROXY)  # no flags: the engine's concurrency

    async def scenario():
        core = Core(crowd_settings)
        try:
            return await crowd(core, 16, 2)
        finally:
            await core.close()

    replies = asyncio.run(scenario())

    assert server.peak >= 12, f"at most {server.peak} turns were in flight at once"
    for n, got in replies.items():
        assert [r.text for r in got] == [f"answer to c{n} t0", f"answer to c{n} t1"]
        assert all(not r.error for r in got)


def test_a_worker_killed_with_many_turns_in_flight_loses_none(crowd_settings, worker_factory, server,
                                                             session_factory):
    """SIGKILL the worker while 8 turns are inside the model server: another worker redoes
    each of them once, and each reply is delivered once."""
    server.held.set()
    first = worker_factory(crowd_settings, extra_env=NO_PROXY)

    async def scenario():
        core = Core(crowd_settings)
        try:
            task = asyncio.create_task(crowd(core, 8, 1, timeout=120))
            await asyncio.to_thread(wait_until, lambda: server.in_flight == 8, timeout=60,
                                    message=lambda: f"{server.in_flight} of 8 turns reached the server")
            first.kill()
            server.held.clear()
            server.release.set()  # the dead worker's requests end; later ones answer at once
            worker_factory(crowd_settings, extra_env=NO_PROXY)
            return await task
        finally:
            await core.close()

    replies = asyncio.run(scenario())

    assert {n: [r.text for r in got] for n, got in replies.items()} == {n: [f"answer to c{n} t0"] for n in range(8)}
    with session_factory() as session:
        jobs = session.scalars(select(Job).where(Job.platform == PLATFORM)).all()
    assert len(jobs) == 8
    assert [j.attempts for j in jobs] == [2] * 8  # each redone once
    assert all(j.delivered_at is not None and j.delivery_attempts == 1 for j in jobs)  # each delivered once
    assert server.requests == 16


def test_one_persons_questions_do_not_hold_back_anothers_first(settings_for, worker_factory, server):
    """Alice asks six questions at once: three wait their turn, three are refused with a
    short reason. Bob's first question is answered while Alice's still wait."""
    server.hold_s = 1.0
    settings = settings_for(engine="openai", model="Qwen/Qwen2.5-VL-7B-Instruct", family="qwen2.5-vl",
                            openai_base_url=server.url, rate_limit_turns=0, user_max_pending=3)
    worker_factory(settings, extra_env=NO_PROXY)

    async def scenario():
        core = Core(settings)
        order: list[str] = []
        try:
            alice = [await core.handle(message(1, f"alice {i}", user="alice")) for i in range(6)]
            bob = await core.handle(message(2, "bob 0", user="bob"))

            async def send(reply: Reply) -> None:
                order.append(reply.text)

            delivery = asyncio.create_task(core.serve_replies(PLATFORM, send))
            try:
                await asyncio.to_thread(wait_until, lambda: len(order) == 4, timeout=60,
                                        message=lambda: f"replies so far: {order}")
            finally:
                delivery.cancel()
            return alice, bob, order
        finally:
            await core.close()

    alice, bob, order = asyncio.run(scenario())

    assert all(isinstance(a, Accepted) for a in alice[:3]) and isinstance(bob, Accepted)
    for refused in alice[3:]:
        assert isinstance(refused, Reply) and refused.key == "over_share"
        assert "3 question(s) waiting" in refused.text and len(refused.text) < 200
    assert order.index("answer to bob 0") < order.index("answer to alice 2")


def test_a_busy_group_is_told_to_wait(settings_for):
    """No worker runs: turns stay queued. A group at its cap refuses the next question,
    in the asker's language; a direct chat is not counted against the group."""
    settings = settings_for(rate_limit_turns=0, user_max_pending=0, space_max_pending=2)

    async def scenario():
        core = Core(settings)
        try:
            first = [await core.handle(message(n, "hello", space="g1")) for n in range(2)]
            third = await core.handle(message(3, "你好", space="g1"))
            direct = await core.handle(message(4, "hello"))
            other_group = await core.handle(message(5, "hello", space="g2"))
            return first, third, direct, other_group
        finally:
            await core.close()

    first, third, direct, other_group = asyncio.run(scenario())

    assert all(isinstance(a, Accepted) for a in first)
    assert isinstance(third, Reply) and third.key == "over_share" and "本群已有 2 个问题" in third.text
    assert isinstance(direct, Accepted) and isinstance(other_group, Accepted)
