"""Discord: time from a message event to the first visible feedback, and what the adapter
adds to a turn over the core alone, both measured in the same run.

    REDIS_URL=redis://127.0.0.1:6379/0 DATABASE_URL=postgresql://postgres@127.0.0.1:5432/test \
        python benchmarks/discord_feedback.py [--turns 60]

Runs the real discord.py client against the loopback fake of Discord's gateway and REST API
(tests/fakes/discord_server.py), the real core and Redis, and a `qvl worker` with the echo
engine (it answers at once, so what is measured is everything but the model):
  - feedback: MESSAGE_CREATE sent by the fake → the bot's typing request reaches the fake;
  - Discord turn: MESSAGE_CREATE → the bot's reply reaches the fake;
  - core turn: core.handle() → the reply yielded by core.replies() (no Discord at all).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests.fakes

from bots.core import Core  # noqa: E402
from bots.discord.bot import DiscordFrontend  # noqa: E402
from cli.bench import _qvl_turns, _start_worker  # noqa: E402
from qvl.queue import start_embedded_redis  # noqa: E402
from qvl.settings import Settings  # noqa: E402
from storage.db import upgrade  # noqa: E402
from tests.fakes.discord_server import FakeDiscord, running  # noqa: E402


def ms(samples: list[float]) -> str:
    q = statistics.quantiles(samples, n=100)
    return f"p50 {statistics.median(samples):7.2f} ms   p99 {q[98]:7.2f} ms"


async def discord_turns(settings: Settings, turns: int) -> tuple[list[float], list[float]]:
    fake = await FakeDiscord().start()
    feedback, whole = [], []
    try:
        with fake.patch_discord():
            core = Core(settings)
            bot = DiscordFrontend(settings, core, guild_ready_timeout=0.1)
            w = fake.world
            async with running(bot):
                for i in range(turns + 3):
                    typing_before, sent_before = len(fake.typing), len(fake.sent)
                    start = time.monotonic()
                    await fake.user_message(w.general, w.alice, f"<@{fake.bot_id}> question {i}",
                                            mentions=[fake.bot_id])
                    await fake.wait_for(lambda n=typing_before: len(fake.typing) > n, timeout=30, what="typing")
                    await fake.wait_for_sent(sent_before + 1, timeout=30)
                    done = time.monotonic()
                    if i >= 3:  # warm-up
                        feedback.append((fake.typing[typing_before].at - start) * 1000)
                        whole.append((done - start) * 1000)
            await core.close()
    finally:
        await fake.stop()
    return feedback, whole


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--turns", type=int, default=60)
    args = parser.parse_args()
    base = Settings()
    ns = f"qvlbenchdiscord{uuid.uuid4().hex[:6]}"
    settings = base.model_copy(update={"namespace": ns, "engine": "echo", "rate_limit_turns": 0,
                                       "stream_interval_s": 60.0, "discord_queue_notice_s": 60.0})
    server = None
    if not settings.redis_url:
        server, url = start_embedded_redis(settings)
        settings = settings.model_copy(update={"redis_url": url})
    upgrade(settings.resolved_database_url())
    worker = _start_worker(settings)
    try:
        feedback, whole = asyncio.run(discord_turns(settings, args.turns))
        core_only = asyncio.run(_qvl_turns(settings, settings.redis_url, 1, args.turns))
    finally:
        worker.terminate()
        worker.wait(30)
        if server is not None:
            server.shutdown()
    adapter = statistics.median(whole) - statistics.median(core_only)
    print(f"{args.turns} turns, one at a time, echo engine; database "
          f"{settings.resolved_database_url().split('@')[-1]}")
    print(f"  message event → first feedback (typing)   {ms(feedback)}")
    print(f"  Discord turn (event → reply at Discord)   {ms(whole)}")
    print(f"  core turn (handle → reply, no Discord)     {ms(core_only)}")
    print(f"  adapter's share of a turn (p50 difference): {adapter:.2f} ms")


if __name__ == "__main__":
    main()
