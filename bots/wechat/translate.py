"""WeChat specifics: who asks where, which conversation, and pictures sent just before."""

from __future__ import annotations

import re
import time
from collections import defaultdict, deque

from qvl.messages import language_of
from qvl.protocol import IncomingMessage, Where

PLATFORM = "wechat"
MAX_CHARS = 1500  # WeChat cuts long texts; stay well under its limit


def strip_trigger(text: str, trigger: str) -> tuple[str, bool]:
    """(text without the trigger prefix, whether it had it)."""
    if trigger and text.lstrip().startswith(trigger):
        return text.lstrip()[len(trigger):].strip(), True
    return text, False


QUOTE = re.compile(r"^「(?P<name>[^：:」]+)[：:](?P<quoted>.*?)」\s*\n[-\s]+\n(?P<text>.*)$", re.S)


def split_quote(text: str) -> tuple[str | None, str | None, str]:
    """WeChat sends a quoting reply as ``「name：quoted」\n- - - -\ntext``:
    return (quoted author's name, quoted text, the reply's own text)."""
    match = QUOTE.match(text.strip())
    if not match:
        return None, None, text
    return match["name"].strip(), match["quoted"].strip(), match["text"].strip()


class PictureBuffer:
    """Pictures a user sent without a question, waiting for it (WeChat users send the
    picture first, then "@bot 这是什么" a little later), and each member's last picture,
    for replies that quote it."""

    def __init__(self, window_s: float, *, clock=time.monotonic, limit: int = 8, keep_s: float = 3600):
        self.window_s, self.clock, self.limit, self.keep_s = window_s, clock, limit, keep_s
        self._held: dict[str, deque[tuple[float, bytes]]] = defaultdict(deque)
        self._last: dict[tuple[str, str], tuple[float, bytes]] = {}

    def hold(self, key: str, data: bytes, *, place: str = "", name: str = "") -> None:
        held = self._held[key]
        held.append((self.clock(), data))
        while len(held) > self.limit:
            held.popleft()
        if name:
            self._last[(place, name)] = (self.clock(), data)

    def last_of(self, place: str, name: str) -> bytes | None:
        """The last picture ``name`` sent in ``place`` within the hour, for a quoting reply."""
        at, data = self._last.get((place, name), (0.0, b""))
        return data if data and self.clock() - at <= self.keep_s else None

    def take(self, key: str) -> tuple[bytes, ...]:
        """The pictures of the last ``window_s`` seconds, oldest first; forgets them all."""
        held = self._held.pop(key, deque())
        now = self.clock()
        return tuple(data for at, data in held if now - at <= self.window_s)


def language(text: str) -> str | None:
    """The reply language: Chinese for Chinese text, commands and pictures without text
    (WeChat's users mostly write Chinese); English for a question written in English."""
    bare = text.strip()
    return language_of(bare) or ("zh" if not bare or bare.startswith("/") else None)


def incoming(*, room_id: str | None, user_id: str, user_name: str | None, message_id: str, text: str,
             images: tuple[bytes, ...]) -> IncomingMessage:
    """The core's record of a WeChat message (a room is both the space and the channel)."""
    where = Where(space_id=room_id, channel_id=room_id) if room_id else Where(channel_id=user_id)
    return IncomingMessage(platform=PLATFORM, chat_id=room_id or user_id, user_id=user_id, where=where,
                           message_id=message_id, text=text, images=images, user_name=user_name,
                           thread_id=None, language=language(text))
