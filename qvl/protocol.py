"""What crosses boundaries: frozen, JSON-able records shared by the bots and the worker.

Message parts are written by the core and the worker and read back from SQL by both;
they cross as these records and are turned into JSON in exactly one place
(:func:`encode_parts` / :func:`decode_parts`), which validates them both ways.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal

TASK_NAME = "qvl.run_turn"
TASK_VERSION = 1


class JobState(StrEnum):
    """Where a turn stands. ``streaming`` is reported, never stored."""

    QUEUED = "queued"
    RUNNING = "running"
    STREAMING = "streaming"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


STORED_STATES: tuple[JobState, ...] = tuple(s for s in JobState if s is not JobState.STREAMING)
FINAL_STATES: frozenset[JobState] = frozenset({JobState.DONE, JobState.FAILED, JobState.CANCELLED})
State = JobState  # kept short for annotations


class Scope(StrEnum):
    """Whose history a conversation in a shared space holds (a server channel, a group)."""

    USER = "user"  # each person their own (the default): two people never see each other's turns
    SHARED = "shared"  # one for everyone in the channel or group
    THREAD = "thread"  # one per thread (where the platform has threads; else like shared)

    @classmethod
    def parse(cls, word: str) -> Scope | None:
        """The scope a word names (also the older ``channel``/``room`` and Chinese words)."""
        return _SCOPE_WORDS.get(word.strip().lower())


_SCOPE_WORDS = {"user": Scope.USER, "个人": Scope.USER, "shared": Scope.SHARED, "channel": Scope.SHARED,
                "room": Scope.SHARED, "共享": Scope.SHARED, "thread": Scope.THREAD, "话题": Scope.THREAD}


@dataclass(frozen=True)
class Where:
    """Where a message was written and by whom, as far as access and scope care.

    ``space_id`` is the shared space (a Discord server, a WeChat room, a WeCom group);
    None for a direct chat. ``channel_id`` is the channel or room, ``parent_id`` a
    thread's channel. ``roles`` are the member's role ids; ``admin`` whether they may
    change the space's settings.
    """

    space_id: str | None = None
    channel_id: str | None = None
    thread_id: str | None = None
    parent_id: str | None = None
    roles: frozenset[str] = frozenset()
    admin: bool = False


@dataclass(frozen=True)
class IncomingMessage:
    """A platform message, normalised by an adapter.

    The core decides whose history the turn joins from ``where`` and the space's
    settings; ``reply_to_bot_id`` (the bot's own message being replied to) lets a
    reply continue that conversation when the replier belongs to it.
    """

    platform: str
    chat_id: str
    user_id: str
    message_id: str
    text: str = ""
    images: tuple[bytes, ...] = ()
    where: Where = field(default_factory=Where)
    thread_id: str | None = None
    reply_to_id: str | None = None
    reply_to_bot_id: str | None = None
    user_name: str | None = None
    language: str | None = None  # "zh" for Chinese replies, when the adapter knows
    max_new_tokens: int | None = None  # the asker's own limit on the answer (≤ QVL_MAX_NEW_TOKENS)
    addressed: bool = True  # False: the bot was not asked (stay quiet unless it is a turn)


@dataclass(frozen=True)
class ReplyImage:
    data: bytes
    mime: str
    filename: str


@dataclass(frozen=True)
class Reply:
    """What an adapter sends back: text, pictures, and where to send them.

    ``key`` names the message-table entry of a command's or refusal's reply
    (``not_allowed`` is one an adapter may keep quiet about).
    ``retry_after_s``, on a refusal that passes with time, says when to try again.
    """

    platform: str
    chat_id: str
    text: str
    images: tuple[ReplyImage, ...] = ()
    job_id: int | None = None  # None for command replies
    thread_id: str | None = None
    reply_to_message_id: str | None = None  # the user's platform message
    user_id: str | None = None
    error: bool = False
    key: str | None = None
    retry_after_s: int | None = None  # a refusal that passes with time (rate limit, fair share)


@dataclass(frozen=True)
class TurnStatus:
    """Where a turn stands: what an adapter shows while the user waits."""

    job_id: int
    state: JobState
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


# --- message parts ---------------------------------------------------------------------


@dataclass(frozen=True)
class TextPart:
    """Text of a message. For answers ``text`` is cleaned of grounding markup and ``raw``
    is what the model wrote (the history the model sees again)."""

    text: str
    raw: str | None = None
    type: Literal["text"] = "text"


@dataclass(frozen=True)
class ImagePart:
    """A picture by content hash; ``annotated`` for the worker's drawings of boxes."""

    sha256: str
    annotated: bool = False
    type: Literal["image"] = "image"


@dataclass(frozen=True)
class Box:
    """A box in pixels of the original picture: 0 <= x1 < x2 <= width, 0 <= y1 < y2 <= height."""

    label: str | None
    box: tuple[int, int, int, int]
    picture: int | None = None  # "Picture N" the answer named, 1-based

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"label": self.label, "box": list(self.box)}
        if self.picture is not None:
            out["picture"] = self.picture
        return out


@dataclass(frozen=True)
class BoxesPart:
    """The boxes an answer drew on one picture (``image``: its content hash)."""

    image: str
    boxes: tuple[Box, ...]
    type: Literal["boxes"] = "boxes"


Part = TextPart | ImagePart | BoxesPart


def encode_parts(parts: Iterable[Part]) -> list[dict[str, Any]]:
    """Parts as JSON-able dicts. Raises ``ValueError`` for anything that is not a part."""
    out: list[dict[str, Any]] = []
    for part in parts:
        if isinstance(part, TextPart):
            item: dict[str, Any] = {"type": "text", "text": part.text}
            if part.raw is not None:
                item["raw"] = part.raw
        elif isinstance(part, ImagePart):
            item = {"type": "image", "sha256": part.sha256}
            if part.annotated:
                item["annotated"] = True
        elif isinstance(part, BoxesPart):
            item = {"type": "boxes", "image": part.image, "boxes": [b.as_json() for b in part.boxes]}
        else:
            raise ValueError(f"not a message part: {part!r}")
        out.append(item)
    return out


def decode_parts(data: object) -> tuple[Part, ...]:
    """Parts from their JSON form. Raises ``ValueError`` for anything malformed."""
    if not isinstance(data, list | tuple):
        raise ValueError("message parts must be a list")
    return tuple(_decode_part(item) for item in data)


def _decode_part(item: object) -> Part:
    if isinstance(item, TextPart | ImagePart | BoxesPart):
        return item
    if not isinstance(item, Mapping):
        raise ValueError(f"bad message part {item!r}: expected an object with a 'type'")
    kind = item.get("type")
    try:
        if kind == "text":
            return TextPart(_str(item["text"]), raw=_str(item["raw"]) if item.get("raw") is not None else None)
        if kind == "image":
            return ImagePart(_sha(item["sha256"]), annotated=bool(item.get("annotated", False)))
        if kind == "boxes":
            return BoxesPart(_sha(item["image"]), tuple(_box(b) for b in item["boxes"]))
    except (KeyError, TypeError) as exc:
        raise ValueError(f"bad {kind} part {item!r}: {exc}") from exc
    raise ValueError(f"bad message part {item!r}: unknown type {kind!r}")


def _str(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected text, got {type(value).__name__}")
    return value


def _sha(value: object) -> str:
    text = _str(value)
    if not 1 <= len(text) <= 64:
        raise ValueError(f"bad content hash {text!r}")
    return text


def _box(value: object) -> Box:
    if not isinstance(value, Mapping):
        raise ValueError(f"bad box {value!r}")
    coords = value["box"]
    if not isinstance(coords, list | tuple) or len(coords) != 4:
        raise ValueError(f"bad box coordinates {coords!r}")
    label = value.get("label")
    picture = value.get("picture")
    return Box(None if label is None else _str(label), tuple(int(c) for c in coords),  # type: ignore[arg-type]
               None if picture is None else int(picture))


def parts_text(parts: Iterable[Part]) -> str:
    """The text of a message's parts, joined (what a user sees)."""
    return "\n".join(p.text for p in parts if isinstance(p, TextPart)).strip()


# --- events on Redis ---------------------------------------------------------------------


@dataclass(frozen=True)
class Event:
    """What the worker announces on ``{ns}:events:{platform}``: a turn's new state.

    SQL stays the source of truth for finished replies, so a lost event only delays
    a reply, never loses it.
    """

    job_id: int
    state: JobState

    def encode(self) -> str:
        return json.dumps({"job_id": int(self.job_id), "state": self.state.value})

    @classmethod
    def decode(cls, data: bytes | str) -> Event | None:
        """The event in ``data``, or None for anything malformed."""
        try:
            body = json.loads(data)
            return cls(int(body["job_id"]), JobState(body["state"]))
        except (ValueError, KeyError, TypeError):
            return None
