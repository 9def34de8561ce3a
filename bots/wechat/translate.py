"""WeChat specifics: who asks where, which conversation, and pictures sent just before."""

from __future__ import annotations

import re

from bots.picture_window import PictureBuffer  # noqa: F401 (the WeChat frontend's, and its tests')
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
