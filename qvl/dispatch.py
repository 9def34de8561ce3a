"""Sending turns to the queue, and seeing which ones the queue still holds.

Every turn's Celery message has the task id ``qvl-job-{id}``, so copies of one turn
(a re-send after a loss) are recognisable and harmless: the worker starts a turn only
once (see ``storage.repo.start_job``). SQL, not Redis, is the record of pending work;
:func:`live_task_ids` lets the reconciler find the turns whose message is gone.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

from celery import Celery

from qvl.protocol import TASK_NAME, TASK_VERSION
from qvl.settings import Settings


def task_id(job_id: int) -> str:
    """The Celery task id of turn ``job_id``'s messages."""
    return f"qvl-job-{job_id}"


def send_turns(celery: Celery, settings: Settings, job_ids: Iterable[int]) -> None:
    """Queue one message per job (ids only; the worker reads the rest from SQL)."""
    for job_id in job_ids:
        celery.send_task(TASK_NAME, kwargs={"job_id": job_id, "v": TASK_VERSION}, queue=settings.queue,
                         task_id=task_id(job_id))


def live_task_ids(redis, settings: Settings) -> tuple[set[str], dict[str, float]]:
    """The turn messages Redis holds: task ids waiting in the queue, and task ids taken by
    a worker and not yet acknowledged with the time they were taken (kombu's ``unacked``
    hash and ``unacked_index``). A message popped by a worker that died before recording
    it, or lost with a Redis that restarted without persistence, is in neither."""
    prefix = f"{settings.namespace}:"
    waiting: set[str] = set()
    for key in redis.scan_iter(match=f"{prefix}{settings.queue}*", count=100):
        if redis.type(key) in (b"list", "list"):
            waiting.update(_message_id(raw) for raw in redis.lrange(key, 0, -1))
    since = {_text(tag): at for tag, at in redis.zrange(f"{prefix}unacked_index", 0, -1, withscores=True)}
    taken = {_message_id(raw, unacked=True): since.get(_text(tag), 0.0)
             for tag, raw in redis.hgetall(f"{prefix}unacked").items()}
    waiting.discard("")
    taken.pop("", None)
    return waiting, taken


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _message_id(raw: bytes | str, *, unacked: bool = False) -> str:
    try:
        message = json.loads(raw)
        return str((message[0] if unacked else message)["headers"]["id"])
    except (ValueError, TypeError, KeyError, IndexError):
        return ""
