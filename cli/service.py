"""``qvl up`` and ``qvl worker``: the service on embedded defaults, and a bare worker."""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import IO, Any

from qvl.errors import UserFacingError
from qvl.models import EngineKind, engine_and_family
from qvl.queue import check_redis, embedded_marker, redact_url, start_embedded_redis
from qvl.settings import Settings

log = logging.getLogger(__name__)


def up(settings: Settings) -> int:
    """Migrate, start Redis if none is configured, check the model, run a worker here.

    Returns the worker's exit status. Stops at once, with one line naming the setting,
    when another ``qvl up`` holds the data directory, when ``REDIS_URL`` or the database
    cannot be reached, or when the model cannot be had (saying how to get the weights).
    """
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    lock = lock_data_dir(settings.data_dir)  # held until this process ends, however it ends
    try:
        if settings.redis_url:
            check_redis(settings.redis_url)  # before migrating or fetching gigabytes of weights
        prepare(settings)  # before anything starts: no weights, no service
        frontends = configured_frontends(settings)
        server = None
        url = settings.redis_url
        if not url:
            server, url = start_embedded_redis(settings, take_over=True)
        supervisors: list[Supervisor] = []
        try:
            _print_parts(settings, url, server, frontends)
            if "Web" in frontends:
                from bots.web.auth import make_login_link

                print(f"Open the page (this link signs you in once): {make_login_link(settings, url)}")
            print("Talk to it from another terminal: qvl chat PICTURE.jpg --text 'What is in this picture?'")
            supervisors = start_frontends(settings, url, frontends)
            return run_worker(settings, url)
        finally:
            for supervisor in supervisors:
                supervisor.stop()
            if server is not None:
                embedded_marker(settings).unlink(missing_ok=True)
                server.shutdown()
    finally:
        lock.close()


def lock_data_dir(data_dir: Path) -> IO[str]:
    """Take ``data_dir``'s ``qvl-up.lock`` (an exclusive ``flock``), or refuse at once.

    The lock lasts as long as the returned file is open, at most as long as this
    process: the system drops it when the process dies, even by SIGKILL.
    """
    path = data_dir / "qvl-up.lock"
    handle = path.open("a+")
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip()
        handle.close()
        who = f" (pid {holder})" if holder.isdigit() else ""
        raise UserFacingError(
            f"another `qvl up`{who} is already running on QVL_DATA_DIR={data_dir}: stop it first, "
            "or give this one a QVL_DATA_DIR of its own") from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle


def database_setting(settings: Settings) -> str | None:
    """The setting that chose the database, for messages (None: the default SQLite file)."""
    return "DATABASE_URL" if settings.database_url else None


def prepare(settings: Settings) -> None:
    """Migrate the database; check the model can run here and its weights are at hand."""
    from storage.db import upgrade

    upgrade(settings.resolved_database_url(), setting=database_setting(settings))
    from worker.engines import fetch_model

    fetch_model(settings)


Frontend = Callable[..., Coroutine[Any, Any, None]]


def configured_frontends(settings: Settings) -> dict[str, Frontend]:
    """The chat frontends the settings ask for, by name; a missing extra stops ``qvl up`` here."""
    frontends: dict[str, Frontend] = {}
    if settings.discord_token:
        from bots.discord.bot import run as run_discord

        frontends["Discord"] = run_discord
    if settings.wechat_endpoint:
        try:
            from bots.wechat.bot import run as run_wechat
        except ImportError as exc:
            raise UserFacingError(
                f"WECHATY_PUPPET_SERVICE_ENDPOINT is set but the WeChat frontend cannot be loaded "
                f"({exc}): pip install -e '.[wechat]'") from exc
        frontends["WeChat"] = run_wechat
    if settings.wecom_bot_id and settings.wecom_secret:
        try:
            from bots.wecom.bot import run as run_wecom
        except ImportError as exc:
            raise UserFacingError(
                f"WECOM_BOT_ID is set but the WeCom frontend cannot be loaded ({exc}): pip install -e '.[wecom]'"
            ) from exc
        frontends["WeCom"] = run_wecom
    if settings.web_enabled:
        from bots.web.app import check_web_exposure
        from bots.web.app import run as run_web

        check_web_exposure(settings)  # beyond loopback without a key: stop here, not retry forever
        frontends["Web"] = run_web
    return frontends


def start_frontends(settings: Settings, url: str,
                    frontends: dict[str, Frontend] | None = None) -> list[Supervisor]:
    """Start each configured chat frontend in a thread of its own, supervised (the worker
    keeps the main thread): one that fails is started again with backoff."""
    if frontends is None:
        frontends = configured_frontends(settings)
    supervisors = []
    for name, run in frontends.items():
        supervisor = Supervisor(name, lambda run=run: run(settings, redis_url=url))
        supervisor.start()
        supervisors.append(supervisor)
    return supervisors


class Supervisor:
    """Runs one frontend for good, in a thread of its own.

    Each time the frontend's coroutine fails (or ends), one line is logged with the
    reason (the traceback only with ``-v``) and it is started again after a pause:
    1 s, doubling up to 60 s, and back to 1 s once a run lasted longer than the longest
    pause. ``sleep`` and ``clock`` are there for tests; the default sleep ends early on
    :meth:`stop`.
    """

    def __init__(self, name: str, frontend: Callable[[], Coroutine[Any, Any, Any]], *,
                 first_delay_s: float = 1.0, max_delay_s: float = 60.0,
                 sleep: Callable[[float], object] | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.name, self.frontend = name, frontend
        self.first_delay_s, self.max_delay_s = first_delay_s, max_delay_s
        self._stopped = threading.Event()
        self.sleep = sleep or self._stopped.wait
        self.clock = clock
        self.state = "starting"
        self.failures = 0
        self.thread: threading.Thread | None = None

    def run(self) -> None:
        """Run, and run again after each failure, until :meth:`stop` (blocks)."""
        delay = self.first_delay_s
        while not self._stopped.is_set():
            self.state = "running"
            started = self.clock()
            try:
                asyncio.run(self.frontend())
                reason, exc_info = "it stopped", None
            except UserFacingError as exc:
                reason, exc_info = exc.message, exc
            except Exception as exc:  # one line; the traceback with -v
                first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
                reason, exc_info = f"{type(exc).__name__}: {first}" if first else type(exc).__name__, exc
            if self._stopped.is_set():
                break
            if self.clock() - started > self.max_delay_s:
                delay = self.first_delay_s  # it ran for a while: this is a new failure
            self.failures += 1
            self.state = f"retrying in {delay:g} s"
            log.warning("%s frontend failed: %s; retrying in %g s", self.name, reason, delay,
                        exc_info=exc_info if log.isEnabledFor(logging.DEBUG) else None)
            self.sleep(delay)
            delay = min(delay * 2, self.max_delay_s)
        self.state = "stopped"

    def start(self) -> threading.Thread:
        self.thread = threading.Thread(target=self.run, name=f"qvl-{self.name.lower()}", daemon=True)
        self.thread.start()
        return self.thread

    def stop(self) -> None:
        """No new start after the current run (which ends with the process)."""
        self._stopped.set()


def _print_parts(settings: Settings, url: str, server, frontends: dict[str, Frontend]) -> None:
    """What ``qvl up`` runs, one part a line."""
    engine, _ = engine_and_family(settings)
    serving = "engine echo (no model)" if engine == EngineKind.ECHO else f"model {settings.model}"
    from storage.db import redact_database_url

    database = redact_database_url(settings.resolved_database_url())
    if server is not None:
        redis = f"embedded, {url} (append-only, files in {server.directory})"
    else:
        redis = f"REDIS_URL={redact_url(url)}"
    print(f"qvl is up: {serving}")
    print(f"  database  {database}")
    print(f"  Redis     {redis}")
    print(f"  worker    starting here (queue {settings.queue})")
    for name in frontends:
        print(f"  {name:<9} starting (if it fails: retried after 1 s, doubling to 60 s)")
    if not frontends:
        print("  frontends none (set DISCORD_TOKEN, WECOM_BOT_ID and WECOM_BOT_SECRET, "
              "or WECHATY_PUPPET_SERVICE_ENDPOINT)")


def run_worker(settings: Settings, url: str, *, concurrency: int | None = None, pool: str | None = None,
               app=None) -> int:
    """Run a Celery worker for the turn queue in this process (blocks); the pool and the
    concurrency default to the engine's (:func:`worker.app.pool_for`)."""
    from celery.signals import setup_logging

    from worker.app import create_app, pool_for

    if concurrency:
        settings = settings.model_copy(update={"worker_concurrency": concurrency})
    chosen_pool, concurrency = pool_for(settings)
    if pool is None or (pool == "solo" and concurrency > 1):  # solo would run one turn at a time
        pool = chosen_pool
    log.info("worker: %s pool, %d turn(s) at once", pool, concurrency)
    if engine_and_family(settings)[0] == EngineKind.QWEN_VL and concurrency > 1:
        log.warning("the qwen-vl engine answers one turn at a time (Qwen-VL-Chat's code has no batched chat): "
                    "QVL_WORKER_CONCURRENCY=%d runs that many copies' worth of turns on one model, in turn",
                    concurrency)
    if pool == "threads" and engine_and_family(settings)[0] not in (EngineKind.TRANSFORMERS, EngineKind.QWEN_VL):
        # Many turn threads waiting on a model server share the GIL with the consumer thread
        # that takes turns off the queue; at the default 5 ms switch interval each of its
        # many small I/O steps waits up to that long for the GIL, and turns wait in the queue
        # (convoy effect: 0.49 s → 0.11 s from queue to start at 32 turns in flight). Not
        # for an in-process model: its generating thread would be interrupted that often.
        sys.setswitchinterval(0.0005)
    if app is None:
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


__all__ = ["Supervisor", "lock_data_dir", "prepare", "run_worker", "start_frontends", "up"]
