"""The long chaos run: workers, frontends and Redis killed under load; prints the counts.

    python benchmarks/chaos.py                       # 1,000 turns on SQLite, Redis with AOF
    python benchmarks/chaos.py --turns 300 --no-redis-persistent
    python benchmarks/chaos.py --database postgresql://postgres@127.0.0.1:5432/postgres

200 conversations × 5 turns by default, 3 workers (a random one SIGKILLed every 3–6 s
and replaced), 2 frontends (SIGKILLed three times: once alone, once all of them while
the workers go on, once amid the backlog they come back to), a private redis-server
SIGKILLed and restarted twice (with ``--no-redis-persistent`` each restart loses the
queue, and the reconciler must send every pending turn again). With a PostgreSQL URL
the run gets a fresh database on that server, dropped afterwards. It stops by itself
(``--deadline``) and exits 1 when a turn was lost, stuck, duplicated without a
frontend kill to explain it, or delivered out of order. The suite's short version is
tests/integration/test_chaos.py; both run tests/chaos_support.py.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import random
import shutil
import sys
import tempfile
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.chaos_support import ChaosPlan, run_chaos  # noqa: E402


def _postgres_database(server_url: str):
    """A fresh database on ``server_url``'s server: (its URL, a function that drops it)."""
    import psycopg
    from sqlalchemy.engine import make_url

    from storage.db import normalize_url

    server = make_url(normalize_url(server_url))
    libpq = server.set(drivername="postgresql").render_as_string(hide_password=False)
    name = f"qvl_chaos_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(libpq, autocommit=True, connect_timeout=5) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')

    def drop() -> None:
        with psycopg.connect(libpq, autocommit=True, connect_timeout=5) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    return server.set(database=name).render_as_string(hide_password=False), drop


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--turns", type=int, default=1000, help="turns in all (default 1000)")
    parser.add_argument("--conversations", type=int, default=None,
                        help="conversations (default: turns / 5)")
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--frontends", type=int, default=2)
    parser.add_argument("--database", default="sqlite", help="sqlite, or a PostgreSQL server URL")
    parser.add_argument("--redis-persistent", action=argparse.BooleanOptionalAction, default=True,
                        help="Redis with its append-only file (default) or without")
    parser.add_argument("--slow", type=float, default=0.2, help="the engine's seconds per turn")
    parser.add_argument("--kill-every", type=float, nargs=2, default=(3.0, 6.0), metavar=("MIN", "MAX"),
                        help="seconds between worker kills (default 3 6)")
    parser.add_argument("--submit-s", type=float, default=None, help="send the turns over this long")
    parser.add_argument("--deadline", type=float, default=None, help="stop after this long (seconds)")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="another setting for every process, e.g. --set turn_timeout_s=10")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (logs) and say where")
    parser.add_argument("-v", "--verbose", action="store_true", help="print the events as they happen")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s: %(message)s")
    if not args.verbose:
        logging.getLogger("chaos").setLevel(logging.WARNING)

    conversations = args.conversations or max(1, args.turns // 5)
    per = max(1, round(args.turns / conversations))
    plan = ChaosPlan(
        conversations=conversations, turns=per, workers=args.workers, frontends=args.frontends,
        persistent=args.redis_persistent, slow_s=args.slow, worker_kill_every=tuple(args.kill_every),
        submit_s=args.submit_s if args.submit_s is not None else max(5.0, conversations * per / 50),
        redis_restarts_at=(0.25, 0.6), frontend_kills_at=(0.15,), backlog_at=0.45,
        deadline_s=args.deadline or 120 + conversations * per * args.slow * 1.5,
        seed=args.seed if args.seed is not None else random.randrange(1 << 30),
        settings=dict(item.split("=", 1) for item in args.set))

    from qvl.settings import Settings
    from storage.db import upgrade

    work = Path(tempfile.mkdtemp(prefix="qvl-chaos-"))
    try:
        drop = None
        if args.database == "sqlite":
            url = f"sqlite:///{work / 'qvl.sqlite3'}"
        else:
            url, drop = _postgres_database(args.database)
        try:
            upgrade(url)

            def make_settings(**overrides) -> Settings:
                return Settings(**(dict(database_url=url, data_dir=work / "data") | overrides))

            print(f"chaos: {plan.total} turns ({conversations} conversations × {per}), {plan.workers} workers, "
                  f"{plan.frontends} frontends, {'sqlite' if drop is None else 'postgresql'}, Redis "
                  f"{'with' if plan.persistent else 'without'} AOF, seed {plan.seed}"
                  + "".join(f", {k}={v}" for k, v in plan.settings.items()), flush=True)
            result = asyncio.run(run_chaos(plan, make_settings, work / "run"))
        finally:
            if drop is not None:
                drop()
        print(result.summary())
        problems = result.problems()
        if args.verbose or problems:
            print("\nevents:\n  " + "\n  ".join(result.events))
        if problems:
            print("\nPROBLEMS:\n  " + "\n  ".join(problems))
        if args.keep:
            print(f"\nlogs kept in {work / 'run'}")
        return 1 if problems else 0
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
