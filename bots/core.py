"""The core: the one API every frontend calls. Platform-agnostic, async.

An adapter turns a native event into an :class:`IncomingMessage`, calls
:meth:`Core.handle`, shows :meth:`Core.watch` while the user waits, and sends
what :meth:`Core.replies` yields. It never touches SQL, Redis or Celery itself.
"""

from __future__ import annotations

import asyncio
import logging
import unicodedata
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace

import redis.asyncio as aioredis
from redis.exceptions import RedisError
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from bots.access import Policy, allowed, is_admin, policy_for
from bots.commands import argument_of, command_of
from bots.delivery import Delivery
from bots.pictures import inspect as inspect_pictures
from bots.ratelimit import RateLimiter
from bots.scope import may_join, scope_key, space_prefix
from qvl import events
from qvl.dispatch import send_turns
from qvl.errors import UserFacingError
from qvl.messages import language_of, say
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

DUPLICATE = "duplicate"  # the key of the Reply to an event already answered: adapters send nothing
OVER_SHARE_RETRY_S = 5  # what a refusal for fairness suggests as Retry-After (the web API's 429)
SEEN_TTL_S = 24 * 3600  # how long an event answered at once is remembered (turns: for good, in SQL)

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

    async def workers_alive(self) -> int:
        """How many workers said they were alive in the last ``events.ALIVE_TTL_S`` seconds
        (0: a turn queued now waits until one starts)."""
        pattern = events.alive_pattern(self.settings.namespace)
        return len([k async for k in self.redis.scan_iter(match=pattern, count=1000)])

    def _check_database(self) -> None:
        with self.sessions() as session:
            session.execute(select(Conversation.id).limit(1))

    # --- incoming -------------------------------------------------------------------

    async def handle(self, msg: IncomingMessage, *,
                     pictures: Callable[[], Awaitable[tuple[bytes, ...]]] | None = None) -> Accepted | Reply:
        """Take one message: decide whether it is served and whose conversation it joins
        (from where it was written and the space's settings), answer commands at once,
        queue a turn.

        The text is normalised first (:func:`clean_text`); a text longer than
        ``QVL_TEXT_MAX_CHARS`` is refused. Every platform event is answered once: a turn
        delivered twice returns the first turn's job, marked ``duplicate``, and queues
        nothing; a command or refusal delivered twice returns a Reply with
        ``key="duplicate"`` (and no text) the second time, which adapters do not send.
        A message in a place the bot does not serve
        gets a Reply with ``key="not_allowed"``, which a frontend may keep quiet about.
        ``pictures``, when given, downloads the message's pictures (attachments, links):
        it is called only for a message the bot serves. Its ``UserFacingError`` propagates.
        """
        msg = _normalised(msg)
        if await self._seen(msg):  # a redelivered event that was answered at once: answered once
            return self._duplicate(msg)
        if len(msg.text) > self.settings.text_max_chars:
            log.info("refused a %d-character message from %s/%s", len(msg.text), msg.platform, msg.user_id)
            language = msg.language or language_of(msg.text)
            return await self._once(msg, say("text_too_long", language, n=len(msg.text),
                                             limit=self.settings.text_max_chars), key="text_too_long")
        command = command_of(msg.text)
        if command == "help":
            return await self._once(msg, say("help", msg.language), key="help", error=False)
        config, scope, known, pending = await asyncio.to_thread(self._resolve, msg)
        if known is not None:  # a redelivered event: answered once, not counted twice
            await asyncio.to_thread(self._resend_if_waiting, known)
            return Accepted(job_id=known, duplicate=True)
        if not allowed(self.policy(msg.platform), config, msg.where):
            log.info("not serving %s/%s in %s: not allowed", msg.platform, msg.user_id, msg.chat_id)
            return await self._once(msg, say("not_allowed", msg.language), key="not_allowed")
        if command == "reset":
            if not await self._mark_seen(msg):
                return self._duplicate(msg)
            await asyncio.to_thread(self._reset, msg.platform, scope)
            return self._reply_to(msg, say("reset", msg.language), key="reset")
        if command == "scope":
            if not await self._mark_seen(msg):
                return self._duplicate(msg)
            return await self.configure(msg, scope=argument_of(msg.text) or "?")
        over = self._over_share(msg, pending)
        if over is not None:  # passes as the earlier turns end: a few seconds, a guess
            return await self._once(msg, over, key="over_share", retry_after_s=OVER_SHARE_RETRY_S)
        if pictures is not None:
            try:
                msg = replace(msg, images=(*msg.images, *await pictures()))
            except UserFacingError:  # the adapter says why: once
                if not await self._mark_seen(msg):
                    return self._duplicate(msg)
                raise
        if not msg.text.strip() and not msg.images:
            return await self._once(msg, say("empty", msg.language), key="empty")
        if len(msg.images) > self.settings.images_per_message:
            return await self._once(msg, say("too_many_images", msg.language, n=self.settings.images_per_message),
                                    key="too_many_images")
        wait = await self.limiter.hit(msg.platform, msg.user_id)
        if wait is not None:
            log.info("rate limit: %s/%s must wait %ss", msg.platform, msg.user_id, wait)
            return await self._once(msg, say("rate_limited", msg.language, s=wait), key="rate_limited",
                                    retry_after_s=wait)
        sniffed, problem, values = inspect_pictures(msg.images, self.settings)
        if problem:
            log.info("refused a picture from %s/%s: %s %s", msg.platform, msg.user_id, problem, values)
            return await self._once(msg, say(problem, msg.language, **values), key=problem)
        job_id, created, due = await asyncio.to_thread(self._persist, msg, scope, sniffed)
        if due:
            try:
                await asyncio.to_thread(send_turns, self.celery, self.settings, [job_id])
            except Exception as exc:  # committed in SQL: the workers' reconciler sends it later
                log.warning("could not queue job %s now (%s); it stays pending in SQL", job_id, exc)
        return Accepted(job_id=job_id, duplicate=not created)

    # --- each platform event answered once ------------------------------------------
    #
    # A turn is recorded in SQL under its platform event, for good: a redelivered turn is
    # found there (``_resolve``). An event answered at once (a command, a refusal) leaves
    # only a short-lived mark in Redis, set before its reply is made: a redelivery within
    # ``SEEN_TTL_S`` gets a Reply with ``key="duplicate"``, which adapters do not send.

    def _seen_key(self, msg: IncomingMessage) -> str:
        return f"{self.settings.namespace}:seen:{msg.platform}:{msg.message_id}"

    async def _seen(self, msg: IncomingMessage) -> bool:
        """Whether ``msg``'s event was answered at once before (within ``SEEN_TTL_S``)."""
        try:
            return bool(await self.redis.exists(self._seen_key(msg)))
        except RedisError as exc:  # without Redis the event is answered (perhaps twice)
            log.warning("could not check whether %s/%s was seen (%s)", msg.platform, msg.message_id, exc)
            return False

    async def _mark_seen(self, msg: IncomingMessage) -> bool:
        """Mark ``msg``'s event answered; False when another delivery of it got there first."""
        try:
            return bool(await self.redis.set(self._seen_key(msg), b"1", nx=True, ex=SEEN_TTL_S))
        except RedisError as exc:
            log.warning("could not mark %s/%s as seen (%s)", msg.platform, msg.message_id, exc)
            return True

    async def _once(self, msg: IncomingMessage, text: str, *, key: str, error: bool = True,
                    retry_after_s: int | None = None) -> Reply:
        """The immediate reply ``text`` to ``msg``, or a duplicate if its event was answered."""
        if not await self._mark_seen(msg):
            return self._duplicate(msg)
        return replace(self._reply_to(msg, text, error=error, key=key), retry_after_s=retry_after_s)

    def _duplicate(self, msg: IncomingMessage) -> Reply:
        log.info("%s event %s was delivered again: already answered", msg.platform, msg.message_id)
        return self._reply_to(msg, "", key=DUPLICATE)

    def policy(self, platform: str) -> Policy:
        """The operator's access lists for ``platform``."""
        return policy_for(self.settings, platform)

    def _reply_to(self, msg: IncomingMessage, text: str, *, error: bool = False, key: str | None = None) -> Reply:
        return Reply(platform=msg.platform, chat_id=msg.chat_id, text=text, thread_id=msg.thread_id,
                     reply_to_message_id=msg.message_id, user_id=msg.user_id, error=error, key=key)

    def _resolve(self, msg: IncomingMessage) -> tuple[dict, str, int | None, tuple[int, int]]:
        """The space's settings, the conversation key of ``msg``, the job of an earlier
        delivery of the same platform event (None if new), and how many turns its writer
        and its space have queued or running, in one transaction.

        A reply to one of the bot's messages continues that conversation when the
        replier belongs to it (:func:`bots.scope.may_join`); otherwise their own.
        """
        where = msg.where
        with self.sessions() as session:
            config = (repo.space_settings(session=session, platform=msg.platform, space_id=where.space_id)
                      if where.space_id else {})
            job = repo.find_turn(session=session, platform=msg.platform, platform_message_id=msg.message_id)
            known = job.id if job is not None else None
            capped = self.settings.user_max_pending, self.settings.space_max_pending
            pending = repo.pending_turns(session=session, platform=msg.platform,
                                         user_id=msg.user_id if capped[0] else None,
                                         scope_prefix=space_prefix(where) if capped[1] else None)
            if msg.reply_to_bot_id:
                earlier = repo.conversation_for_platform_message(
                    session=session, platform=msg.platform, platform_message_id=msg.reply_to_bot_id)
                if earlier is not None and may_join(earlier.scope_key, where, msg.user_id):
                    return config, earlier.scope_key, known, pending
        scope = Scope.parse(str(config.get("scope", ""))) or self._default_scope(msg.platform)
        return config, scope_key(where, msg.user_id, scope), known, pending

    def _over_share(self, msg: IncomingMessage, pending: tuple[int, int]) -> str | None:
        """Why ``msg`` is refused for fairness, or None: one person may have at most
        ``QVL_USER_MAX_PENDING`` turns queued or running, one server or group at most
        ``QVL_SPACE_MAX_PENDING``, so that nobody's first question waits behind someone
        else's tenth."""
        mine, space = pending
        language = msg.language or language_of(msg.text)
        user_cap, space_cap = self.settings.user_max_pending, self.settings.space_max_pending
        if user_cap and mine >= user_cap:
            log.info("fair share: %s/%s has %d turns pending", msg.platform, msg.user_id, mine)
            return say("over_share_user", language, n=mine)
        if space_cap and msg.where.space_id is not None and space >= space_cap:
            log.info("fair share: %s space %s has %d turns pending", msg.platform, msg.where.space_id, space)
            return say("over_share_space", language, n=space)
        return None

    def _default_scope(self, platform: str) -> Scope:
        defaults = {"wechat": self.settings.wechat_scope, "wecom": self.settings.wecom_scope}
        return defaults.get(platform, Scope.USER)

    def _reset(self, platform: str, scope: str) -> None:
        with self.sessions() as session:
            conversation = repo.get_or_create_conversation(session=session, platform=platform, scope_key=scope)
            repo.reset_conversation(session=session, conversation=conversation)
            session.commit()

    def _persist(self, msg: IncomingMessage, scope: str,
                 sniffed: list[tuple[str, int, int]]) -> tuple[int, bool, bool]:
        """Store the turn; return (job id, whether it is new, whether to send it now: a new
        turn that is its conversation's next, recorded as sent in the same transaction)."""
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
                language=msg.language, max_new_tokens=msg.max_new_tokens)
            due = created and repo.dispatch_if_next(session=session, job_id=job.id)
            session.commit()  # enqueue only after commit: the worker must find the turn
            return job.id, created, due

    def _resend_if_waiting(self, job_id: int) -> None:
        """A redelivered event whose turn is still queued and its conversation's next: send
        it again (its first message may have been lost with the process that was sending it;
        a later turn is sent when the one before it ends)."""
        try:
            with self.sessions() as session:
                due = repo.dispatch_if_next(session=session, job_id=job_id)
                session.commit()
            if due:
                send_turns(self.celery, self.settings, [job_id])
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
        Replies go out one at a time, each leased just before it is sent, so a frontend
        that dies costs at most one possible duplicate.
        """
        while True:
            try:
                await self.delivery.serve(platform, send)
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


def clean_text(text: str) -> str:
    """``text`` as every later step can take it: a surrogate pair written as two code points
    joined, a lone surrogate (from broken UTF-8 or a hostile client) replaced by U+FFFD,
    NULs dropped, NFC composed. Never raises, and the result always encodes as UTF-8."""
    joined = text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")
    return unicodedata.normalize("NFC", joined.replace("\x00", ""))


def _normalised(msg: IncomingMessage) -> IncomingMessage:
    name = clean_text(msg.user_name) if msg.user_name else msg.user_name
    return replace(msg, text=clean_text(msg.text), user_name=name)
