"""Pictures sent just before the question, held for it: chat apps whose users send a
picture first and ask about it in the next message (WeChat, WeCom)."""

from __future__ import annotations

import time
from collections import defaultdict, deque


class PictureBuffer:
    """Pictures a user sent without a question, waiting for it (WeChat and WeCom users send
    the picture first, then "@bot 这是什么" a little later), and each member's last picture,
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
