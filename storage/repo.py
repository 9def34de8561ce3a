"""Repository functions: every query the bots and the worker make.

All functions are keyword-only and take a ``session``; the caller commits
(none of them commits). Functions that may race with another process say how
they stay correct: a savepoint around the insert and the unique constraint
decide, and the loser reads the winner's row.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, bindparam, exists, func, insert, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, aliased, lazyload
from sqlalchemy.orm.attributes import set_committed_value

from qvl.protocol import JobState, Part, decode_parts
from storage.models import Conversation, Image, Job, Message, SpaceSettings, utcnow

_ERROR_MAX_CHARS = 4000


class JobStateError(ValueError):
    """The job is in a state that does not allow the requested change."""


_CONVERSATION = select(Conversation).where(Conversation.platform == bindparam("platform"),
                                           Conversation.scope_key == bindparam("scope_key"))


def get_or_create_conversation(*, session: Session, platform: str, scope_key: str) -> Conversation:
    """Return the conversation for ``(platform, scope_key)``, creating it if needed (race-safe)."""
    key = {"platform": platform, "scope_key": scope_key}
    found = session.scalars(_CONVERSATION, key).one_or_none()
    if found is not None:
        return found
    now = utcnow()
    values = dict(platform=platform, scope_key=scope_key, context_floor=0, created_at=now, updated_at=now)
    new_id = session.execute(_insert_or_nothing(session, Conversation), values).scalar()
    if new_id is None:  # another process created it a moment ago
        return session.scalars(_CONVERSATION, key).one()
    return Conversation(id=new_id, **values)  # not attached to ``session``


def put_image(*, session: Session, data: bytes, mime: str, width: int, height: int) -> Image:
    """Store a picture once per content hash and return its row (the existing one if any).

    Raises ``ValueError`` for empty data or a non-positive size. Race-safe.
    """
    if not data:
        raise ValueError("empty image data")
    if width <= 0 or height <= 0:
        raise ValueError(f"bad image size {width}x{height}")
    sha256 = hashlib.sha256(data).hexdigest()
    found = session.get(Image, sha256)
    if found is not None:
        return found
    image = Image(sha256=sha256, data=data, mime=mime, width=width, height=height, size=len(data))
    try:
        with session.begin_nested():
            session.add(image)
    except IntegrityError:
        found = session.get(Image, sha256, populate_existing=True)
        if found is None:  # pragma: no cover - the winner's row must exist
            raise
        return found
    return image


def get_image(*, session: Session, sha256: str) -> Image | None:
    """Return the picture with this content hash, or None."""
    return session.get(Image, sha256)


def _check_parts(parts: Sequence[Part]) -> tuple[Part, ...]:
    if isinstance(parts, str | bytes) or not isinstance(parts, Sequence):
        raise ValueError("parts must be a list of message parts")
    return decode_parts(list(parts))


def _message_by_platform_id(
    session: Session, platform: str, platform_message_id: str
) -> Message | None:
    return session.scalars(
        select(Message).where(
            Message.platform == platform, Message.platform_message_id == platform_message_id
        )
    ).one_or_none()


_FIND_TURN = (select(Job).join(Message, Message.id == Job.message_id)
              .where(Message.platform == bindparam("platform"), Message.platform_message_id == bindparam("pmid")))


def find_turn(*, session: Session, platform: str, platform_message_id: str) -> Job | None:
    """Return the job of the user turn recorded for this platform message, or None."""
    return session.scalars(_FIND_TURN, {"platform": platform, "pmid": platform_message_id}).one_or_none()


def _job_for_message(session: Session, message_id: int) -> Job:
    return session.scalars(select(Job).where(Job.message_id == message_id)).one()


def add_user_turn(
    *,
    session: Session,
    conversation: Conversation,
    parts: Sequence[Part],
    platform: str,
    platform_message_id: str | None,
    chat_id: str | None,
    thread_id: str | None,
    user_id: str | None,
    user_name: str | None = None,
    reply_to_id: str | None = None,
    language: str | None = None,
    max_new_tokens: int | None = None,
) -> tuple[Message, Job, bool]:
    """Record a user message (pending) and its job (queued); return ``(message, job, created)``.

    If ``(platform, platform_message_id)`` was recorded before, return that message,
    its job and ``created=False`` (race-safe). Raises ``ValueError`` for malformed parts.
    The new rows are written with plain INSERTs (every turn passes here: the ORM's unit of
    work and a savepoint cost more CPU than the statements); the objects returned are
    not attached to ``session``.
    """
    parts = _check_parts(parts)
    # No look-up first: callers check with find_turn before counting a turn, and the unique
    # constraint settles both a redelivery and a race in one place (ON CONFLICT DO NOTHING).
    now = utcnow()
    message = dict(conversation_id=conversation.id, role="user", parts=parts, status="pending",
                   platform=platform, platform_message_id=platform_message_id, chat_id=chat_id,
                   thread_id=thread_id, user_id=user_id, user_name=user_name, reply_to_id=reply_to_id,
                   language=language, in_reply_to=None, created_at=now)
    message_id = session.execute(_insert_or_nothing(session, Message), message).scalar()
    if message_id is None:  # this platform event was recorded before
        found = _message_by_platform_id(session, platform, platform_message_id)
        return found, _job_for_message(session, found.id), False
    job = dict(message_id=message_id, conversation_id=conversation.id, status=JobState.QUEUED, attempts=0,
               enqueued_at=now, platform=platform, max_new_tokens=max_new_tokens, delivery_attempts=0)
    job_id = session.execute(_INSERT_JOB, job).scalar_one()
    _set(session, Conversation, conversation, updated_at=now)
    return Message(id=message_id, **message), Job(id=job_id, **job), True


_INSERT_JOB = insert(Job.__table__).returning(Job.id)


def _insert_or_nothing(session: Session, model: type):
    """INSERT of one ``model`` row returning its id, that does nothing (and returns no row)
    when a unique constraint holds that row already: ON CONFLICT DO NOTHING, which both
    PostgreSQL and SQLite know; no savepoint, no error to catch."""
    dialect = session.get_bind().dialect.name
    statement = _INSERT_OR_NOTHING.get((model, dialect))
    if statement is None:
        module = {"postgresql": postgresql, "sqlite": sqlite}[dialect]
        statement = module.insert(model.__table__).on_conflict_do_nothing().returning(model.id)
        _INSERT_OR_NOTHING[(model, dialect)] = statement
    return statement


_INSERT_OR_NOTHING: dict[tuple, Any] = {}


def reset_conversation(*, session: Session, conversation: Conversation) -> None:
    """Move the context floor above every message so far; history is kept."""
    newest = session.scalar(
        select(func.max(Message.id)).where(Message.conversation_id == conversation.id)
    )
    if newest is not None and newest > conversation.context_floor:
        _set(session, Conversation, conversation, context_floor=newest, updated_at=utcnow())


def context_messages(
    *, session: Session, conversation_id: int, up_to_message_id: int, max_messages: int
) -> list[Message]:
    """Return the model's context for a turn, oldest first.

    That is the newest ``max_messages`` messages of the turns above the conversation's
    floor up to the user message ``up_to_message_id``, each turn's question followed by
    its answer (an answer stored after a later question was asked still comes right after
    its own question), without failed messages or user messages whose job failed or was
    cancelled; message ``up_to_message_id`` itself is always included. Raises
    ``ValueError`` if ``max_messages`` < 1 and ``LookupError`` for an unknown conversation.
    """
    if max_messages < 1:
        raise ValueError("max_messages must be at least 1")
    floor = session.scalar(
        select(Conversation.context_floor).where(Conversation.id == conversation_id)
    )
    if floor is None:
        raise LookupError(f"no conversation {conversation_id}")
    found = session.scalars(_CONTEXT, {"conversation_id": conversation_id, "floor": floor,
                                       "up_to": up_to_message_id, "limit": max_messages}).all()
    return list(reversed(found))


def _context_query():
    """The statement behind :func:`context_messages`, built once (its parameters bound)."""
    abandoned = exists().where(
        Job.message_id == Message.id, Job.status.in_((JobState.FAILED, JobState.CANCELLED))
    )
    turn = func.coalesce(Message.in_reply_to, Message.id)  # the user message a message belongs to
    up_to = bindparam("up_to")
    kept = and_(
        turn > bindparam("floor"),
        Message.status != "failed",
        ~and_(Message.role == "user", abandoned),
    )
    return (
        select(Message)
        .where(
            Message.conversation_id == bindparam("conversation_id"),
            or_(and_(Message.role == "user", Message.id <= up_to),
                and_(Message.role == "assistant", Message.in_reply_to < up_to)),
            or_(Message.id == up_to, kept),
        )
        .order_by(turn.desc(), Message.role.asc())  # newest turn first, its answer before it
        .limit(bindparam("limit"))
    )


_CONTEXT = _context_query()


def get_job(*, session: Session, job_id: int) -> Job | None:
    """Return the job with this id, or None."""
    return session.get(Job, job_id)


def get_message(*, session: Session, message_id: int) -> Message | None:
    """Return the message with this id, or None."""
    return session.get(Message, message_id)


_LOCK_JOB = (select(Job).where(Job.id == bindparam("job_id"))
             .options(lazyload(Job.reply_message))  # read only when a job turns out to be done
             .with_for_update(of=Job)
             .execution_options(populate_existing=True))


def _lock_job(session: Session, job_id: int) -> Job:
    job = session.scalars(_LOCK_JOB, {"job_id": job_id}).one_or_none()
    if job is None:
        raise LookupError(f"no job {job_id}")
    return job


_UNFINISHED = (JobState.QUEUED, JobState.RUNNING)


# Built once: constructing an aliased correlated EXISTS costs more CPU than running it,
# and these clauses are in the hot path of every turn. "An earlier job of the same
# conversation that is not finished yet / whose reply is not delivered yet".
_EARLIER = aliased(Job, name="earlier")
_EARLIER_UNFINISHED = exists().where(_EARLIER.conversation_id == Job.conversation_id, _EARLIER.id < Job.id,
                                     _EARLIER.status.in_(_UNFINISHED))
_EARLIER_UNDELIVERED = exists().where(_EARLIER.conversation_id == Job.conversation_id, _EARLIER.id < Job.id,
                                      _EARLIER.delivered_at.is_(None), _EARLIER.status != JobState.CANCELLED)


_WAITING = select(exists().where(_EARLIER.conversation_id == bindparam("conversation_id"),
                                 _EARLIER.id < bindparam("job_id"), _EARLIER.status.in_(_UNFINISHED)))
_NEXT_UNFINISHED = (select(Job.id, Job.status).where(Job.conversation_id == bindparam("conversation_id"),
                                                      Job.status.in_(_UNFINISHED)).order_by(Job.id).limit(1))
_DISPATCHED = (update(Job).where(Job.id.in_(bindparam("ids", expanding=True)))
               .values(dispatched_at=bindparam("now")).execution_options(synchronize_session=False))
_HEARTBEAT = (update(Job).where(Job.id == bindparam("job_id"), Job.status == JobState.RUNNING)
              .values(heartbeat_at=bindparam("now")).execution_options(synchronize_session=False))


def start_job(*, session: Session, job_id: int, engine: str, stale_before: datetime | None = None) -> Job | None:
    """Mark a job running and return it, counting the attempt; None when it must not run now.

    None when the job is over, when an earlier turn of its conversation is not finished
    (turns of one conversation run one at a time, in order; the earlier one's end sends
    this one again), or when it is running with a heartbeat newer than ``stale_before``
    (another worker is on it). A running job whose heartbeat is older is taken over: its
    worker is gone (without ``stale_before``, any running job is). Raises ``LookupError``
    for an unknown job.
    """
    job = _lock_job(session, job_id)
    if job.status not in _UNFINISHED:
        return None
    alive = job.heartbeat_at or job.started_at
    if job.status == JobState.RUNNING and stale_before is not None and alive and alive > stale_before:
        return None
    waiting = session.scalar(_WAITING, {"conversation_id": job.conversation_id, "job_id": job.id})
    if waiting:
        return None
    now = utcnow()
    _set(session, Job, job, status=JobState.RUNNING, engine=engine, started_at=now, heartbeat_at=now,
         attempts=job.attempts + 1)
    return job


def _set(session: Session, model: type, row: Any, **values: Any) -> None:
    """UPDATE one row by its id and set the same values on its loaded object, without the
    ORM's unit of work (on the path of every turn, a flush costs more CPU than the UPDATE)."""
    statement = _UPDATES.get((model, tuple(values)))
    if statement is None:
        statement = (update(model).where(model.id == bindparam("_id"))
                     .values({k: bindparam(k) for k in values}).execution_options(synchronize_session=False))
        _UPDATES[(model, tuple(values))] = statement
    session.execute(statement, {"_id": row.id, **values})
    for key, value in values.items():
        set_committed_value(row, key, value)


_UPDATES: dict[tuple, Any] = {}


def heartbeat(*, session: Session, job_id: int) -> None:
    """Record that the worker running ``job_id`` is alive."""
    session.execute(_HEARTBEAT, {"job_id": job_id, "now": utcnow()})


def mark_dispatched(*, session: Session, job_ids: Sequence[int]) -> None:
    """Record that these jobs were just sent to the queue."""
    if job_ids:
        session.execute(_DISPATCHED, {"ids": list(job_ids), "now": utcnow()})


_DISPATCH_IF_NEXT = (update(Job).where(Job.id == bindparam("job_id"), Job.status == JobState.QUEUED,
                                       ~_EARLIER_UNFINISHED)
                     .values(dispatched_at=bindparam("now")).returning(Job.id)
                     .execution_options(synchronize_session=False))


_PENDING_USER = (select(func.count(Job.id)).join(Message, Message.id == Job.message_id)
                 .where(Job.status.in_(_UNFINISHED), Job.platform == bindparam("platform"),
                        Message.user_id == bindparam("user_id")))
_PENDING_SPACE = (select(func.count(Job.id)).join(Conversation, Conversation.id == Job.conversation_id)
                  .where(Job.status.in_(_UNFINISHED), Job.platform == bindparam("platform"),
                         Conversation.scope_key.like(bindparam("pattern"), escape="/")))


def pending_turns(*, session: Session, platform: str, user_id: str | None,
                  scope_prefix: str | None) -> tuple[int, int]:
    """How many turns are queued or running: of ``user_id`` on ``platform``, and of the
    conversations whose keys start with ``scope_prefix`` (a space's; 0 when None)."""
    mine = session.scalar(_PENDING_USER, {"platform": platform, "user_id": user_id}) if user_id else 0
    pattern = "".join("/" + c if c in "/%_" else c for c in scope_prefix or "") + "%"
    space = session.scalar(_PENDING_SPACE, {"platform": platform, "pattern": pattern}) if scope_prefix else 0
    return mine or 0, space or 0


def dispatch_if_next(*, session: Session, job_id: int) -> bool:
    """Record ``job_id`` as sent, in one statement, if it is queued and its conversation's
    oldest unfinished turn; return whether it was (then the caller sends it after commit)."""
    return session.execute(_DISPATCH_IF_NEXT, {"job_id": job_id, "now": utcnow()}).first() is not None


def next_queued(*, session: Session, conversation_id: int) -> int | None:
    """The id of the conversation's oldest unfinished job if it is queued (the one to send next)."""
    row = session.execute(_NEXT_UNFINISHED, {"conversation_id": conversation_id}).first()
    return row.id if row is not None and row.status == JobState.QUEUED else None


def pending_heads(*, session: Session, dispatched_before: datetime, stale_before: datetime,
                  limit: int = 500) -> list[Job]:
    """Jobs the queue may have lost: each conversation's oldest unfinished job, when it is
    queued and was not sent since ``dispatched_before``, or running with a heartbeat older
    than ``stale_before`` (its worker is gone). Oldest first."""
    lost = or_(
        and_(Job.status == JobState.QUEUED,
             or_(Job.dispatched_at.is_(None), Job.dispatched_at < dispatched_before),
             Job.enqueued_at < dispatched_before),
        and_(Job.status == JobState.RUNNING, func.coalesce(Job.heartbeat_at, Job.started_at) < stale_before,
             or_(Job.dispatched_at.is_(None), Job.dispatched_at < dispatched_before)),
    )
    return list(session.scalars(select(Job).where(lost, ~_EARLIER_UNFINISHED).order_by(Job.id).limit(limit)))


def finish_job(*, session: Session, job_id: int, parts: Sequence[Part]) -> Message:
    """Store the assistant's answer, mark the job and its user message done; return the answer.

    Idempotent: a job already done returns its existing answer. Raises ``JobStateError``
    for a failed or cancelled job, ``LookupError`` for an unknown one and ``ValueError``
    for malformed parts.
    """
    parts = _check_parts(parts)
    job = _lock_job(session, job_id)
    if job.status == JobState.DONE and job.reply_message is not None:
        return job.reply_message
    if job.status not in (JobState.QUEUED, JobState.RUNNING):
        raise JobStateError(f"job {job_id} is {job.status}; it cannot be finished")
    user = job.message
    now = utcnow()
    values = dict(conversation_id=user.conversation_id, role="assistant", parts=parts, status="done",
                  platform=user.platform, platform_message_id=None, chat_id=user.chat_id,
                  thread_id=user.thread_id, user_id=None, user_name=None, reply_to_id=user.platform_message_id,
                  language=None, in_reply_to=user.id, created_at=now)
    reply = Message(id=session.execute(_INSERT_REPLY, values).scalar_one(), **values)
    _set(session, Job, job, status=JobState.DONE, finished_at=now, reply_message_id=reply.id, error=None)
    set_committed_value(job, "reply_message", reply)
    _set(session, Message, user, status="done")
    return reply


_INSERT_REPLY = insert(Message.__table__).returning(Message.id)


def fail_job(*, session: Session, job_id: int, error: str) -> Job:
    """Mark the job and its user message failed with a readable ``error``; return the job.

    A job already failed gets the new error; one already done or cancelled is returned
    unchanged (a late failure of a duplicate run loses). Raises ``LookupError`` for an
    unknown job.
    """
    job = _lock_job(session, job_id)
    if job.status in (JobState.DONE, JobState.CANCELLED):
        return job
    _set(session, Job, job, status=JobState.FAILED, error=(error.strip() or "unknown error")[:_ERROR_MAX_CHARS],
         finished_at=utcnow())
    _set(session, Message, job.message, status="failed")
    return job


def queue_position(*, session: Session, job_id: int) -> int | None:
    """Return the job's 1-based place among queued jobs (by enqueue time), or None if not queued."""
    job = session.get(Job, job_id, populate_existing=True)
    if job is None or job.status != JobState.QUEUED:
        return None
    ahead = or_(
        Job.enqueued_at < job.enqueued_at,
        and_(Job.enqueued_at == job.enqueued_at, Job.id <= job.id),
    )
    return session.scalar(select(func.count(Job.id)).where(Job.status == JobState.QUEUED, ahead))


def _offerable(now: datetime):
    """Finished, not acknowledged, not held by a live lease, and the conversation's oldest
    such reply (replies of one conversation go out one at a time, in order)."""
    return and_(Job.delivered_at.is_(None), Job.status.in_((JobState.DONE, JobState.FAILED)),
                or_(Job.lease_until.is_(None), Job.lease_until < now), ~_EARLIER_UNDELIVERED)


# The delivery path's statements, built once with their parameters bound: building and
# hashing a statement of this size costs more CPU than PostgreSQL spends running it.
_OFFERABLE = _offerable(bindparam("now"))
_UNDELIVERED = (select(Job).where(Job.platform == bindparam("platform"), _OFFERABLE)
                .order_by(Job.finished_at, Job.id).limit(bindparam("limit")))
_FOLLOWING = (select(Job).where(
    Job.conversation_id == select(_EARLIER.conversation_id).where(_EARLIER.id == bindparam("job_id"))
    .scalar_subquery(), Job.id > bindparam("job_id"), _OFFERABLE).order_by(Job.id).limit(1))
_CLAIM = (update(Job).where(Job.id == bindparam("job_id"), _OFFERABLE)
          .values(lease_until=bindparam("until"), delivery_attempts=Job.delivery_attempts + 1)
          .returning(Job.id).execution_options(synchronize_session=False))


def undelivered_jobs(*, session: Session, platform: str, limit: int = 50) -> list[Job]:
    """Finished jobs of ``platform`` whose reply may be offered now, at most one per
    conversation, oldest first."""
    return list(session.scalars(_UNDELIVERED, {"platform": platform, "now": utcnow(), "limit": limit}).all())


def following_undelivered(*, session: Session, job_id: int) -> Job | None:
    """The reply of ``job_id``'s conversation that may be offered now, if any (after
    ``job_id``'s own was acknowledged, the next one of its conversation may be due)."""
    return session.scalars(_FOLLOWING, {"job_id": job_id, "now": utcnow()}).first()


def claim_delivery(*, session: Session, job_id: int, lease_s: float) -> bool:
    """Lease the job's reply to the caller for ``lease_s`` seconds; True for exactly one
    caller, even across processes, and only while the reply may be offered (see
    :func:`undelivered_jobs`). Commit at once; acknowledge with :func:`ack_delivery`
    once the platform accepted it, or it is offered again when the lease ends."""
    now = utcnow()
    result = session.execute(_CLAIM, {"job_id": job_id, "now": now, "until": now + timedelta(seconds=lease_s)})
    return result.first() is not None


_UNDELIVERED_JOB = (update(Job).where(Job.id == bindparam("job_id"), Job.delivered_at.is_(None))
                    .execution_options(synchronize_session=False))
_ACK = _UNDELIVERED_JOB.values(delivered_at=bindparam("now"), lease_until=None)
_RELEASE = _UNDELIVERED_JOB.values(lease_until=bindparam("until"))


def ack_delivery(*, session: Session, job_id: int) -> None:
    """Record that the job's reply was delivered (the platform accepted it)."""
    session.execute(_ACK, {"job_id": job_id, "now": utcnow()})


def release_delivery(*, session: Session, job_id: int, retry_in_s: float) -> None:
    """A delivery failed: offer the reply again in ``retry_in_s`` seconds."""
    session.execute(_RELEASE, {"job_id": job_id, "until": utcnow() + timedelta(seconds=retry_in_s)})


def set_platform_message_id(*, session: Session, message_id: int, platform_message_id: str) -> None:
    """Record the platform's id for a delivered message. Raises ``LookupError`` if unknown."""
    message = session.get(Message, message_id)
    if message is None:
        raise LookupError(f"no message {message_id}")
    message.platform_message_id = platform_message_id
    session.flush()


def conversation_for_platform_message(
    *, session: Session, platform: str, platform_message_id: str
) -> Conversation | None:
    """Return the conversation holding the message with this platform id, or None."""
    return session.scalars(
        select(Conversation)
        .join(Message, Message.conversation_id == Conversation.id)
        .where(Message.platform == platform, Message.platform_message_id == platform_message_id)
    ).one_or_none()


def space_settings(*, session: Session, platform: str, space_id: str) -> dict[str, Any]:
    """Return the settings stored for a space (empty when none were ever set)."""
    row = session.scalars(
        select(SpaceSettings).where(SpaceSettings.platform == platform, SpaceSettings.space_id == space_id)
    ).one_or_none()
    return dict(row.values) if row is not None else {}


def update_space_settings(
    *, session: Session, platform: str, space_id: str, changes: dict[str, Any]
) -> dict[str, Any]:
    """Merge ``changes`` into a space's settings (a None value removes a key); return them."""
    row = session.scalars(
        select(SpaceSettings)
        .where(SpaceSettings.platform == platform, SpaceSettings.space_id == space_id)
        .with_for_update()
    ).one_or_none()
    if row is None:
        try:
            with session.begin_nested():
                row = SpaceSettings(platform=platform, space_id=space_id, values={})
                session.add(row)
        except IntegrityError:
            return update_space_settings(session=session, platform=platform, space_id=space_id,
                                         changes=changes)
    values = {**row.values, **changes}
    row.values = {k: v for k, v in values.items() if v is not None}
    session.flush()
    return dict(row.values)
