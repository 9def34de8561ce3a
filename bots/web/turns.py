"""The web frontend's side of the core: a key's turns in, where they stand, answers out.

Conversations: one key is one "space" (``Where.space_id = keyN``) in which each page
conversation (``p`` + a token the page made) and each API history (``a`` + a hash) is a
channel; the core derives the scope key from that, as for any platform, so one key
never reaches another key's conversations.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

from bots.core import Core
from bots.pictures import inspect as inspect_pictures
from bots.ratelimit import RateLimiter
from bots.scope import scope_key
from bots.web.auth import Principal, Signer
from qvl.messages import say
from qvl.protocol import (
    Accepted,
    ImagePart,
    IncomingMessage,
    JobState,
    Part,
    Reply,
    Scope,
    TextPart,
    TurnStatus,
    Where,
)
from qvl.settings import Settings
from storage import history, keys, repo
from storage.models import Conversation, Job

log = logging.getLogger(__name__)

PLATFORM = "web"
ALIVE_CACHE_S = 1.0
THREAD_TTL_S = 24 * 3600  # an API conversation is continued without copying its history this long
EXT = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp", "image/gif": "gif"}


class BadRequest(Exception):
    """A request the web frontend refuses before the core sees it; ``key`` names the
    message-table entry when there is one."""

    def __init__(self, message: str, *, status: int = 400, code: str | None = None):
        super().__init__(message)
        self.message, self.status, self.code = message, status, code


def where_for(principal: Principal, channel: str) -> Where:
    return Where(space_id=principal.user_id, channel_id=channel)


def conversation_key(principal: Principal, channel: str) -> str:
    """The scope key the core gives ``channel`` of ``principal`` (see bots/scope.py)."""
    return scope_key(where_for(principal, channel), principal.user_id, Scope.USER)


def page_prefix(principal: Principal) -> str:
    return conversation_key(principal, "p").rsplit(":u", 1)[0]


def channel_of(principal: Principal, key: str) -> str | None:
    """The page channel of scope key ``key`` if it is one of ``principal``'s, else None."""
    head = f"g{principal.user_id}:c"
    tail = f":u{principal.user_id}"
    if key.startswith(head) and key.endswith(tail):
        return key[len(head):-len(tail)]
    return None


def history_digest(turns: Sequence[tuple[str, Sequence[Part | bytes]]]) -> str:
    """A hash of a history's roles, texts and pictures (by content hash)."""
    return hashlib.sha256(json.dumps([[role, [_part_id(p) for p in parts]] for role, parts in turns],
                                     ensure_ascii=False).encode()).hexdigest()


def _part_id(part: Part | bytes) -> str:
    if isinstance(part, bytes):
        return "i:" + hashlib.sha256(part).hexdigest()
    return f"t:{part.text}" if isinstance(part, TextPart) else f"i:{getattr(part, 'sha256', '')}"


class Web:
    """One per web server process: a core, the key limits and the link signer."""

    def __init__(self, settings: Settings, *, redis_url: str, signer: Signer):
        self.settings = settings
        self.core = Core(settings, redis_url_=redis_url)
        self.sessions = self.core.sessions
        self.signer = signer
        self._delivery: asyncio.Task | None = None
        self._alive: tuple[int, float] = (0, 0.0)  # workers seen alive, until when that answer holds

    async def start(self) -> None:
        """Check Redis and SQL; take web replies off the delivery queue as they finish
        (the page and the API read answers from SQL, so a reply is out once stored)."""
        await self.core.check()
        self._delivery = asyncio.create_task(self.core.serve_replies(PLATFORM, _stored))

    async def close(self) -> None:
        if self._delivery is not None:
            self._delivery.cancel()
            await asyncio.gather(self._delivery, return_exceptions=True)
        await self.core.close()

    async def workers_alive(self) -> int:
        """:meth:`Core.workers_alive`, a positive answer kept for ``ALIVE_CACHE_S`` (it scans
        Redis's keys: tens of milliseconds on a shared Redis, on every request otherwise).
        A worker is taken for alive up to ``events.ALIVE_TTL_S`` after it died anyway."""
        now = time.monotonic()
        if self._alive[1] > now:
            return self._alive[0]
        alive = await self.core.workers_alive()
        self._alive = (alive, now + ALIVE_CACHE_S if alive else 0.0)
        return alive

    async def submit(self, principal: Principal, *, channel: str, message_id: str, text: str,
                     images: tuple[bytes, ...] = (), language: str | None = None,
                     max_new_tokens: int | None = None) -> Accepted | Reply:
        """Hand one message to the core, after the key's own rate limit."""
        if principal.rate_limit:
            limiter = RateLimiter(self.core.redis, namespace=self.settings.namespace,
                                  limit=principal.rate_limit, window_s=self.settings.rate_limit_window_s)
            wait = await limiter.hit("web-key", str(principal.key_id))
            if wait is not None:
                return Reply(platform=PLATFORM, chat_id=channel, text=say("rate_limited", language, s=wait),
                             error=True, key="rate_limited", retry_after_s=wait)
        msg = IncomingMessage(platform=PLATFORM, chat_id=channel, user_id=principal.user_id,
                              message_id=message_id, text=text, images=images,
                              where=where_for(principal, channel), language=language, user_name=principal.name,
                              max_new_tokens=max_new_tokens)
        return await self.core.handle(msg)

    def watch(self, job_id: int) -> AsyncIterator[TurnStatus]:
        return self.core.watch(job_id, poll_s=0.25)

    async def outcome(self, job_id: int) -> history.Outcome | None:
        return await asyncio.to_thread(self._outcome, job_id)

    def _outcome(self, job_id: int) -> history.Outcome | None:
        with self.sessions() as session:
            return history.outcome(session=session, job_id=job_id)

    async def owns_job(self, principal: Principal, job_id: int) -> bool:
        """Whether turn ``job_id`` is in one of ``principal``'s conversations."""
        return await asyncio.to_thread(self._owns_job, principal, job_id)

    def _owns_job(self, principal: Principal, job_id: int) -> bool:
        with self.sessions() as session:
            job = session.get(Job, job_id)
            if job is None or job.platform != PLATFORM:
                return False
            row = session.get(Conversation, job.conversation_id)
            return row is not None and channel_of(principal, row.scope_key) is not None

    async def conversations(self, principal: Principal) -> list[history.Summary]:
        def read():
            with self.sessions() as session:
                return history.conversations(session=session, platform=PLATFORM, prefix=page_prefix(principal))
        return await asyncio.to_thread(read)

    async def entries(self, principal: Principal, channel: str) -> list[history.Entry]:
        def read():
            with self.sessions() as session:
                return history.entries(session=session, platform=PLATFORM,
                                       scope_key=conversation_key(principal, channel))
        return await asyncio.to_thread(read)

    async def picture(self, key_id: int, sha256: str):
        """A stored picture's (bytes, MIME type) for a link signed for ``key_id``, unless that
        key was revoked or the picture is unknown (None)."""
        def read():
            with self.sessions() as session:
                key = keys.get_key(session=session, key_id=key_id)
                if key is None or key.revoked_at is not None:
                    return None
                image = repo.get_image(session=session, sha256=sha256)
                return (image.data, image.mime) if image is not None else None
        return await asyncio.to_thread(read)

    def link(self, principal: Principal, sha256: str, *, base: str = "") -> str:
        """A signed link to a stored picture, for ``principal`` only."""
        return f"{base}/v1/files/{sha256}?key={principal.key_id}&sig={self.signer.file_sig(principal.key_id, sha256)}"

    def _thread_key(self, principal: Principal, digest: str) -> str:
        return f"{self.settings.namespace}:web:thread:{principal.key_id}:{digest}"

    async def claim_channel(self, principal: Principal, digest: str) -> str | None:
        """The API conversation whose turns so far are the history with ``digest``, taken
        (once: a second request with the same history starts a conversation of its own)."""
        found = await self.core.redis.getdel(self._thread_key(principal, digest))
        return found.decode() if found else None

    async def remember_channel(self, principal: Principal, digest: str, channel: str) -> None:
        """``channel``'s turns now hash to ``digest``: the client's next request continues it."""
        await self.core.redis.set(self._thread_key(principal, digest), channel, ex=THREAD_TTL_S)

    async def import_history(self, principal: Principal, channel: str,
                             turns: Sequence[tuple[str, Sequence[Part | bytes]]]) -> None:
        """Record an API client's history as finished turns of ``channel``, once (when the
        conversation has no messages yet). Pictures are checked as at the door; raises
        :class:`BadRequest` for a bad one."""
        if not turns:
            return
        await asyncio.to_thread(self._import, principal, channel, turns)

    def _import(self, principal: Principal, channel: str, turns) -> None:
        with self.sessions() as session:
            conversation = repo.get_or_create_conversation(
                session=session, platform=PLATFORM, scope_key=conversation_key(principal, channel))
            if history.entries(session=session, platform=PLATFORM, scope_key=conversation.scope_key, limit=1):
                session.rollback()
                return
            stored = []
            for role, parts in turns:
                out: list[Part] = []
                for part in parts:
                    if isinstance(part, bytes):
                        out.append(ImagePart(self._put_picture(session, part)))
                    else:
                        out.append(part)
                stored.append((role, out))
            history.import_turns(session=session, conversation=conversation, platform=PLATFORM, turns=stored)
            session.commit()

    def _put_picture(self, session, data: bytes) -> str:
        sniffed, problem, values = inspect_pictures((data,), self.settings)
        if problem:
            raise BadRequest(say(problem, None, **values), status=413 if problem == "image_too_large" else 400,
                             code=problem)
        mime, width, height = sniffed[0]
        return repo.put_image(session=session, data=data, mime=mime, width=width, height=height).sha256

    def outcome_json(self, principal: Principal, outcome: history.Outcome, *, base: str = "",
                     pictures: Sequence[str] = ()) -> dict[str, Any]:
        """qvl's extension of an answer: the cleaned text, the boxes in pixels of the original
        picture with its 1-based index among ``pictures`` (the request's, in order), and a
        link to each annotated picture."""
        index = {sha: n + 1 for n, sha in reversed(list(enumerate(pictures)))}
        boxes = []
        for part in outcome.boxes:
            original = outcome.originals.get(part.image)
            for box in part.boxes:
                boxes.append({"label": box.label, "box": list(box.box), "picture": index.get(part.image),
                              "image": part.image, "width": original.width if original else None,
                              "height": original.height if original else None})
        return {
            "text": outcome.text, "error": outcome.error, "boxes": boxes,
            "annotated": [{"url": self.link(principal, p.sha256, base=base), "sha256": p.sha256,
                           "picture": index.get(original), "image": original}
                          for original, p in outcome.annotated.items()],
            "originals": {sha: {"url": self.link(principal, sha, base=base), "width": p.width, "height": p.height}
                          for sha, p in outcome.originals.items()},
        }


async def _stored(reply: Reply) -> None:
    """The web frontend's delivery: the answer is in SQL, where the page and API read it."""


async def progress(web: Web, principal: Principal, job_id: int, *, base: str = "",
                   pictures: Sequence[str] = ()) -> AsyncIterator[dict[str, Any]]:
    """Where a turn stands, as the page and the API stream it: ``queued`` (position),
    ``running``, ``text`` (the cleaned text so far), then ``done`` with the answer."""
    async for status in web.watch(job_id):
        if status.state == "queued":
            yield {"type": "queued", "position": status.position}
        elif status.state == "running":
            yield {"type": "running"}
        elif status.state == "streaming" and status.partial:
            yield {"type": "text", "text": status.partial}
    outcome = await web.outcome(job_id)
    if outcome is None:  # cannot happen after a final status, but never hang a client on it
        outcome = history.Outcome(JobState.FAILED, "", error=True)
    done = web.outcome_json(principal, outcome, base=base, pictures=pictures)
    if outcome.error and not done["text"]:
        done["text"] = say("sorry", None)
    yield {"type": "done", "job_id": job_id, **done}
