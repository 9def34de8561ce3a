"""Redis names shared by the worker (writer) and the core (reader).

The worker publishes :class:`qvl.protocol.Event` records on ``{ns}:events:{platform}``
and keeps the streamed text so far under ``{ns}:partial:{job_id}``.
"""

from __future__ import annotations

PARTIAL_TTL_S = 3600


def channel(namespace: str, platform: str) -> str:
    return f"{namespace}:events:{platform}"


def partial_key(namespace: str, job_id: int) -> str:
    return f"{namespace}:partial:{job_id}"
