"""Finished replies back to the frontends: exactly once, surviving restarts.

SQL is the truth (a job is delivered when its ``delivered_at`` is claimed); Redis
events only make delivery prompt. A frontend that was down finds its backlog.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import redis.asyncio as aioredis
from sqlalchemy.orm import Session, sessionmaker

from qvl import events
from qvl.messages import say
from qvl.protocol import FINAL_STATES, Event, ImagePart, JobState, Reply, ReplyImage, parts_text
from storage import repo

log = logging.getLogger(__name__)


class Delivery:
    """Claims finished jobs in SQL and turns them into :class:`Reply` records."""

    def __init__(self, sessions: sessionmaker[Session], redis: aioredis.Redis, namespace: str):
        self.sessions, self.redis, self.namespace = sessions, redis, namespace

    async def replies(self, platform: str, *, sweep_s: float = 5.0) -> AsyncIterator[Reply]:
        """Every finished turn of ``platform``, each yielded once across all processes.

        First the backlog (replies finished while the frontend was away), then live
        ones as workers announce them; a sweep of SQL every ``sweep_s`` catches any
        announcement lost on the way. Each reply is claimed in SQL before it is yielded.
        """
        pubsub = self.redis.pubsub()
        await pubsub.subscribe(events.channel(self.namespace, platform))
        try:
            while True:  # subscribed first, then swept: nothing finishes unseen in between
                for reply in await asyncio.to_thread(self._claim_backlog, platform):
                    yield reply
                deadline = asyncio.get_running_loop().time() + sweep_s
                while (left := deadline - asyncio.get_running_loop().time()) > 0:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=left)
                    event = Event.decode(message["data"]) if message else None
                    if event and event.state in FINAL_STATES:
                        reply = await asyncio.to_thread(self._claim_one, event.job_id)
                        if reply is not None:
                            yield reply
        finally:
            await pubsub.aclose()

    def _claim_backlog(self, platform: str) -> list[Reply]:
        out = []
        with self.sessions() as session:
            for job in repo.undelivered_jobs(session=session, platform=platform):
                if repo.claim_delivery(session=session, job_id=job.id):
                    session.commit()
                    out.append(self._reply_for(session, job))
                else:
                    session.rollback()
        return out

    def _reply_for(self, session: Session, job) -> Reply:
        user = job.message
        base = dict(platform=job.platform, chat_id=user.chat_id, job_id=job.id, thread_id=user.thread_id,
                    reply_to_message_id=user.platform_message_id, user_id=user.user_id)
        if job.status != JobState.DONE or job.reply_message is None:
            return Reply(text=job.error or say("sorry", user.language), error=True, **base)
        parts = job.reply_message.parts
        text = parts_text(parts)
        images = []
        for n, part in enumerate(p for p in parts if isinstance(p, ImagePart)):
            blob = repo.get_image(session=session, sha256=part.sha256)
            if blob is not None:
                images.append(ReplyImage(blob.data, blob.mime, f"boxes-{job.id}-{n + 1}.jpg"))
        return Reply(text=text, images=tuple(images), **base)

    async def take(self, job_id: int) -> Reply | None:
        """Claim the reply of one finished turn (for frontends that wait on their own turn,
        such as the terminal); None if it is not finished or was delivered already."""
        return await asyncio.to_thread(self._claim_one, job_id)

    def _claim_one(self, job_id: int) -> Reply | None:
        with self.sessions() as session:
            job = repo.get_job(session=session, job_id=job_id)
            if job is None or job.status not in (JobState.DONE, JobState.FAILED):
                return None
            if not repo.claim_delivery(session=session, job_id=job_id):
                return None
            session.commit()
            return self._reply_for(session, job)

    async def sent(self, reply: Reply, platform_message_id: str) -> None:
        """Record the platform's id of a delivered reply, so replies to it continue the chat."""
        if reply.job_id is None:
            return
        await asyncio.to_thread(self._record_sent, reply.job_id, platform_message_id)

    def _record_sent(self, job_id: int, platform_message_id: str) -> None:
        with self.sessions() as session:
            job = repo.get_job(session=session, job_id=job_id)
            if job is not None and job.reply_message_id is not None:
                repo.set_platform_message_id(session=session, message_id=job.reply_message_id,
                                             platform_message_id=platform_message_id)
                session.commit()
