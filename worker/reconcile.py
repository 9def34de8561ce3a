"""SQL is the record of pending work; this puts back what the queue lost.

A turn's message can vanish: a worker SIGKILLed between taking it from Redis and
recording it as unacknowledged, a frontend that died between the SQL commit and the
send, a Redis restarted without persistence. Every few seconds one worker (a lock in
Redis picks it) compares each conversation's next turn in SQL with the messages Redis
holds, and sends again the turns whose message is gone, and the running turns whose
worker stopped its heartbeat. Copies are harmless: a turn starts only once.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from datetime import timedelta

import redis as redis_lib
from celery import Celery, bootsteps
from sqlalchemy.orm import Session, sessionmaker

from qvl import events
from qvl.dispatch import live_task_ids, send_turns, task_id
from qvl.protocol import JobState
from qvl.settings import Settings
from storage import repo
from storage.models import utcnow

log = logging.getLogger(__name__)


def reconcile(*, sessions: sessionmaker[Session], redis: redis_lib.Redis, celery: Celery,
              settings: Settings) -> list[int]:
    """Send again every turn the queue lost; return their job ids."""
    now = utcnow()
    with sessions() as session:
        heads = repo.pending_heads(session=session,
                                   dispatched_before=now - timedelta(seconds=settings.redispatch_s),
                                   stale_before=now - timedelta(seconds=settings.worker_lost_s))
        session.commit()
    if not heads:
        return []
    waiting, taken = live_task_ids(redis, settings)
    # Lost: no copy waits in the queue, and none was taken by a worker that may still be
    # starting it. A worker starts a turn within moments of taking it, so a copy taken
    # longer than QVL_WORKER_LOST_S ago of a turn still queued, or any taken copy of a
    # running turn whose heartbeat stopped, belongs to a dead worker (Redis would hand it
    # back only after its visibility timeout, QVL_TURN_TIMEOUT_S).
    recent = time.time() - settings.worker_lost_s

    def lost_one(job) -> bool:
        tid = task_id(job.id)
        if tid in waiting:
            return False
        return job.status == JobState.RUNNING or taken.get(tid, 0.0) < recent

    lost = [job.id for job in heads if lost_one(job)]
    if lost:
        with sessions() as session:
            repo.mark_dispatched(session=session, job_ids=lost)
            session.commit()
        send_turns(celery, settings, lost)
        log.warning("re-sent %d turn(s) the queue had lost: %s", len(lost), lost[:20])
    return lost


class Reconciler:
    """Runs :func:`reconcile` every ``reconcile_interval_s`` in a thread, in one worker
    at a time (whoever holds ``{ns}:reconciler`` in Redis)."""

    def __init__(self, settings: Settings, url: str):
        from qvl.queue import make_celery
        from storage.db import make_engine, make_sessionmaker

        self.settings = settings
        self.sessions = make_sessionmaker(make_engine(settings.resolved_database_url()))
        self.redis = redis_lib.Redis.from_url(url, socket_timeout=10)
        self.celery = make_celery(settings, url)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="qvl-reconciler", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        try:  # a worker shut down cleanly is gone at once, not after ALIVE_TTL_S
            self.redis.delete(events.alive_key(self.settings.namespace, f"{socket.gethostname()}-{os.getpid()}"))
        except redis_lib.RedisError:
            pass

    def _loop(self) -> None:
        interval = self.settings.reconcile_interval_s
        key = f"{self.settings.namespace}:reconciler"
        alive = events.alive_key(self.settings.namespace, f"{socket.gethostname()}-{os.getpid()}")
        self._say_alive(alive)
        while not self._stop.wait(interval):
            self._say_alive(alive)
            try:
                if self.redis.set(key, "1", nx=True, px=int(interval * 900)):
                    reconcile(sessions=self.sessions, redis=self.redis, celery=self.celery,
                              settings=self.settings)
            except Exception as exc:  # Redis or the database is away: try again next time
                log.warning("reconciler: %s: %s", type(exc).__name__, exc)


    def _say_alive(self, key: str) -> None:
        """Tell the frontends a worker is consuming the queue (they answer 503 / "no worker"
        without one)."""
        try:
            self.redis.set(key, "1", ex=max(events.ALIVE_TTL_S, int(3 * self.settings.reconcile_interval_s)))
        except redis_lib.RedisError:
            pass


def reconciler_step(settings: Settings, url: str) -> type[bootsteps.StartStopStep]:
    """A Celery worker bootstep that runs a :class:`Reconciler` in the worker's main process."""

    class ReconcilerStep(bootsteps.StartStopStep):
        def __init__(self, parent, **kwargs):
            super().__init__(parent, **kwargs)
            self.reconciler: Reconciler | None = None

        def start(self, parent) -> None:
            self.reconciler = Reconciler(settings, url)
            self.reconciler.start()

        def stop(self, parent) -> None:
            if self.reconciler is not None:
                self.reconciler.stop()

    return ReconcilerStep
