"""``qvl up`` and ``qvl worker``: the service on embedded defaults, and a bare worker."""

from __future__ import annotations

import asyncio
import logging
import os
import threading

from qvl.errors import UserFacingError
from qvl.models import EngineKind, engine_and_family
from qvl.queue import embedded_marker, start_embedded_redis
from qvl.settings import Settings

log = logging.getLogger(__name__)


def up(settings: Settings) -> int:
    """Migrate, start Redis if none is configured, check the model, run a worker here.

    Returns the worker's exit status. Stops at once, with a message saying how
    to get the weights, when the model cannot be had.
    """
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    prepare(settings)  # before anything starts: no weights, no service
    server = None
    url = settings.redis_url
    if not url:
        server, url = start_embedded_redis(settings)
    engine, _ = engine_and_family(settings)
    serving = "engine echo (no model)" if engine == EngineKind.ECHO else f"model {settings.model}"
    print(f"qvl is up: {serving}, "
          f"database {_safe(settings.resolved_database_url())}, Redis {_safe(url)}")
    print("Talk to it from another terminal: qvl chat PICTURE.jpg --text 'What is in this picture?'")
    start_frontends(settings, url)
    try:
        return run_worker(settings, url)
    finally:
        if server is not None:
            embedded_marker(settings).unlink(missing_ok=True)
            server.shutdown()


def prepare(settings: Settings) -> None:
    """Migrate the database; check the model can run here and its weights are at hand."""
    from storage.db import upgrade

    upgrade(settings.resolved_database_url())
    from worker.engines import fetch_model

    fetch_model(settings)


def start_frontends(settings: Settings, url: str) -> list[threading.Thread]:
    """Start each configured chat frontend in a thread of its own (the worker keeps the main one)."""
    threads = []
    if settings.discord_token:
        from bots.discord.bot import run as run_discord

        threads.append(_in_thread("discord", run_discord(settings, redis_url=url)))
        print("Discord frontend starting")
    if settings.wechat_endpoint:
        from bots.wechat.bot import run as run_wechat

        threads.append(_in_thread("wechat", run_wechat(settings, redis_url=url)))
        print("WeChat frontend starting")
    return threads


def _in_thread(name: str, coro) -> threading.Thread:
    def main() -> None:
        try:
            asyncio.run(coro)
        except UserFacingError as exc:
            log.error("%s frontend stopped: %s", name, exc.message)
        except Exception:
            log.exception("%s frontend crashed", name)

    thread = threading.Thread(target=main, name=f"qvl-{name}", daemon=True)
    thread.start()
    return thread


def run_worker(settings: Settings, url: str, *, concurrency: int = 1, pool: str = "solo", app=None) -> int:
    """Run a Celery worker for the turn queue in this process (blocks)."""
    from celery.signals import setup_logging

    if app is None:
        from worker.app import create_app

        app = create_app(settings, url)
    # The command line configured logging already; without a receiver Celery adds a second
    # root handler and every line is written twice.
    setup_logging.connect(_keep_logging, weak=False)
    argv = ["worker", f"--pool={pool}", f"--concurrency={concurrency}", "-Q", settings.queue,
            "--loglevel=INFO", "--without-gossip", "--without-mingle", "-n", f"qvl@{os.uname().nodename}"]
    try:
        app.worker_main(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


def _keep_logging(**_) -> None:
    """Receiver of Celery's ``setup_logging``: keep the logging the command line set up."""


def _safe(url: str) -> str:
    """A URL fit for a log line: no password."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url


__all__ = ["prepare", "run_worker", "start_frontends", "up"]
