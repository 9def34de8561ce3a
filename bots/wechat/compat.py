"""Import python-wechaty, in the one place that knows how.

wechaty 0.10.7 declares ``PuppetOptions`` as a dataclass that Python 3.11 refuses to
hash, and wechaty's module-level code hashes it: give it the plain object hash before
wechaty is imported. Its pins (``pyee<12``, ``urllib3<2``) live in the ``wechat`` extra
and the WeChat container image, never in the worker's.
"""

from __future__ import annotations

import wechaty_puppet.schemas.puppet as _puppet_schemas

_puppet_schemas.PuppetOptions.__hash__ = object.__hash__  # type: ignore[method-assign]

import socket  # noqa: E402

from apscheduler.schedulers.asyncio import AsyncIOScheduler  # noqa: E402
from wechaty import Contact, FileBox, Message, Room, Wechaty, WechatyOptions  # noqa: E402
from wechaty.user.tag import Tag  # noqa: E402
from wechaty_puppet import MessageType  # noqa: E402
from wechaty_puppet.schemas.puppet import PuppetOptions  # noqa: E402

__all__ = ["Contact", "FileBox", "Message", "MessageType", "Room", "Wechaty", "WechatyOptions",
           "fresh_options", "reset_caches"]


def fresh_options(endpoint: str, token: str) -> WechatyOptions:
    """Options for one connection. The puppet service is ``endpoint`` (always given:
    without one the client looks one up on the internet); ``host``/``port`` are wechaty's
    plugin web server, put on a free loopback port. The default ``PuppetOptions`` object
    is shared by every ``WechatyOptions`` and keeps the first endpoint: make a new one."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return WechatyOptions(name="qvl", puppet_options=PuppetOptions(), endpoint=endpoint, token=token,
                          host="127.0.0.1", port=port, scheduler=AsyncIOScheduler())


def reset_caches() -> None:
    """Forget wechaty's process-wide Contact/Room/Tag objects before a new connection:
    they keep the puppet (and the closed channel) of the bot that first loaded them."""
    for cls in (Contact, Room, Tag):
        cls._pool.clear()
