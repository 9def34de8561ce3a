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
from dataclasses import replace

import redis.asyncio as aioredis
from PIL import Image, UnidentifiedImageError
from redis.exceptions import RedisError
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from bots.access import Policy, allowed, is_admin, policy_for
from bots.commands import argument_of, command_of
from bots.delivery import Delivery
from bots.ratelimit import RateLimiter
from bots.scope import may_join, scope_key
from qvl import events
from qvl.dispatch import send_turns
from qvl.errors import UserFacingError
from qvl.messages import say
from qvl.protocol import (
    FINAL_STATES,
    Accepted,
    ImagePart,
    IncomingMessage,
    JobState,
    Part,
    Reply,
    Scope,
    TextPart,
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
        self.delivery = Delivery(self.sessions, self.redis, settings.namespace, lease_s=settings.delivery_lease_s)
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

    async def handle(self, msg: IncomingMessage, *,
                     pictures: Callable[[], Awaitable[tuple[bytes, ...]]] | None = None) -> Accepted | Reply:
        """Take one message: decide whether it is served and whose conversation it joins
        (from where it was written and the space's settings), answer commands at once,
        queue a turn.

        A platform event delivered twice returns the first turn's job, marked
        ``duplicate``, and queues nothing. A message in a place the bot does not serve
        gets a Reply with ``key="not_allowed"``, which a frontend may keep quiet about.
        ``pictures``, when given, downloads the message's pictures (attachments, links):
        it is called only for a message the bot serves. Its ``UserFacingError`` propagates.
        """
        command = command_of(msg.text)
        if command == "help":
            return self._reply_to(msg, say("help", msg.language), key="help")
        config, scope, known = await asyncio.to_thread(self._resolve, msg)
        if not allowed(self.policy(msg.platform), config, msg.where):
            log.info("not serving %s/%s in %s: not allowed", msg.platform, msg.user_id, msg.chat_id)
            return self._reply_to(msg, say("not_allowed", msg.language), error=True, key="not_allowed")
        if command == "reset":
            await asyncio.to_thread(self._reset, msg.platform, scope)
            return self._reply_to(msg, say("reset", msg.language), key="reset")
        if command == "scope":
            return await self.configure(msg, scope=argument_of(msg.text) or "?")
        if pictures is not None:
            msg = replace(msg, images=(*msg.images, *await pictures()))
        if not msg.text.strip() and not msg.images:
            return self._reply_to(msg, say("empty", msg.language), error=True, key="empty")
        if len(msg.images) > self.settings.images_per_message:
            return self._reply_to(msg, say("too_many_images", msg.language,
                                           n=self.settings.images_per_message), error=True, key="too_many_images")
        if known is not None:  # a redelivered event: answered once, not counted twice
            await asyncio.to_thread(self._resend_if_waiting, known)
            return Accepted(job_id=known, duplicate=True)
        wait = await self.limiter.hit(msg.platform, msg.user_id)
        if wait is not None:
            log.info("rate limit: %s/%s must wait %ss", msg.platform, msg.user_id, wait)
            return self._reply_to(msg, say("rate_limited", msg.language, s=wait), error=True, key="rate_limited")
        sniffed, problem = _inspect_images(msg.images, self.settings.image_max_bytes)
        if problem:
            log.info("refused a picture from %s/%s: %s", msg.platform, msg.user_id, problem)
            return self._reply_to(msg, say(problem, msg.language,
                                           mb=self.settings.image_max_bytes // 1_048_576), error=True, key=problem)
        job_id, created = await asyncio.to_thread(self._persist, msg, scope, sniffed)
        if created:
            try:
                await asyncio.to_thread(self._enqueue, job_id)
            except Exception as exc:  # committed in SQL: the workers' reconciler sends it later
                log.warning("could not queue job %s now (%s); it stays pending in SQL", job_id, exc)
        return Accepted(job_id=job_id, duplicate=not created)

    def policy(self, platform: str) -> Policy:
        """The operator's access lists for ``platform``."""
        return policy_for(self.settings, platform)

    def _reply_to(self, msg: IncomingMessage, text: str, *, error: bool = False, key: str | None = None) -> Reply:
        return Reply(platform=msg.platform, chat_id=msg.chat_id, text=text, thread_id=msg.thread_id,
                     reply_to_message_id=msg.message_id, user_id=msg.user_id, error=error, key=key)

    def _resolve(self, msg: IncomingMessage) -> tuple[dict, str, int | None]:
        """The space's settings, the conversation key of ``msg`` and the job of an earlier
        delivery of the same platform event (None if new), in one transaction.

        A reply to one of the bot's messages continues that conversation when the
        replier belongs to it (:func:`bots.scope.may_join`); otherwise their own.
        """
        where = msg.where
        with self.sessions() as session:
            config = (repo.space_settings(session=session, platform=msg.platform, space_id=where.space_id)
                      if where.space_id else {})
            job = repo.find_turn(session=session, platform=msg.platform, platform_message_id=msg.message_id)
            known = job.id if job is not None else None
            if msg.reply_to_bot_id:
                earlier = repo.conversation_for_platform_message(
                    session=session, platform=msg.platform, platform_message_id=msg.reply_to_bot_id)
                if earlier is not None and may_join(earlier.scope_key, where, msg.user_id):
                    return config, earlier.scope_key, known
        scope = Scope.parse(str(config.get("scope", ""))) or self._default_scope(msg.platform)
        return config, scope_key(where, msg.user_id, scope), known

    def _default_scope(self, platform: str) -> Scope:
        return self.settings.wechat_scope if platform == "wechat" else Scope.USER

    def _reset(self, platform: str, scope: str) -> None:
        with self.sessions() as session:
            conversation = repo.get_or_create_conversation(session=session, platform=platform, scope_key=scope)
            repo.reset_conversation(session=session, conversation=conversation)
            session.commit()

    def _persist(self, msg: IncomingMessage, scope: str,
                 sniffed: list[tuple[str, int, int]]) -> tuple[int, bool]:
        parts: list[Part] = []
        with self.sessions() as session:
            for data, (mime, width, height) in zip(msg.images, sniffed, strict=True):
                image = repo.put_image(session=session, data=data, mime=mime, width=width, height=height)
                parts.append(ImagePart(image.sha256))
            if msg.text.strip():
                parts.append(TextPart(msg.text))
            conversation = repo.get_or_create_conversation(session=session, platform=msg.platform, scope_key=scope)
            _, job, created = repo.add_user_turn(
                session=session, conversation=conversation, parts=parts, platform=msg.platform,
                platform_message_id=msg.message_id, chat_id=msg.chat_id, thread_id=msg.thread_id,
                user_id=msg.user_id, user_name=msg.user_name, reply_to_id=msg.reply_to_id,
                language=msg.language)
            session.commit()  # enqueue only after commit: the worker must find the turn
            return job.id, created

    def _enqueue(self, job_id: int) -> None:
        """Send the turn to the queue if it is its conversation's next; a later turn is sent
        when the one before it ends (turns of a conversation run in order)."""
        with self.sessions() as session:
            if not repo.is_next(session=session, job_id=job_id):
                return
            repo.mark_dispatched(session=session, job_ids=[job_id])
            session.commit()
        send_turns(self.celery, self.settings, [job_id])

    def _resend_if_waiting(self, job_id: int) -> None:
        """A redelivered event whose turn is still queued: send it again (its first message
        may have been lost with the process that was sending it)."""
        with self.sessions() as session:
            job = repo.get_job(session=session, job_id=job_id)
            waiting = job is not None and job.status == JobState.QUEUED
        if waiting:
            try:
                self._enqueue(job_id)
            except Exception as exc:
                log.warning("could not re-send job %s (%s); the reconciler will", job_id, exc)

    # --- a space's settings (admins) -------------------------------------------------

    async def configure(self, msg: IncomingMessage, *, scope: str | None = None,
                        allow: str | None = None, disallow: str | None = None) -> Reply:
        """Change the settings of the space ``msg`` was written in, for its admins: the
        conversation ``scope`` (user, shared, thread), and channels the bot answers in
        (``allow`` adds one; the first limits the bot to the list; ``disallow`` removes
        one). Returns the reply that says the settings now in force, or why not."""
        lang = msg.language
        if not is_admin(self.policy(msg.platform), msg.where, msg.user_id):
            return self._reply_to(msg, say("admins_only", lang), error=True, key="admins_only")
        chosen = Scope.parse(scope) if scope is not None else None
        if scope is not None and chosen is None:
            return self._reply_to(msg, say("scope_usage", lang), error=True, key="scope_usage")
        values = await asyncio.to_thread(self._configure, msg.platform, msg.where.space_id, chosen, allow, disallow)
        channels = ", ".join(values.get("channels", ())) or say("any_channel", lang)
        in_force = Scope.parse(str(values.get("scope", ""))) or self._default_scope(msg.platform)
        text = say("scope_set", lang, scope=say(f"scope_{in_force.value}", lang), channels=channels)
        return self._reply_to(msg, text, key="scope_set")

    def _configure(self, platform: str, space_id: str, scope: Scope | None, allow: str | None,
                   disallow: str | None) -> dict:
        with self.sessions() as session:
            current = repo.space_settings(session=session, platform=platform, space_id=space_id)
            channels = set(current.get("channels", ()))
            channels |= {allow} if allow else set()
            channels -= {disallow} if disallow else set()
            changes: dict = {"channels": sorted(channels) or None}
            if scope is not None:
                changes["scope"] = scope.value
            values = repo.update_space_settings(session=session, platform=platform, space_id=space_id,
                                                changes=changes)
            session.commit()
            return values

    # --- where a turn stands --------------------------------------------------------

    async def status(self, job_id: int) -> TurnStatus:
        """Where turn ``job_id`` stands now (queued with its position, running, …)."""
        state, position, error = await asyncio.to_thread(self._job_state, job_id)
        if state == JobState.RUNNING:
            partial = await self.redis.get(events.partial_key(self.settings.namespace, job_id))
            if partial is not None:
                return TurnStatus(job_id, JobState.STREAMING, partial=partial.decode(errors="replace"))
        return TurnStatus(job_id, state, position=position, error=error)

    def _job_state(self, job_id: int) -> tuple[JobState, int | None, str | None]:
        with self.sessions() as session:
            job = repo.get_job(session=session, job_id=job_id)
            if job is None:
                raise LookupError(f"no job {job_id}")
            position = repo.queue_position(session=session, job_id=job_id) if job.status == JobState.QUEUED else None
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
                if status.state in FINAL_STATES:
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

    async def serve_replies(self, platform: str, send: Callable[[Reply], Awaitable[object]]) -> None:
        """Hand every finished reply of ``platform`` to ``send``, for good: the delivery
        loop of a frontend (cancel the task to stop it).

        ``send`` raises when the platform did not take the reply: the reply is offered
        again later. When it returns, the reply is acknowledged (delivered). A frontend
        that dies in between leaves a lease that ends after ``QVL_DELIVERY_LEASE_S``: the
        reply is offered again then (at most one reply per conversation is ever in flight).
        """
        while True:
            try:
                async for reply in self.replies(platform):
                    try:
                        await send(reply)
                    except asyncio.CancelledError:
                        raise
                    except Exception as exc:
                        log.warning("could not deliver the reply of job %s (%s: %s); offering it again later",
                                    reply.job_id, type(exc).__name__, exc)
                        await self.delivery.release(reply)
                        continue
                    await self.delivery.ack(reply)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("%s delivery loop failed; restarting it", platform)
                await asyncio.sleep(2)

    async def take_reply(self, job_id: int) -> Reply | None:
        """Claim and acknowledge the reply of one finished turn (for a frontend that waits
        on its own turn, such as the terminal); None if unfinished or already delivered."""
        reply = await self.delivery.take(job_id)
        if reply is not None:
            await self.delivery.ack(reply)
        return reply

    async def sent(self, reply: Reply, platform_message_id: str | None = None) -> None:
        """The platform accepted ``reply``: acknowledge it, and record the platform's id of
        its message (so replies to it continue the chat)."""
        await self.delivery.ack(reply, platform_message_id)


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
