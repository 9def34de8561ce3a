"""The Celery app and its one task. A doorway, not a room: the task calls the pipeline.

    celery -A worker.app worker --pool=solo     # or: qvl worker
"""

from __future__ import annotations

import logging

from celery.signals import worker_process_init

from qvl.protocol import TASK_NAME, TASK_VERSION
from qvl.queue import make_celery, redis_url
from qvl.settings import Settings

log = logging.getLogger(__name__)

settings = Settings()
_url = redis_url(settings)
app = make_celery(settings, _url)
_runtime = None


def runtime():
    """This process's Runtime, built on first use (after any fork)."""
    global _runtime
    if _runtime is None:
        from worker.pipeline import Runtime

        _runtime = Runtime(settings, redis_url=_url)
    return _runtime


@worker_process_init.connect
def _reset_after_fork(**_):
    global _runtime
    _runtime = None  # connections and models must not cross a fork


@app.task(name=TASK_NAME, bind=True, max_retries=None)
def run_turn(self, job_id: int, v: int = TASK_VERSION) -> str:
    if v != TASK_VERSION:
        log.error("task payload version %s not understood (expected %s); job %s", v, TASK_VERSION, job_id)
        return "rejected"
    from redis.exceptions import ConnectionError as RedisConnectionError
    from sqlalchemy.exc import OperationalError

    from worker.pipeline import run

    try:
        return run(job_id, runtime())
    except (OperationalError, RedisConnectionError) as exc:  # the database or Redis blinked
        log.warning("job %s: %s; retrying", job_id, exc.__class__.__name__)
        raise self.retry(exc=exc, countdown=min(60, 2 ** self.request.retries)) from exc


@app.task(name="qvl.ping")
def ping(channel: str, token: str) -> None:
    """Publish ``token`` on ``channel``: a bare round trip, for health checks and the
    queue benchmark's baseline."""
    runtime().redis.publish(channel, token)
