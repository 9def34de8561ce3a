"""``qvl bench serve``: many conversations at once, through the whole service.

Every turn goes core → SQL → queue → one ``qvl worker`` (its default pool and
concurrency, no flags) → SQL → delivery, as in production. Two engines:

- ``--engine openai``: the worker talks to a stand-in for a batching model server (vLLM,
  SGLang) started here: every request takes ``--latency`` seconds whatever the
  concurrency. Ideal wall time = turns per conversation × latency; efficiency = ideal /
  measured.
- ``--engine transformers``: a tiny random Qwen2-VL built here, every answer exactly
  ``--tokens`` tokens long. Speed-up = the N conversations one after another / all at once.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

from cli.bench import run_conversations
from qvl.queue import die_with_parent, start_embedded_redis
from qvl.settings import Settings


def bench_serve(settings: Settings, *, engine: str, conversations: list[int], turns: int,
                latency_s: float, tokens: int) -> int:
    """Run the benchmark for ``engine`` and print one row per number of conversations."""
    from storage.db import upgrade

    ns = f"{settings.namespace}serve{uuid.uuid4().hex[:8]}"
    settings = settings.model_copy(update={"namespace": ns, "rate_limit_turns": 0,
                                        "user_max_pending": 0, "space_max_pending": 0})
    server = None
    if not settings.redis_url:
        server, url = start_embedded_redis(settings)
        settings = settings.model_copy(update={"redis_url": url})
    upgrade(settings.resolved_database_url())
    with tempfile.TemporaryDirectory(prefix="qvl-bench-") as scratch:
        children: list[subprocess.Popen] = []
        try:
            if engine == "openai":
                port = _free_port()
                children.append(subprocess.Popen(
                    [sys.executable, "-m", "cli.bench_serve", "stand-in", str(port), str(latency_s)],
                    preexec_fn=die_with_parent()))
                settings = settings.model_copy(update={
                    "engine": "openai", "model": "stand-in", "openai_base_url": f"http://127.0.0.1:{port}/v1"})
            else:
                settings = settings.model_copy(update={
                    "engine": "transformers", "model": str(_tiny_model(Path(scratch), tokens)),
                    "max_new_tokens": tokens})
            children.append(_start_worker(settings, settings.data_dir / "bench-serve-worker.log"))
            print(_describe(settings, engine, turns, latency_s, tokens))
            rows = _openai_rows if engine == "openai" else _transformers_rows
            asyncio.run(rows(settings, conversations, turns, latency_s))
        finally:
            for child in reversed(children):
                child.terminate()
                child.wait(30)
            if server is not None:
                server.shutdown()
    return 0


def _describe(settings: Settings, engine: str, turns: int, latency_s: float, tokens: int) -> str:
    from worker.app import pool_for

    pool, concurrency = pool_for(settings)
    database = settings.resolved_database_url().split("@")[-1]
    what = (f"stand-in server answering in {latency_s:g} s at any concurrency" if engine == "openai"
            else f"tiny random Qwen2-VL, {tokens} tokens an answer, batches of up to {settings.batch_max}")
    return (f"database {database}; one worker: {pool} pool, {concurrency} turns in flight; engine {engine}: "
            f"{what}; {turns} turn(s) per conversation")


async def _warm_core(settings: Settings, conversations: list[int]):
    """One core for every row, as one running frontend: warm (its connections open, the
    worker started with its engine loaded) from a first round of the most conversations."""
    from bots.core import Core

    core = Core(settings, redis_url_=settings.redis_url)
    await run_conversations(settings, max(conversations), max(conversations), core=core)
    return core


async def _openai_rows(settings: Settings, conversations: list[int], turns: int, latency_s: float) -> None:
    core = await _warm_core(settings, conversations)
    print(f"{'conversations':>13} {'turns':>6} {'ideal s':>8} {'measured s':>11} {'efficiency':>11} {'turns/s':>8}")
    for n in conversations:
        result = await run_conversations(settings, n, n * turns, core=core)
        ideal = turns * latency_s
        print(f"{n:>13} {n * turns:>6} {ideal:>8.2f} {result.wall_s:>11.2f} {ideal / result.wall_s:>11.2f} "
              f"{n * turns / result.wall_s:>8.1f}")
    await core.close()


async def _transformers_rows(settings: Settings, conversations: list[int], turns: int, _latency: float) -> None:
    core = await _warm_core(settings, conversations)
    print(f"{'conversations':>13} {'one after another s':>20} {'all at once s':>14} {'speed-up':>9}")
    for n in conversations:
        one_by_one = 0.0
        for _ in range(n):
            one_by_one += (await run_conversations(settings, 1, turns, core=core)).wall_s
        together = (await run_conversations(settings, n, n * turns, core=core)).wall_s
        print(f"{n:>13} {one_by_one:>20.2f} {together:>14.2f} {one_by_one / together:>8.2f}x")
    await core.close()


def _tiny_model(directory: Path, tokens: int) -> Path:
    """The tiny Qwen2-VL, every answer exactly ``tokens`` long (a random model stops at
    random lengths otherwise, and its timings would not compare)."""
    from worker.engines.tiny import make_tiny

    path = make_tiny(directory / "tiny", "qwen2-vl")
    config_file = path / "generation_config.json"
    config = json.loads(config_file.read_text())
    config.update(min_new_tokens=tokens, max_new_tokens=tokens)
    config_file.write_text(json.dumps(config))
    return path


def _start_worker(settings: Settings, log_path: Path) -> subprocess.Popen:
    """``qvl worker`` with no flags: the pool and concurrency are the engine's defaults."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("QVL_")}
    env |= settings.as_env() | {"HF_HUB_OFFLINE": "1"}
    log_path.parent.mkdir(parents=True, exist_ok=True)
    print(f"worker log: {log_path}")
    log = log_path.open("wb")
    return subprocess.Popen([sys.executable, "-m", "cli", "worker"], env=env, stdout=log, stderr=subprocess.STDOUT,
                            preexec_fn=die_with_parent())  # a killed benchmark leaves no worker behind


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- a stand-in for a batching model server --------------------------------------------


def stand_in(port: int, latency_s: float) -> None:
    """An OpenAI-compatible chat-completions server that answers every request in
    ``latency_s`` seconds, streamed in a few pieces, however many arrive at once (as a
    batching server does while it is far from full)."""
    from aiohttp import web

    pieces = 4

    async def completions(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        words = [f"word{i} " for i in range(pieces)]
        if not body.get("stream"):
            await asyncio.sleep(latency_s)
            return web.json_response({"choices": [{"index": 0, "finish_reason": "stop",
                                                   "message": {"role": "assistant", "content": "".join(words)}}]})
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for i, word in enumerate(words):
            await asyncio.sleep(latency_s / pieces)
            chunk = {"choices": [{"index": 0, "delta": {"content": word},
                                  "finish_reason": "stop" if i == pieces - 1 else None}]}
            await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
        await response.write(b"data: [DONE]\n\n")
        return response

    app = web.Application()
    app.router.add_post("/v1/chat/completions", completions)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


if __name__ == "__main__" and sys.argv[1:2] == ["stand-in"]:
    stand_in(int(sys.argv[2]), float(sys.argv[3]))
