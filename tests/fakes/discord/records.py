"""What tests read: the records of what the bot did, and the ids of the default world."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple


class Call(NamedTuple):
    """One REST request: method, path below ``/api/v10`` and the body.

    The body is the parsed JSON, ``None`` when empty, or for multipart
    ``{"payload_json": <parsed>, "files": [(filename, bytes), ...]}``.
    """

    method: str
    path: str
    body: Any


@dataclass
class SentMessage:
    """A message the bot made visible: ``via`` is "channel" (POST /channels/{id}/messages),
    "interaction" (callback type 4), "followup" (webhook POST) or "edit_original" (the
    PATCH that fills a deferred response)."""

    id: int
    channel_id: int
    content: str
    files: list[tuple[str, bytes]]
    message_reference: dict | None
    embeds: list[dict]
    flags: int
    via: str
    payload: dict
    request: Any
    interaction_id: int | None = None

    @property
    def reply_to(self) -> int | None:
        ref = self.message_reference
        return int(ref["message_id"]) if ref and ref.get("message_id") else None

    @property
    def ephemeral(self) -> bool:
        return bool(self.flags & 64)


@dataclass
class Edit:
    """A PATCH of a message by the bot; ``content`` is the content after the edit."""

    message_id: int
    channel_id: int
    content: str
    files: list[tuple[str, bytes]]
    payload: dict
    request: Any
    via: str


@dataclass
class Typing:
    """A typing trigger by the bot; ``at`` is ``time.monotonic()``."""

    channel_id: int
    at: float


@dataclass
class InteractionResponse:
    """A POST to /interactions/{id}/{token}/callback."""

    interaction_id: int
    type: int
    data: dict
    files: list[tuple[str, bytes]]


@dataclass
class Reaction:
    channel_id: int
    message_id: int
    emoji: str
    added: bool


@dataclass(frozen=True)
class World:
    """Ids of the default world: one guild, two text channels, alice (admin) and bob."""

    guild: int
    general: int
    random: int
    alice: int
    bob: int
    admin_role: int
