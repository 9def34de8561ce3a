"""``qvl chat``: a terminal frontend on the same core as the chat platforms.

Sends the turn through the queue, shows where it stands, prints the cleaned reply
and writes the annotated picture. The conversation carries across invocations
until ``--reset``.
"""

from __future__ import annotations

import asyncio
import getpass
import sys
import uuid
from pathlib import Path

from bots.core import Core
from qvl.errors import UserFacingError
from qvl.messages import language_of
from qvl.protocol import IncomingMessage, Reply
from qvl.settings import Settings

PLATFORM = "terminal"


async def chat(settings: Settings, *, text: str, images: list[Path], reset: bool,
               out_dir: Path, user: str | None = None, timeout_s: float = 600) -> int:
    """One turn from the terminal; returns the exit status."""
    user = user or getpass.getuser()
    core = Core(settings)
    try:
        await core.check()
        base = dict(platform=PLATFORM, chat_id=user, user_id=user, language=language_of(text))
        if reset:
            result = await core.handle(IncomingMessage(message_id=_new_id(), text="/reset", **base))
            print(result.text)
            if not text and not images:
                return 0
        pictures = tuple(_read(p) for p in images)
        result = await core.handle(IncomingMessage(message_id=_new_id(), text=text, images=pictures, **base))
        if isinstance(result, Reply):
            print(result.text, file=sys.stderr if result.error else sys.stdout)
            return 1 if result.error else 0
        reply = await asyncio.wait_for(_wait(core, result.job_id), timeout_s)
        return _show(reply, out_dir)
    except TimeoutError:
        print(f"No answer after {timeout_s:.0f}s: is `qvl up` (or `qvl worker`) running?", file=sys.stderr)
        return 1
    finally:
        await core.close()


async def _wait(core: Core, job_id: int) -> Reply:
    shown_queue = False
    streamed = ""
    async for status in core.watch(job_id):
        if status.state == "queued" and not shown_queue:
            print(f"… queued (position {status.position})", file=sys.stderr)
            shown_queue = True
        elif status.state == "streaming" and status.partial and sys.stderr.isatty():
            print(f"\r… {status.partial[-70:]}", end="", file=sys.stderr)
            streamed = status.partial
    if streamed:
        print(file=sys.stderr)
    reply = await core.take_reply(job_id)
    if reply is None:
        raise UserFacingError("That reply was already delivered elsewhere.")
    return reply


def _show(reply: Reply, out_dir: Path) -> int:
    print(reply.text, file=sys.stderr if reply.error else sys.stdout)
    for image in reply.images:
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / image.filename
        path.write_bytes(image.data)
        print(f"[annotated picture: {path}]")
    return 1 if reply.error else 0


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise UserFacingError(f"cannot read {path}: {exc.strerror}") from exc


def _new_id() -> str:
    return uuid.uuid4().hex
