"""Answers on WeCom: the native stream while the user waits, and delivery of finished replies.

Each question gets a stream, answered on its callback's ``req_id``: the queue position
or "thinking" at once, then the answer as it is written (the whole text so far, at most
once every ``QVL_WECOM_STREAM_INTERVAL_S``), and the finished reply in the final frame
with the annotated picture. A stream must end within WeCom's reply window and lives only
as long as its connection: a reply that comes later, or after a reconnect, is sent anew
(``aibot_send_msg``, text only: that path takes no pictures), once.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from bots.core import Core
from bots.text import split_message
from bots.wecom.sdk import WSClient
from bots.wecom.translate import MAX_CHARS, MAX_PICTURES, PLATFORM, language, markdown, picture_item
from qvl.messages import say
from qvl.protocol import FINAL_STATES, JobState, Reply
from qvl.settings import Settings

log = logging.getLogger(__name__)


class NotConnected(RuntimeError):
    """No connection to WeCom now: the reply is offered again after the next one."""


@dataclass
class Stream:
    """The stream answering one question, on the connection that received it."""

    client: WSClient
    frame: dict  # the question's callback: its req_id carries every frame of the stream
    stream_id: str
    opened: float  # clock() when the question came
    language: str | None = None
    finished: bool = False  # the final frame is sent (or being sent)
    dead: bool = False  # its connection is gone, or WeCom refused a frame
    feedback: asyncio.Task | None = field(default=None, repr=False)


def _new_id() -> str:
    return f"qvl{uuid.uuid4().hex[:20]}"


class Replies:
    """The open streams of this process and the delivery of finished replies."""

    def __init__(self, settings: Settings, core: Core, client: Callable[[], WSClient | None], *,
                 clock: Callable[[], float] = time.monotonic):
        self.settings, self.core, self.client, self.clock = settings, core, client, clock
        self.streams: dict[str, Stream] = {}  # the question's msgid → its stream
        self._said: dict[int, tuple[int, str | None]] = {}  # job → (parts sent, the first's id)

    def open(self, client: WSClient, frame: dict, msgid: str, language_: str | None) -> Stream:
        """The stream for question ``msgid`` (a redelivered question keeps the first one's)."""
        now = self.clock()
        for key in [k for k, s in self.streams.items() if now - s.opened > self.settings.wecom_stream_window_s]:
            self._close(self.streams.pop(key))
        return self.streams.setdefault(msgid, Stream(client, frame, _new_id(), now, language_))

    def drop(self, msgid: str) -> None:
        stream = self.streams.pop(msgid, None)
        if stream is not None:
            self._close(stream)

    def connection_lost(self) -> None:
        """Every open stream died with its connection: their replies are sent anew."""
        for stream in self.streams.values():
            self._close(stream)
        self.streams.clear()

    def _close(self, stream: Stream) -> None:
        stream.dead = True
        if stream.feedback is not None:
            stream.feedback.cancel()

    def _open(self, stream: Stream | None) -> bool:
        return (stream is not None and not stream.dead and stream.client is self.client()
                and self.clock() - stream.opened < self.settings.wecom_stream_window_s)

    # --- while the user waits -------------------------------------------------------

    def watch(self, job_id: int, stream: Stream) -> None:
        """Show where turn ``job_id`` stands in ``stream`` until its reply comes."""
        if stream.feedback is None:
            stream.feedback = asyncio.create_task(self._feedback(job_id, stream), name=f"qvl-wecom-{job_id}")

    async def _feedback(self, job_id: int, stream: Stream) -> None:
        interval = self.settings.wecom_stream_interval_s
        shown, last = None, float("-inf")
        try:
            async for status in self.core.watch(job_id, poll_s=max(0.2, min(1.0, interval)), changes_only=False):
                if status.state in FINAL_STATES or stream.finished or not self._open(stream):
                    return
                if status.state == JobState.QUEUED and (status.position or 0) > 1:
                    text = say("queued", stream.language, ahead=status.position - 1)
                elif status.state == JobState.STREAMING and status.partial:
                    text = split_message(status.partial, MAX_CHARS - 2)[0] + " …"
                elif shown is None:
                    text = say("thinking", stream.language)
                else:
                    continue
                if text == shown or self.clock() - last < interval:
                    continue
                shown, last = text, self.clock()
                await stream.client.reply_stream(stream.frame, stream.stream_id, text, finish=False)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the stream is gone (disconnected, or refused): the reply is sent anew
            log.warning("WeCom stream of job %s failed: %s", job_id, exc)
            stream.dead = True

    # --- answers at once (commands, refusals, errors) --------------------------------

    async def say(self, client: WSClient, frame: dict, text: str) -> None:
        """Answer the question of ``frame`` with ``text`` in a one-frame stream; only logged
        if WeCom does not take it."""
        parts = split_message(text, MAX_CHARS) or [""]
        try:
            await client.reply_stream(frame, _new_id(), parts[0], finish=True)
            chat = frame.get("body", {}).get("chatid") or frame.get("body", {}).get("from", {}).get("userid")
            for part in parts[1:]:
                await client.send_message(chat, markdown(part))
        except Exception as exc:
            log.warning("could not answer a WeCom message: %s", exc)

    # --- finished replies (the core's delivery loop) -----------------------------------

    async def deliver(self, reply: Reply) -> None:
        """Send ``reply``: in its question's stream's final frame with the annotated pictures
        while that stream is open, else anew through the active path (text, and a line saying
        the picture cannot follow). Text too long for one message continues in active
        messages. Raises when WeCom does not take a part, so that the core offers the reply
        again; the parts already sent are not sent twice by this process. ``core.sent``
        records the first part's id once every part is out."""
        job = reply.job_id
        stream = self.streams.pop(reply.reply_to_message_id or "", None) if job is not None else None
        lang = stream.language if stream is not None else language(reply.text)
        parts = split_message(reply.text, MAX_CHARS) or [""]
        done, first_id = self._said.get(job, (0, None)) if job is not None else (0, None)
        try:
            if done == 0 and self._open(stream):
                if await self._finish(stream, parts[0], reply):
                    done, first_id = 1, stream.stream_id
            elif stream is not None:
                self._close(stream)
            client = self.client()
            if client is None:
                raise NotConnected("not connected to WeCom")
            if done == 0 and reply.images:
                parts[-1] = f"{parts[-1]}\n\n{say('picture_late', lang)}"
            for n in range(done, len(parts)):
                ack = await client.send_message(reply.chat_id, markdown(parts[n]))
                if n == 0:
                    first_id = (ack or {}).get("headers", {}).get("req_id") or f"job{job}"
                done = n + 1
        except Exception as exc:
            log.warning("could not deliver the reply of job %s to %s (%d of %d parts sent): %r", job,
                        reply.chat_id, done, len(parts), exc)
            if job is not None:
                self._said[job] = (done, first_id)
            raise
        self._said.pop(job, None)
        if job is not None:
            await self.core.sent(reply, first_id)

    async def _finish(self, stream: Stream, text: str, reply: Reply) -> bool:
        """End ``stream`` with ``text`` and the reply's pictures; False if WeCom refused the
        frame (its window closed early): the reply goes out anew at once. Raises when the
        outcome is unknown (the connection dropped, no acknowledgement in time)."""
        stream.finished = True
        if stream.feedback is not None:
            stream.feedback.cancel()  # a frame it already queued still goes first (one queue per req_id)
        items = [picture_item(image) for image in reply.images[:MAX_PICTURES]]
        try:
            await stream.client.reply_stream(stream.frame, stream.stream_id, text, finish=True, msg_item=items)
        except Exception as exc:
            stream.dead = True
            if stream.client is self.client() and str(exc).startswith("Reply ack error"):
                log.warning("WeCom refused the final frame of job %s (%s); sending the reply anew", reply.job_id, exc)
                return False
            raise
        return True


__all__ = ["PLATFORM", "NotConnected", "Replies", "Stream"]
