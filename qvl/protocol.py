"""What crosses boundaries: frozen, JSON-able records shared by the bots and the worker."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

TASK_NAME = "qvl.run_turn"
TASK_VERSION = 1

State = Literal["queued", "running", "streaming", "done", "failed", "cancelled"]


@dataclass(frozen=True)
class IncomingMessage:
    """A platform message, normalised by an adapter.

    ``scope_key`` is chosen by the adapter and decides whose history this turn
    joins (a channel, a thread, one user in a channel, a DM).
    """

    platform: str
    scope_key: str
    chat_id: str
    user_id: str
    message_id: str
    text: str = ""
    images: tuple[bytes, ...] = ()
    thread_id: str | None = None
    reply_to_id: str | None = None
    user_name: str | None = None
    language: str | None = None  # "zh" for Chinese replies, when the adapter knows


@dataclass(frozen=True)
class ReplyImage:
    data: bytes
    mime: str
    filename: str


@dataclass(frozen=True)
class Reply:
    """What an adapter sends back: text, pictures, and where to send them."""

    platform: str
    chat_id: str
    text: str
    images: tuple[ReplyImage, ...] = ()
    job_id: int | None = None  # None for command replies
    thread_id: str | None = None
    reply_to_message_id: str | None = None  # the user's platform message
    user_id: str | None = None
    error: bool = False


@dataclass(frozen=True)
class TurnStatus:
    """Where a turn stands: what an adapter shows while the user waits."""

    job_id: int
    state: State
    position: int | None = None  # 1-based place in the queue while queued
    partial: str | None = None  # text so far while streaming
    error: str | None = None


@dataclass(frozen=True)
class Accepted:
    """The core took a turn: it is queued (or was already, for a redelivered event)."""

    job_id: int
    duplicate: bool = False


@dataclass(frozen=True)
class TaskMessage:
    """The Celery task's payload: ids only; the worker re-reads everything from SQL."""

    job_id: int
    v: int = field(default=TASK_VERSION)
