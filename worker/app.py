"""The Celery app, built from a Settings object, and its one task.

The task is a doorway, not a room: it calls :func:`worker.pipeline.run`. Nothing
here is built at import time, so a second app in one process (tests, benchmarks)
or a forked pool process never trips over another's state. ``qvl worker`` and
``qvl up`` call :func:`create_app`; Celery's own command line uses ``worker.main``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

from celery import Celery

from qvl.models import EngineKind, engine_and_family
from qvl.protocol import TASK_NAME, TASK_VERSION
from qvl.queue import make_celery, redis_url
from qvl.settings import Settings

log = logging.getLogger(__name__)


class WorkerContext:
    """What the tasks of one app need: the settings and, per process, a Runtime."""

    def __init__(self, settings: Settings, url: str, engine_factory: Callable | None = None):
        self.settings, self.url, self.engine_factory = settings, url, engine_factory
        self._runtime = None
        self._pid: int | None = None

    def runtime(self):
        """This process's :class:`~worker.pipeline.Runtime`, built on first use; rebuilt in a
        forked child (connections and models must not cross a fork)."""
        if self._runtime is None or self._pid != os.getpid():
            from worker.pipeline import Runtime

            options = {"engine_factory": self.engine_factory} if self.engine_factory else {}
            self._runtime = Runtime(self.settings, redis_url=self.url, **options)
            self._pid = os.getpid()
        return self._runtime


# Turns one worker keeps in flight by default. A remote server batches them itself; the
# transformers engine batches what waits (worker/engines/batching.py); Qwen-VL-Chat's code
# has no batched chat, and an operator's own engine is not known to be thread-safe.
DEFAULT_CONCURRENCY = {EngineKind.OPENAI: 32, EngineKind.ECHO: 8, EngineKind.QWEN_VL: 1}


def pool_for(settings: Settings) -> tuple[str, int]:
    """The Celery pool and concurrency a worker of these settings runs with:
    ``QVL_WORKER_CONCURRENCY`` or the engine's default; threads when more than one.

    Threads, not processes: many turns in flight share one copy of the model (or one HTTP
    connection pool), and the engines wait on I/O or on torch, both outside the GIL.
    """
    kind, _ = engine_and_family(settings)
    default = settings.batch_max if kind == EngineKind.TRANSFORMERS else DEFAULT_CONCURRENCY.get(kind, 1)
    concurrency = settings.worker_concurrency or default
    return ("threads" if concurrency > 1 else "solo"), concurrency


def create_app(settings: Settings, url: str | None = None, *,
               engine_factory: Callable | None = None) -> Celery:
    """A Celery app consuming the turn queue of ``settings`` on Redis at ``url``
    (default: ``REDIS_URL`` or the embedded Redis of ``qvl up``)."""
    url = url or redis_url(settings)
    app = make_celery(settings, url)
    context = WorkerContext(settings, url, engine_factory)
    from worker.reconcile import reconciler_step

    app.steps["worker"].add(reconciler_step(settings, url))  # SQL puts back what the queue lost

    # A stalled turn (a picture or a model that never finishes) cannot hold a worker forever:
    # at the soft limit the turn is failed with a short message; at the hard limit (prefork
    # pool) the child is killed and replaced, and the reconciler redoes the turn until
    # QVL_MAX_ATTEMPTS, then fails it. The solo pool cannot enforce either: there, the
    # worker's per-picture decode budget (QVL_IMAGE_DECODE_S) bounds the pictures' work.
    @app.task(name=TASK_NAME, bind=True, max_retries=None,
              time_limit=settings.turn_time_limit_s,
              soft_time_limit=max(1, settings.turn_time_limit_s - min(30, settings.turn_time_limit_s // 10)))
    def run_turn(self, job_id: int, v: int = TASK_VERSION) -> str:
        if v != TASK_VERSION:
            log.error("task payload version %s not understood (expected %s); job %s", v, TASK_VERSION, job_id)
            return "rejected"
        from redis.exceptions import ConnectionError as RedisConnectionError
        from sqlalchemy.exc import OperationalError

        from worker.pipeline import run

        try:
            return run(job_id, context.runtime())
        except (OperationalError, RedisConnectionError) as exc:  # the database or Redis blinked
            log.warning("job %s: %s; retrying", job_id, exc.__class__.__name__)
            raise self.retry(exc=exc, countdown=min(60, 2 ** self.request.retries)) from exc

    return app
