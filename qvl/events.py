"""Redis names and event records shared by the worker (writer) and the core (reader).

The worker publishes where a turn stands on ``{ns}:events:{platform}`` and keeps the
streamed text so far under ``{ns}:partial:{job_id}``; SQL stays the source of truth
for finished replies, so a lost event only delays a reply, never loses it.
"""

from __future__ import annotations

import json

PARTIAL_TTL_S = 3600


def channel(namespace: str, platform: str) -> str:
    return f"{namespace}:events:{platform}"


def partial_key(namespace: str, job_id: int) -> str:
    return f"{namespace}:partial:{job_id}"


def encode(job_id: int, state: str) -> str:
    return json.dumps({"job_id": job_id, "state": state})


def decode(data: bytes | str) -> tuple[int, str] | None:
    """(job_id, state) from an event, or None for anything malformed."""
    try:
        body = json.loads(data)
        return int(body["job_id"]), str(body["state"])
    except (ValueError, KeyError, TypeError):
        return None
