"""Redis names shared by the worker (writer) and the core (reader).

The worker publishes :class:`qvl.protocol.Event` records on ``{ns}:events:{platform}``,
keeps the streamed text so far under ``{ns}:partial:{job_id}``, and says it is alive
under ``{ns}:alive:{node}`` (refreshed every few seconds, expiring after ``ALIVE_TTL_S``).
"""

from __future__ import annotations

PARTIAL_TTL_S = 3600
ALIVE_TTL_S = 15  # a worker not seen for this long is taken for dead


def channel(namespace: str, platform: str) -> str:
    return f"{namespace}:events:{platform}"


def partial_key(namespace: str, job_id: int) -> str:
    return f"{namespace}:partial:{job_id}"


def alive_key(namespace: str, node: str) -> str:
    return f"{namespace}:alive:{node}"


def alive_pattern(namespace: str) -> str:
    """The ``SCAN`` pattern of every live worker's key."""
    return f"{namespace}:alive:*"
