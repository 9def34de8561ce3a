"""Finished replies back to the frontends: acknowledged leases, in order, surviving restarts.

SQL is the truth. A frontend takes a reply on a lease (``QVL_DELIVERY_LEASE_S``) and
acknowledges it once the platform accepted it; a reply not acknowledged in time (the
frontend died, the send failed) is offered again. At most one reply per conversation
is out at a time, oldest first, so a crash costs at most one possible duplicate, never
a loss, and a conversation's replies arrive in order. Redis events only make delivery
prompt; a sweep of SQL finds what they missed and the backlog of a frontend that was down.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor

import redis.asyncio as aioredis
from sqlalchemy.orm import Session, sessionmaker

from qvl import events
from qvl.messages import say
from qvl.protocol import FINAL_STATES, Event, ImagePart, JobState, Reply, ReplyImage, parts_text
from storage import repo

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 8  # a reply the platform refused this often is given up, with a log line
BATCH = 8  # replies read from the backlog at once (one per conversation); each is leased as it goes out


class Delivery:
    """Leases finished jobs' replies in SQL and turns them into :class:`Reply` records."""

    def __init__(self, sessions: sessionmaker[Session], redis: aioredis.Redis, namespace: str,
                 *, lease_s: float = 60.0):
        self.sessions, self.redis, self.namespace, self.lease_s = sessions, redis, namespace, lease_s
        self._executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="qvl-delivery")

    async def replies(self, platform: str, *, sweep_s: float = 5.0) -> AsyncIterator[Reply]:
        """Finished replies of ``platform``, each leased to the caller before it is yielded;
        acknowledge each with :meth:`ack` (or :meth:`release` it).

        First the backlog (one reply per conversation, oldest first), then live ones as
        workers announce them; a sweep of SQL every ``sweep_s`` catches announcements lost
        on the way, replies whose lease ended, and replies that became due when the one
        before them in their conversation was acknowledged.
        """
        async for due in self._due(platform, sweep_s):
            for job in due:
                # Leased only now, when the caller asks for it: a lease never runs out
                # while its reply waits behind others.
                reply = await self._run(self._lease_read, job)
                if reply is not None:
                    yield reply

    async def serve(self, platform: str, send: Callable[[Reply], Awaitable[object]], *,
                    sweep_s: float = 5.0) -> None:
        """Hand every finished reply of ``platform`` to ``send``, one at a time, for good.

        When ``send`` returns, the reply is delivered; when it raises, the reply is offered
        again later (:meth:`release`). Each reply costs one transaction: the one that leases
        it also acknowledges the reply sent before it, or, when that reply's conversation
        has its next reply ready (it finished while the first was out), leases that one
        first, so a conversation's replies follow each other at once and in order.
        """
        async for due in self._due(platform, sweep_s):
            waiting, sent = deque(due), None
            while waiting or sent is not None:
                reply, took = await self._run(self._ack_and_lease, sent, waiting[0] if waiting else None)
                sent = None
                if took:
                    waiting.popleft()
                if reply is None:
                    continue
                try:
                    await send(reply)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    log.warning("could not deliver the reply of job %s (%s: %s); offering it again later",
                                reply.job_id, type(exc).__name__, exc)
                    await self.release(reply)
                    continue
                sent = reply.job_id

    async def _due(self, platform: str, sweep_s: float) -> AsyncIterator[list]:
        """Batches of finished jobs whose replies may be offered now: the backlog first,
        then each time workers announce finished turns, or every ``sweep_s``."""
        pubsub = self.redis.pubsub()
        await pubsub.subscribe(events.channel(self.namespace, platform))
        try:
            while True:  # subscribed first, then swept: nothing finishes unseen in between
                due = await self._run(self._backlog, platform)
                if due:
                    yield due
                if len(due) == BATCH:
                    continue  # more may be waiting
                await self._finished_one(pubsub, sweep_s)
        finally:
            await pubsub.aclose()

    def _run(self, fn: Callable, *args) -> Awaitable:
        """Run ``fn(*args)`` (a short SQL transaction) on the delivery's own threads: under
        load, replies do not wait behind the new turns' work in the default executor."""
        return asyncio.get_running_loop().run_in_executor(self._executor, functools.partial(fn, *args))

    async def _finished_one(self, pubsub, timeout_s: float) -> None:
        """Wait until a worker announces a finished turn (or ``timeout_s`` passes), then
        take every announcement already here: under load, many finished turns cost one
        read of the backlog, not one each."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        finished = False
        while not finished and (left := deadline - loop.time()) > 0:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=left)
            while message is not None:
                event = Event.decode(message["data"])
                finished = finished or (event is not None and event.state in FINAL_STATES)
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0)

    def _backlog(self, platform: str) -> list:
        """Up to ``BATCH`` finished jobs whose replies may be offered now (one per
        conversation), oldest first, read with their question and answer."""
        with self.sessions() as session:
            return repo.undelivered_jobs(session=session, platform=platform, limit=BATCH)

    def _lease_read(self, job) -> Reply | None:
        """Lease ``job``'s reply (read a moment ago by :meth:`_backlog`: a finished turn's
        answer does not change, and the lease itself checks that it may still be offered)."""
        with self.sessions() as session:
            return self._lease(session, job)

    def _lease(self, session: Session, job) -> Reply | None:
        """Lease ``job``'s reply and commit (with whatever the transaction did before)."""
        attempts = job.delivery_attempts  # the count before this claim
        leased = repo.claim_delivery(session=session, job_id=job.id, lease_s=self.lease_s)
        session.commit()  # a failed claim changed nothing
        if not leased:
            return None
        if attempts >= MAX_ATTEMPTS:
            log.error("giving up the reply of job %s after %d failed deliveries", job.id, attempts)
            repo.ack_delivery(session=session, job_id=job.id)
            session.commit()
            return None
        return self._reply_for(session, job)

    def _reply_for(self, session: Session, job) -> Reply:
        user = job.message
        base = dict(platform=job.platform, chat_id=user.chat_id, job_id=job.id, thread_id=user.thread_id,
                    reply_to_message_id=user.platform_message_id, user_id=user.user_id)
        if job.status != JobState.DONE or job.reply_message is None:
            return Reply(text=job.error or say("sorry", user.language), error=True, **base)
        parts = job.reply_message.parts
        images = []
        for n, part in enumerate(p for p in parts if isinstance(p, ImagePart)):
            blob = repo.get_image(session=session, sha256=part.sha256)
            if blob is not None:
                images.append(ReplyImage(blob.data, blob.mime, f"boxes-{job.id}-{n + 1}.jpg"))
        return Reply(text=parts_text(parts), images=tuple(images), **base)

    async def take(self, job_id: int) -> Reply | None:
        """Lease the reply of one finished turn (for frontends that wait on their own turn,
        such as the terminal); None if it is not due or was delivered already."""
        return await self._run(self._claim_one, job_id)

    def _claim_one(self, job_id: int) -> Reply | None:
        with self.sessions() as session:
            job = repo.get_job(session=session, job_id=job_id)
            if job is None or job.status not in (JobState.DONE, JobState.FAILED):
                return None
            return self._lease(session, job)

    async def ack(self, reply: Reply, platform_message_id: str | None = None) -> None:
        """The platform accepted ``reply``: it is delivered. With the platform's id of its
        message, replies to that message continue the conversation."""
        if reply.job_id is not None:
            await self._run(self._ack, reply.job_id, platform_message_id)

    def _ack(self, job_id: int, platform_message_id: str | None) -> None:
        with self.sessions() as session:
            repo.ack_delivery(session=session, job_id=job_id)
            job = repo.get_job(session=session, job_id=job_id) if platform_message_id else None
            if job is not None and job.reply_message_id is not None:
                repo.set_platform_message_id(session=session, message_id=job.reply_message_id,
                                             platform_message_id=platform_message_id)
            session.commit()

    def _ack_and_lease(self, sent: int | None, job) -> tuple[Reply | None, bool]:
        """In one transaction: acknowledge job ``sent`` (when not None), then lease the next
        reply of its conversation if that one is due, else ``job``'s (when not None).
        Returns the leased reply (None if there was none, or another frontend has it) and
        whether it was ``job``'s turn to be leased."""
        with self.sessions() as session:
            following = None
            if sent is not None:
                repo.ack_delivery(session=session, job_id=sent)
                following = repo.following_undelivered(session=session, job_id=sent)
            chosen = following if following is not None else job
            if chosen is None:
                session.commit()
                return None, False
            return self._lease(session, chosen), following is None

    async def release(self, reply: Reply) -> None:
        """Sending ``reply`` failed: offer it again after a short, growing pause."""
        if reply.job_id is not None:
            await self._run(self._release, reply.job_id)

    def _release(self, job_id: int) -> None:
        with self.sessions() as session:
            job = repo.get_job(session=session, job_id=job_id)
            attempts = job.delivery_attempts if job is not None else 1
            repo.release_delivery(session=session, job_id=job_id, retry_in_s=min(60.0, 2.0 ** attempts))
            session.commit()
