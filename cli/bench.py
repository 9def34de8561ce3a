"""``qvl bench queue``: what qvl adds to a turn, beside a raw Celery round trip.

Both are measured in the same run, on the same Redis, through the same worker
processes: the raw round trip is a task that only publishes a token back; a qvl
turn goes core → SQL → queue → worker pipeline (with the echo engine, which
answers at once) → SQL → reply stream → core. The difference is qvl's overhead.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass

import redis.asyncio as aioredis

from qvl.protocol import IncomingMessage
from qvl.queue import die_with_parent, make_celery, start_embedded_redis
from qvl.settings import Settings


def bench_queue(settings: Settings, *, turns: int, concurrency: list[int]) -> int:
    """Run the benchmark and print p50/p99 for each concurrency; return an exit status."""
    from storage.db import upgrade

    ns = f"{settings.namespace}bench{uuid.uuid4().hex[:8]}"
    settings = settings.model_copy(update={"namespace": ns, "engine": "echo", "stream_interval_s": 60.0,
                                        "rate_limit_turns": 0, "user_max_pending": 0, "space_max_pending": 0})
    server = None
    url = settings.redis_url
    if not url:
        server, url = start_embedded_redis(settings)
        settings = settings.model_copy(update={"redis_url": url})
    upgrade(settings.resolved_database_url())
    worker = _start_worker(settings)
    print(f"database {settings.resolved_database_url().split('@')[-1]}, Redis {url.split('@')[-1]}, "
          f"worker: 2 prefork processes, engine: echo (answers at once), {turns} turns each")
    print(f"{'conversations':>13} {'':>24} {'p50 ms':>8} {'p99 ms':>8}")
    try:
        for n in concurrency:
            raw = asyncio.run(_raw_round_trips(settings, url, n, turns))
            ours = asyncio.run(_qvl_turns(settings, url, n, turns))
            _row(n, "raw Celery round trip", raw)
            _row(n, "qvl turn (engine ~0 ms)", ours)
            ratio = statistics.median(ours) / statistics.median(raw)
            print(f"{n:>13} {'ratio p50 qvl / raw':>24} {ratio:>8.2f}x")
    finally:
        worker.terminate()
        worker.wait(30)
        asyncio.run(_cleanup(url, ns))
        if server is not None:
            server.shutdown()
    return 0


def _row(n: int, label: str, samples: list[float]) -> None:
    q = statistics.quantiles(samples, n=100)
    print(f"{n:>13} {label:>24} {statistics.median(samples):>8.2f} {q[98]:>8.2f}")


PING = "qvl.bench.ping"


def bench_app(settings: Settings, url: str):
    """The worker's app plus a bare ``ping`` task (publish a token back): the raw Celery
    round trip the benchmark measures qvl against. Not part of the production app."""
    import redis

    from worker.app import create_app

    app = create_app(settings, url)
    client = redis.Redis.from_url(url)

    @app.task(name=PING)
    def ping(channel: str, token: str) -> None:
        client.publish(channel, token)

    return app


def _start_worker(settings: Settings) -> subprocess.Popen:
    env = os.environ | settings.as_env()
    process = subprocess.Popen([sys.executable, "-m", "cli.bench", "worker"], env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, preexec_fn=die_with_parent())
    asyncio.run(_raw_round_trips(settings, settings.redis_url, 1, 4, timeout=60))  # warm, and wait for it
    return process


async def _raw_round_trips(settings: Settings, url: str, n: int, turns: int, timeout: float = 120) -> list[float]:
    celery = make_celery(settings, url)
    redis = aioredis.Redis.from_url(url)
    channel = f"{settings.namespace}:bench:{uuid.uuid4().hex}"
    waiting: dict[str, asyncio.Future] = {}
    pubsub = redis.pubsub()
    await pubsub.subscribe(channel)

    async def listen():
        async for message in pubsub.listen():
            if message["type"] == "message":
                future = waiting.pop(message["data"].decode(), None)
                if future and not future.done():
                    future.set_result(time.perf_counter())

    async def one(token: str) -> float:
        future = asyncio.get_running_loop().create_future()
        waiting[token] = future
        start = time.perf_counter()
        await asyncio.to_thread(celery.send_task, PING, kwargs={"channel": channel, "token": token},
                                queue=settings.queue)
        return (await future - start) * 1000

    listener = asyncio.create_task(listen())
    try:
        async with asyncio.timeout(timeout):
            return await _conversations(n, turns, lambda conv, i: one(f"{conv}-{i}"))
    finally:
        listener.cancel()
        await pubsub.aclose()
        await redis.aclose()


@dataclass(frozen=True)
class Run:
    latencies_ms: list[float]  # each turn, from handing it to the core to its delivery
    wall_s: float  # the first turn's start to the last one's delivery


async def _qvl_turns(settings: Settings, url: str, n: int, turns: int) -> list[float]:
    return (await run_conversations(settings.model_copy(update={"redis_url": url}), n, turns)).latencies_ms


async def run_conversations(settings: Settings, n: int, turns: int, *, core=None) -> Run:
    """``n`` conversations at once, asking ``turns`` turns in all (each its share, one
    after another) through a core and its delivery loop, as a frontend would: ``core``'s,
    warm from earlier runs as a running frontend's is, or a new one."""
    from bots.core import Core

    own = core is None
    core = core or Core(settings, redis_url_=settings.redis_url)
    platform = f"bench{uuid.uuid4().hex[:6]}"
    waiting: dict[int, asyncio.Future] = {}
    early: dict[int, float] = {}

    async def send(reply) -> None:  # a frontend's delivery: the core acknowledges it after
        now = time.perf_counter()
        future = waiting.pop(reply.job_id, None)
        if future is None:
            early[reply.job_id] = now
        elif not future.done():
            future.set_result(now)

    async def deliver():
        await core.serve_replies(platform, send)

    async def one(conv: int, i: int) -> float:
        start = time.perf_counter()
        accepted = await core.handle(IncomingMessage(
            platform=platform, chat_id=f"c{conv}", user_id=f"u{conv}",
            message_id=uuid.uuid4().hex, text=f"turn {i}"))
        if accepted.job_id in early:
            done = early.pop(accepted.job_id)
        else:
            future = asyncio.get_running_loop().create_future()
            waiting[accepted.job_id] = future
            done = await future
        return (done - start) * 1000

    delivery = asyncio.create_task(deliver())
    await asyncio.sleep(0.1)
    try:
        async with asyncio.timeout(600):
            started = time.perf_counter()
            latencies = await _conversations(n, turns, one)
            return Run(latencies, time.perf_counter() - started)
    finally:
        delivery.cancel()
        if own:
            await core.close()


async def _conversations(n: int, turns: int, one) -> list[float]:
    """``n`` conversations at once, each asking its share of ``turns`` one after another."""
    async def conversation(conv: int) -> list[float]:
        return [await one(conv, i) for i in range(max(1, turns // n))]

    results = await asyncio.gather(*(conversation(c) for c in range(n)))
    return [t for r in results for t in r]


async def _cleanup(url: str, ns: str) -> None:
    redis = aioredis.Redis.from_url(url)
    async for key in redis.scan_iter(f"{ns}:*"):
        await redis.delete(key)
    await redis.aclose()


def _worker_main() -> int:
    """``python -m cli.bench worker``: the benchmark's worker (2 prefork processes, with ping)."""
    from cli.service import run_worker
    from qvl.queue import redis_url

    settings = Settings()
    url = redis_url(settings)
    return run_worker(settings, url, concurrency=2, pool="prefork", app=bench_app(settings, url))


if __name__ == "__main__" and sys.argv[1:] == ["worker"]:
    sys.exit(_worker_main())
