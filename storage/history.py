"""What the web frontend reads back from SQL: a key's conversations, their turns, and a
finished turn's answer with its boxes; and histories an API client sends, imported.

Keyword-only functions that take a ``session``; the caller commits.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from qvl.protocol import BoxesPart, ImagePart, JobState, Part, TextPart, parts_text
from storage.models import Conversation, Image, Job, Message


@dataclass(frozen=True)
class Picture:
    """A stored picture as the page shows it: by content hash, with its size."""

    sha256: str
    width: int
    height: int
    annotated: bool = False


@dataclass(frozen=True)
class Entry:
    """One message of a conversation, as the page shows it."""

    role: str
    text: str
    pictures: tuple[Picture, ...] = ()
    boxes: tuple[BoxesPart, ...] = ()
    annotated: dict[str, Picture] = field(default_factory=dict)  # original's hash → its drawing
    job_id: int | None = None
    state: JobState | None = None  # a user message's turn
    error: str | None = None


@dataclass(frozen=True)
class Outcome:
    """A turn's end: the cleaned text (or the error the asker reads) and the boxes, each
    in pixels of the original picture (``BoxesPart.image`` names it), with the pictures."""

    state: JobState
    text: str
    error: bool = False
    boxes: tuple[BoxesPart, ...] = ()
    annotated: dict[str, Picture] = field(default_factory=dict)  # original's hash → its drawing
    originals: dict[str, Picture] = field(default_factory=dict)


@dataclass(frozen=True)
class Summary:
    scope_key: str
    title: str
    updated_at: datetime


def _pictures(session: Session, shas: Sequence[str], annotated: Sequence[bool]) -> tuple[Picture, ...]:
    rows = {row.sha256: row for row in session.execute(
        select(Image.sha256, Image.width, Image.height).where(Image.sha256.in_(set(shas))))}
    return tuple(Picture(s, rows[s].width, rows[s].height, a) for s, a in zip(shas, annotated, strict=True)
                 if s in rows)


def _images_of(session: Session, parts: Sequence[Part]) -> tuple[Picture, ...]:
    images = [p for p in parts if isinstance(p, ImagePart)]
    return _pictures(session, [p.sha256 for p in images], [p.annotated for p in images])


def _drawings(session: Session, parts: Sequence[Part]) -> dict[str, Picture]:
    """Each boxed picture's drawing: the worker stores a boxes part, then its drawing."""
    pairs = {}
    for before, part in zip(parts, parts[1:], strict=False):
        if isinstance(before, BoxesPart) and isinstance(part, ImagePart) and part.annotated:
            pairs[before.image] = part.sha256
    found = {p.sha256: p for p in _pictures(session, list(pairs.values()), [True] * len(pairs))}
    return {original: found[drawn] for original, drawn in pairs.items() if drawn in found}


def outcome(*, session: Session, job_id: int) -> Outcome | None:
    """How turn ``job_id`` ended, or None while it has not (or does not exist).

    A failed turn's text is its stored error (already in the asker's words), or empty.
    """
    job = session.get(Job, job_id, populate_existing=True)
    if job is None or job.status not in (JobState.DONE, JobState.FAILED, JobState.CANCELLED):
        return None
    if job.status != JobState.DONE or job.reply_message is None:
        return Outcome(job.status, job.error or "", error=True)
    parts = job.reply_message.parts
    boxes = tuple(p for p in parts if isinstance(p, BoxesPart))
    shas = sorted({b.image for b in boxes})
    originals = {p.sha256: p for p in _pictures(session, shas, [False] * len(shas))}
    return Outcome(job.status, parts_text(parts), boxes=boxes, annotated=_drawings(session, parts),
                   originals=originals)


def conversations(*, session: Session, platform: str, prefix: str, limit: int = 100) -> list[Summary]:
    """The conversations of ``platform`` whose scope key starts with ``prefix``, newest
    first, each titled with the start of its first question."""
    rows = session.scalars(
        select(Conversation)
        .where(Conversation.platform == platform, Conversation.scope_key.startswith(prefix, autoescape=True))
        .order_by(Conversation.updated_at.desc()).limit(limit)).all()
    out = []
    for conversation in rows:
        first = session.scalars(
            select(Message).where(Message.conversation_id == conversation.id, Message.role == "user")
            .order_by(Message.id).limit(1)).first()
        title = parts_text(first.parts) if first is not None else ""
        if first is not None and not title and any(isinstance(p, ImagePart) for p in first.parts):
            title = "🖼"
        out.append(Summary(conversation.scope_key, title[:60], conversation.updated_at))
    return out


def entries(*, session: Session, platform: str, scope_key: str, limit: int = 200) -> list[Entry]:
    """The messages of a conversation since its last reset, oldest first (the newest
    ``limit``); an empty list for an unknown conversation."""
    conversation = session.scalars(select(Conversation).where(
        Conversation.platform == platform, Conversation.scope_key == scope_key)).one_or_none()
    if conversation is None:
        return []
    messages = session.scalars(
        select(Message).where(Message.conversation_id == conversation.id,
                              Message.id > conversation.context_floor)
        .order_by(Message.id.desc()).limit(limit)).all()
    jobs = {job.message_id: job for job in session.scalars(
        select(Job).where(Job.message_id.in_([m.id for m in messages])))}
    out = []
    for message in reversed(messages):
        job = jobs.get(message.id)
        boxes = tuple(p for p in message.parts if isinstance(p, BoxesPart))
        pictures = tuple(p for p in _images_of(session, message.parts) if not p.annotated)
        out.append(Entry(message.role, parts_text(message.parts), pictures, boxes,
                         _drawings(session, message.parts), job.id if job else None, job.status if job else None, job.error if job else None))
    return out


def import_turns(*, session: Session, conversation: Conversation, platform: str,
                 turns: Sequence[tuple[str, Sequence[Part]]]) -> int:
    """Record finished ``(role, parts)`` messages, oldest first, in a new conversation
    (what an API client sends as the history of its question). User messages get no job:
    they are history, not work. Returns how many were recorded."""
    question: Message | None = None
    for role, parts in turns:
        if role not in ("user", "assistant"):
            raise ValueError(f"bad role {role!r}")
        if role == "assistant":
            parts = [TextPart(p.text, raw=p.text) if isinstance(p, TextPart) else p for p in parts]
        message = Message(conversation_id=conversation.id, role=role, parts=list(parts), status="done",
                          platform=platform, in_reply_to=question.id if role == "assistant" and question else None)
        session.add(message)
        session.flush()
        if role == "user":
            question = message
    return len(turns)

