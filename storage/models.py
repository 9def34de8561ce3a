"""The SQL schema: conversations, content-addressed images, messages and model jobs.

Portable between SQLite and PostgreSQL. Every timestamp is timezone-aware UTC
(:class:`UTCDateTime` makes SQLite, which has no time zones, behave the same).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Final

from sqlalchemy import (
    JSON,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

from qvl.protocol import STORED_STATES, JobState, Part, decode_parts, encode_parts

ROLES: Final = ("user", "assistant")
MESSAGE_STATUSES: Final = ("pending", "done", "failed")
JOB_STATUSES: Final = tuple(s.value for s in STORED_STATES)

# Named constraints, so that SQLite batch migrations can find them later.
NAMING_CONVENTION: Final = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    """Return the current time, timezone-aware, in UTC."""
    return datetime.now(UTC)


def _in_list(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


class UTCDateTime(TypeDecorator[datetime]):
    """A ``DateTime(timezone=True)`` that always stores and returns aware UTC values.

    Raises ``ValueError`` when given a naive datetime: its time zone is unknown.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: pass a timezone-aware one")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:  # SQLite stores the UTC wall time without an offset
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class Parts(TypeDecorator[tuple[Part, ...]]):
    """A message's parts: records in Python, JSON in SQL, validated both ways.

    Raises ``ValueError`` on the way in for anything that is not a list of parts
    (:func:`qvl.protocol.decode_parts` accepts records and their JSON form alike).
    """

    impl = JSON
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> list[dict[str, Any]] | None:
        if value is None:
            return None
        return encode_parts(decode_parts(list(value) if isinstance(value, tuple) else value))

    def process_result_value(self, value: Any, dialect: Dialect) -> tuple[Part, ...] | None:
        if value is None:
            return None
        return decode_parts(value)


class State(TypeDecorator[JobState]):
    """A job's state: a :class:`JobState` in Python, its value as text in SQL (drivers
    differ on how they would write an enum on their own)."""

    impl = String(16)
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> str | None:
        return None if value is None else JobState(value).value

    def process_result_value(self, value: Any, dialect: Dialect) -> JobState | None:
        return None if value is None else JobState(value)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Conversation(Base):
    """One context window's history: a channel, a thread, a DM... as the frontend decides."""

    __tablename__ = "conversations"
    __table_args__ = (UniqueConstraint("platform", "scope_key"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    platform: Mapped[str] = mapped_column(String(32))
    scope_key: Mapped[str] = mapped_column(String(255))
    # Messages with id <= context_floor are kept for audit but not shown to the model.
    context_floor: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)


class Image(Base):
    """A picture, stored once per content hash."""

    __tablename__ = "images"

    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    data: Mapped[bytes] = mapped_column(LargeBinary)
    mime: Mapped[str] = mapped_column(String(127))
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    size: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Message(Base):
    """A user turn or an assistant reply; ``parts`` is the ordered content (text, images, boxes)."""

    __tablename__ = "messages"
    __table_args__ = (
        # A platform event delivered twice never makes a second turn (NULLs never clash).
        UniqueConstraint("platform", "platform_message_id"),
        CheckConstraint(_in_list("role", ROLES), name="role"),
        CheckConstraint(_in_list("status", MESSAGE_STATUSES), name="status"),
        Index(None, "conversation_id", "id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    conversation_id: Mapped[int] = mapped_column(ForeignKey("conversations.id", ondelete="CASCADE"))
    role: Mapped[str] = mapped_column(String(16))
    parts: Mapped[tuple[Part, ...]] = mapped_column(Parts)
    status: Mapped[str] = mapped_column(String(16), default="pending")
    # The asker's language ("zh", or None for English): errors are stored in it.
    language: Mapped[str | None] = mapped_column(String(8))
    platform: Mapped[str] = mapped_column(String(32))
    platform_message_id: Mapped[str | None] = mapped_column(String(128))
    chat_id: Mapped[str | None] = mapped_column(String(128))
    thread_id: Mapped[str | None] = mapped_column(String(128))
    user_id: Mapped[str | None] = mapped_column(String(128))
    user_name: Mapped[str | None] = mapped_column(String(255))
    reply_to_id: Mapped[str | None] = mapped_column(String(128))
    in_reply_to: Mapped[int | None] = mapped_column(ForeignKey("messages.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Job(Base):
    """The model's work on one user message, and the delivery of its answer."""

    __tablename__ = "jobs"
    __table_args__ = (
        CheckConstraint(_in_list("status", JOB_STATUSES), name="status"),
        Index(None, "status", "enqueued_at"),
        Index(None, "platform", "delivered_at"),
        Index(None, "conversation_id", "id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    message_id: Mapped[int] = mapped_column(
        ForeignKey("messages.id", ondelete="CASCADE"), unique=True
    )
    conversation_id: Mapped[int] = mapped_column(ForeignKey("conversations.id", ondelete="CASCADE"))
    status: Mapped[JobState] = mapped_column(State, default=JobState.QUEUED)
    engine: Mapped[str | None] = mapped_column(String(64))
    error: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    enqueued_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    reply_message_id: Mapped[int | None] = mapped_column(
        ForeignKey("messages.id", ondelete="SET NULL")
    )
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime())  # the frontend acknowledged it
    platform: Mapped[str] = mapped_column(String(32))
    # Sent to the queue last at this time (None: never, e.g. waiting for the turn before it).
    dispatched_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # The running worker's last sign of life: a stale one means the worker is gone.
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # A frontend holds the reply until then; unacknowledged, it is offered again after.
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime())
    delivery_attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # The asker's own limit on the answer's length (the web API's max_tokens); None: the
    # worker's QVL_MAX_NEW_TOKENS, which also caps this one.
    max_new_tokens: Mapped[int | None] = mapped_column(Integer)

    # Joined, not selectin: a job is read on every turn, and one query beats three.
    message: Mapped[Message] = relationship(foreign_keys=[message_id], lazy="joined", innerjoin=True)
    reply_message: Mapped[Message | None] = relationship(
        foreign_keys=[reply_message_id], lazy="joined"
    )


class SpaceSettings(Base):
    """Settings an admin chose for one space of a platform (a Discord server, a WeChat room)."""

    __tablename__ = "space_settings"
    __table_args__ = (UniqueConstraint("platform", "space_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    platform: Mapped[str] = mapped_column(String(32))
    space_id: Mapped[str] = mapped_column(String(128))
    values: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)


class ApiKey(Base):
    """A key the operator handed out for the web page and the OpenAI-compatible API.

    Only the SHA-256 of the secret is stored (the secret is 256 random bits: no slow hash
    is needed); ``prefix`` is its first characters, for ``qvl keys list``.
    """

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))
    secret_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    rate_limit: Mapped[int | None] = mapped_column(Integer)  # turns per window; None: the setting's
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
