"""Whose history a message joins: the conversation key, from where it was written and
the space's scope setting. Pure functions; the core is their only caller.

Keys: ``dm:{user}`` for a direct chat (never shared with a space);
``g{space}:c{channel}:u{user}`` per user in a channel (the default);
``g{space}:c{channel}`` shared; ``g{space}:t{thread}`` per thread.
"""

from __future__ import annotations

from qvl.protocol import Scope, Where


def scope_key(where: Where, user_id: str, scope: Scope) -> str:
    """The conversation a message written at ``where`` by ``user_id`` joins under ``scope``.
    ``thread`` outside a thread falls back to per user."""
    if where.space_id is None:
        return f"dm:{user_id}"
    if scope == Scope.THREAD and where.thread_id:
        return f"g{where.space_id}:t{where.thread_id}"
    channel = f"g{where.space_id}:c{where.channel_id}"
    if scope == Scope.SHARED:
        return channel
    return f"{channel}:u{user_id}"


def space_prefix(where: Where) -> str | None:
    """What the keys of every conversation in ``where``'s space start with (None in a
    direct chat)."""
    return None if where.space_id is None else f"g{where.space_id}:"


def may_join(key: str, where: Where, user_id: str) -> bool:
    """Whether ``user_id`` may continue conversation ``key`` (by replying to the bot):
    a shared one of the same space yes; someone else's per-user or direct one never."""
    if key.startswith("dm:"):
        return key == f"dm:{user_id}"
    if where.space_id is None or not key.startswith(f"g{where.space_id}:"):
        return False
    return ":u" not in key or key.endswith(f":u{user_id}")
