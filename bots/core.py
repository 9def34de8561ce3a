"""The core: the one API every frontend calls. Platform-agnostic, async.

An adapter turns a native event into an :class:`IncomingMessage`, calls
:meth:`Core.handle`, shows :meth:`Core.watch` while the user waits, and sends
what :meth:`Core.replies` yields. It never touches SQL, Redis or Celery itself.
"""

from __future__ import annotations

import asyncio
import io
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

import redis.asyncio as aioredis
from PIL import Image, UnidentifiedImageError
from redis.exceptions import RedisError
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from bots.commands import command_of, say
from bots.delivery import FINAL, Delivery
from bots.ratelimit import RateLimiter
from qvl import events
from qvl.errors import UserFacingError
from qvl.protocol import (
    TASK_NAME,
    Accepted,
    IncomingMessage,
    Reply,
    TaskMessage,
    TurnStatus,
)
from qvl.queue import make_celery, redis_url
from qvl.settings import Settings
from storage import repo
from storage.db import make_engine, make_sessionmaker
from storage.models import Conversation

log = logging.getLogger(__name__)

class Core:
    """Persist turns, queue them, report where they stand, hand back finished replies."""

    def __init__(self, settings: Settings, *, sessions: sessionmaker[Session] | None = None,
                 redis_url_: str | None = None):
        self.settings = settings
        self.sessions = sessions or make_sessionmaker(make_engine(settings.resolved_database_url()))
        url = redis_url_ or redis_url(settings)
        self.redis = aioredis.Redis.from_url(url)
        self.celery = make_celery(settings, url)
        self.delivery = Delivery(self.sessions, self.redis, settings.namespace)
        self.limiter = RateLimiter(self.redis, namespace=settings.namespace,
                                   limit=settings.rate_limit_turns, window_s=settings.rate_limit_window_s)

    async def close(self) -> None:
        await self.redis.aclose()

    async def check(self) -> None:
        """Raise a :class:`UserFacingError` saying what is missing if Redis or the
        database cannot be reached (for frontends to call at start-up)."""
        try:
            await self.redis.ping()
        except RedisError as exc:
            raise UserFacingError(
                f"Cannot reach Redis ({exc.__class__.__name__}): is `qvl up` running? "
                "Or set REDIS_URL to the service's Redis.") from exc
        try:
            await asyncio.to_thread(self._check_database)
        except SQLAlchemyError as exc:
            raise UserFacingError(
                "The database is not ready: run `qvl db upgrade` or start `qvl up`, "
                "and check DATABASE_URL.") from exc

    def _check_database(self) -> None:
        with self.sessions() as session:
            session.execute(select(Conversation.id).limit(1))

    # --- incoming -------------------------------------------------------------------

    async def handle(self, msg: IncomingMessage) -> Accepted | Reply:
        """Take one message: a command gets its Reply at once; a turn is queued.

        A platform event delivered twice returns the first turn's job, marked
        ``duplicate``, and queues nothing.
        """
        command = command_of(msg.text)
        if command == "help":
            return self._reply_to(msg, say("help", msg.language))
        if command == "reset":
            await asyncio.to_thread(self._reset, msg)
            return self._reply_to(msg, say("reset", msg.language))
        if not msg.text.strip() and not msg.images:
            return self._reply_to(msg, say("empty", msg.language), error=True)
        if len(msg.images) > self.settings.images_per_message:
            return self._reply_to(msg, say("too_many_images", msg.language,
                                           n=self.settings.images_per_message), error=True)
        known = await asyncio.to_thread(self._known, msg)
        if known is not None:  # a redelivered event: answered once, not counted twice
            return Accepted(job_id=known, duplicate=True)
        wait = await self.limiter.hit(msg.platform, msg.user_id)
        if wait is not None:
            log.info("rate limit: %s/%s must wait %ss", msg.platform, msg.user_id, wait)
            return self._reply_to(msg, say("rate_limited", msg.language, s=wait), error=True)
        sniffed, problem = _inspect_images(msg.images, self.settings.image_max_bytes)
        if problem:
            log.info("refused a picture from %s/%s: %s", msg.platform, msg.user_id, problem)
            return self._reply_to(msg, say(problem, msg.language,
                                           mb=self.settings.image_max_bytes // 1_048_576), error=True)
        job_id, created = await asyncio.to_thread(self._persist, msg, sniffed)
        if created:
            try:
                await asyncio.to_thread(self._enqueue, job_id)
            except Exception:
                log.exception("could not queue job %s", job_id)
                await asyncio.to_thread(self._fail, job_id, say("busy", msg.language))
        return Accepted(job_id=job_id, duplicate=not created)

    def _reply_to(self, msg: IncomingMessage, text: str, *, error: bool = False) -> Reply:
        return Reply(platform=msg.platform, chat_id=msg.chat_id, text=text, thread_id=msg.thread_id,
                     reply_to_message_id=msg.message_id, user_id=msg.user_id, error=error)

    def _known(self, msg: IncomingMessage) -> int | None:
        with self.sessions() as session:
            job = repo.find_turn(session=session, platform=msg.platform, platform_message_id=msg.message_id)
            return job.id if job is not None else None

    def _reset(self, msg: IncomingMessage) -> None:
        with self.sessions() as session:
            conversation = repo.get_or_create_conversation(
                session=session, platform=msg.platform, scope_key=msg.scope_key)
            repo.reset_conversation(session=session, conversation=conversation)
            session.commit()

    def _persist(self, msg: IncomingMessage, sniffed: list[tuple[str, int, int]]) -> tuple[int, bool]:
        parts: list[dict] = []
        with self.sessions() as session:
            for data, (mime, width, height) in zip(msg.images, sniffed, strict=True):
                image = repo.put_image(session=session, data=data, mime=mime, width=width, height=height)
                parts.append({"type": "image", "sha256": image.sha256})
            if msg.text.strip():
                parts.append({"type": "text", "text": msg.text})
            conversation = repo.get_or_create_conversation(
                session=session, platform=msg.platform, scope_key=msg.scope_key)
            _, job, created = repo.add_user_turn(
                session=session, conversation=conversation, parts=parts, platform=msg.platform,
                platform_message_id=msg.message_id, chat_id=msg.chat_id, thread_id=msg.thread_id,
                user_id=msg.user_id, user_name=msg.user_name, reply_to_id=msg.reply_to_id)
            session.commit()  # enqueue only after commit: the worker must find the turn
            return job.id, created

    def _enqueue(self, job_id: int) -> None:
        payload = TaskMessage(job_id=job_id)
        self.celery.send_task(TASK_NAME, kwargs={"job_id": payload.job_id, "v": payload.v},
                              queue=self.settings.queue)

    def _fail(self, job_id: int, error: str) -> None:
        with self.sessions() as session:
            repo.fail_job(session=session, job_id=job_id, error=error)
            session.commit()

    # --- spaces and conversations --------------------------------------------------

    async def space_settings(self, platform: str, space_id: str) -> dict:
        """The settings an admin chose for a space (a server, a room); {} if none."""
        def read() -> dict:
            with self.sessions() as session:
                return repo.space_settings(session=session, platform=platform, space_id=space_id)
        return await asyncio.to_thread(read)

    async def update_space_settings(self, platform: str, space_id: str, **changes) -> dict:
        """Merge ``changes`` into a space's settings (None removes one); return them all."""
        def write() -> dict:
            with self.sessions() as session:
                values = repo.update_space_settings(session=session, platform=platform,
                                                    space_id=space_id, changes=changes)
                session.commit()
                return values
        return await asyncio.to_thread(write)

    async def scope_of(self, platform: str, message_id: str) -> str | None:
        """The scope key of the conversation a platform message (user's or bot's) belongs to."""
        def read() -> str | None:
            with self.sessions() as session:
                conversation = repo.conversation_for_platform_message(
                    session=session, platform=platform, platform_message_id=message_id)
                return conversation.scope_key if conversation is not None else None
        return await asyncio.to_thread(read)

    # --- where a turn stands --------------------------------------------------------

    async def status(self, job_id: int) -> TurnStatus:
        """Where turn ``job_id`` stands now (queued with its position, running, …)."""
        state, position, error = await asyncio.to_thread(self._job_state, job_id)
        if state == "running":
            partial = await self.redis.get(events.partial_key(self.settings.namespace, job_id))
            if partial is not None:
                return TurnStatus(job_id, "streaming", partial=partial.decode())
        return TurnStatus(job_id, state, position=position, error=error)

    def _job_state(self, job_id: int) -> tuple[str, int | None, str | None]:
        with self.sessions() as session:
            job = repo.get_job(session=session, job_id=job_id)
            if job is None:
                raise LookupError(f"no job {job_id}")
            position = repo.queue_position(session=session, job_id=job_id) if job.status == "queued" else None
            return job.status, position, job.error

    async def watch(self, job_id: int, *, poll_s: float = 1.0,
                    changes_only: bool = True) -> AsyncIterator[TurnStatus]:
        """Yield the turn's status each time it changes (or at least every ``poll_s`` when
        not ``changes_only``), ending with done/failed/cancelled."""
        platform = await asyncio.to_thread(self._platform_of, job_id)
        pubsub = self.redis.pubsub()
        await pubsub.subscribe(events.channel(self.settings.namespace, platform))
        last = None
        try:
            while True:
                status = await self.status(job_id)
                if status != last or not changes_only:
                    yield status
                    last = status
                if status.state in FINAL:
                    return
                await pubsub.get_message(ignore_subscribe_messages=True, timeout=poll_s)
        finally:
            await pubsub.aclose()

    def _platform_of(self, job_id: int) -> str:
        with self.sessions() as session:
            job = repo.get_job(session=session, job_id=job_id)
            if job is None:
                raise LookupError(f"no job {job_id}")
            return job.platform

    # --- delivery (bots/delivery.py) -----------------------------------------------

    def replies(self, platform: str, *, sweep_s: float = 5.0) -> AsyncIterator[Reply]:
        """Every finished turn of ``platform``, each yielded once across all processes
        (see :meth:`Delivery.replies`)."""
        return self.delivery.replies(platform, sweep_s=sweep_s)

    async def serve_replies(self, platform: str, send: Callable[[Reply], Awaitable[None]]) -> None:
        """Hand every finished reply of ``platform`` to ``send``, once each, for good: the
        delivery loop of a frontend (cancel the task to stop it). A failure is logged and
        the loop starts again; the replies it had not claimed stay in the backlog."""
        while True:
            try:
                async for reply in self.replies(platform):
                    await send(reply)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("%s delivery loop failed; restarting it", platform)
                await asyncio.sleep(2)

    async def take_reply(self, job_id: int) -> Reply | None:
        """Claim the reply of one finished turn; None if unfinished or already delivered."""
        return await self.delivery.take(job_id)

    async def sent(self, reply: Reply, platform_message_id: str) -> None:
        """Record the platform's id of a delivered reply, so replies to it continue the chat."""
        await self.delivery.sent(reply, platform_message_id)


def _inspect_images(images: tuple[bytes, ...], max_bytes: int) -> tuple[list[tuple[str, int, int]], str | None]:
    """(MIME type, width, height) of each picture from its header, and the message key of
    the first problem one has on its face (None if none has)."""
    sniffed = []
    for data in images:
        if len(data) > max_bytes:
            return sniffed, "image_too_large"
        found = _sniff(data)
        if found is None:
            return sniffed, "not_an_image"
        sniffed.append(found)
    return sniffed, None


def _sniff(data: bytes) -> tuple[str, int, int] | None:
    """MIME type and size from the header alone (the worker decodes, and rejects, for real)."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.width <= 0 or image.height <= 0:
                return None
            return Image.MIME.get(image.format or "", "application/octet-stream"), image.width, image.height
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return None
