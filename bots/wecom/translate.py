"""WeCom specifics, pure: a callback's body read into a record, the core's message, reply frames.

A message callback's body (``aibot_msg_callback``) holds ``msgid``, ``chattype``
(``single`` or ``group``), ``chatid`` (groups only), ``from.userid``, ``msgtype`` and
one payload: ``text.content``, ``image`` (``url``, ``aeskey``), ``mixed.msg_item`` (text
and pictures in order) or ``voice.content`` (WeCom's transcription); ``quote`` carries
a quoted message the same way. In a group the bot only hears messages that @-mention
it; the text starts with that mention.
"""

from __future__ import annotations

import base64
import hashlib
import io
import re
from collections.abc import Mapping
from dataclasses import dataclass

from PIL import Image

from qvl.messages import language_of
from qvl.protocol import IncomingMessage, ReplyImage, Where

PLATFORM = "wecom"
# WeCom takes at most 20,480 bytes of UTF-8 in a stream or a markdown message: 5,000
# characters always fit, at 4 bytes at most each.
MAX_CHARS = 5000
MAX_PICTURES = 10  # pictures in a stream's final frame


@dataclass(frozen=True)
class PictureRef:
    """A picture in a message: where to download it and the key that decrypts it."""

    url: str
    aeskey: str | None = None


@dataclass(frozen=True)
class Callback:
    """One WeCom message, as far as the bot cares."""

    msgid: str
    user_id: str
    chat_id: str | None  # the group chat; None in a direct chat
    text: str  # without the leading @-mention
    pictures: tuple[PictureRef, ...] = ()
    quoted_text: str = ""
    quoted_pictures: tuple[PictureRef, ...] = ()

    @property
    def key(self) -> str:
        """Whose pictures wait for a question: one person in one chat."""
        return f"{self.chat_id or 'dm'}:{self.user_id}"


_MENTIONS = re.compile(r"^\s*(?:@[^\s\u2005]+[\s\u2005]*)+")


def strip_mentions(text: str) -> str:
    """``text`` without the @-mentions it starts with ("@qvl 这是什么" → "这是什么")."""
    return _MENTIONS.sub("", text, count=1).strip()


def parse(body: object) -> Callback | None:
    """The record of a message callback's body; None for one the bot has no use for
    (no sender, no id, or a kind it cannot read: files, videos, links)."""
    if not isinstance(body, Mapping):
        return None
    sender = body.get("from")
    user = sender.get("userid") if isinstance(sender, Mapping) else None
    msgid = body.get("msgid")
    if not isinstance(user, str) or not user or not isinstance(msgid, str) or not msgid:
        return None
    group = body.get("chattype") == "group"
    chat = body.get("chatid") if group else None
    if group and (not isinstance(chat, str) or not chat):
        return None
    text, pictures = _content(body)
    if not text and not pictures:
        return None
    quote = body.get("quote")
    quoted_text, quoted_pictures = _content(quote) if isinstance(quote, Mapping) else ("", ())
    return Callback(msgid=msgid, user_id=user, chat_id=chat, text=strip_mentions(text), pictures=pictures,
                    quoted_text=quoted_text, quoted_pictures=quoted_pictures)


def _content(message: Mapping) -> tuple[str, tuple[PictureRef, ...]]:
    """(text, pictures) of a message or a quote, by its ``msgtype``."""
    kind = message.get("msgtype")
    if kind in ("text", "voice"):
        return _text_of(message.get(kind)), ()
    if kind == "image":
        picture = _picture(message.get("image"))
        return "", (picture,) if picture else ()
    if kind == "mixed":
        mixed = message.get("mixed")
        items = mixed.get("msg_item") if isinstance(mixed, Mapping) else None
        texts, pictures = [], []
        for item in items if isinstance(items, list) else ():
            if not isinstance(item, Mapping):
                continue
            if item.get("msgtype") == "text" and (text := _text_of(item.get("text"))):
                texts.append(text)
            elif item.get("msgtype") == "image" and (picture := _picture(item.get("image"))):
                pictures.append(picture)
        return "\n".join(texts), tuple(pictures)
    return "", ()


def _text_of(payload: object) -> str:
    content = payload.get("content") if isinstance(payload, Mapping) else None
    return content.strip() if isinstance(content, str) else ""


def _picture(payload: object) -> PictureRef | None:
    if not isinstance(payload, Mapping) or not isinstance(payload.get("url"), str):
        return None
    key = payload.get("aeskey")
    return PictureRef(payload["url"], key if isinstance(key, str) and key else None)


def question(cb: Callback) -> str:
    """The text the core gets: the message's own, then a quoted text as a quote (a
    command stays first, so that "/reset" quoting something is still a command)."""
    if not cb.quoted_text:
        return cb.text
    quoted = "\n".join(f"> {line}" for line in cb.quoted_text.splitlines())
    return f"{cb.text}\n\n{quoted}" if cb.text else quoted


def language(text: str) -> str | None:
    """The reply language: Chinese for Chinese text, commands and pictures without text
    (WeCom's users mostly write Chinese); English for a question written in English."""
    bare = text.strip()
    return language_of(bare) or ("zh" if not bare or bare.startswith("/") else None)


def incoming(cb: Callback, *, text: str, images: tuple[bytes, ...] = ()) -> IncomingMessage:
    """The core's record of a WeCom message (a group is both the space and the channel)."""
    where = Where(space_id=cb.chat_id, channel_id=cb.chat_id) if cb.chat_id else Where(channel_id=cb.user_id)
    return IncomingMessage(platform=PLATFORM, chat_id=cb.chat_id or cb.user_id, user_id=cb.user_id, where=where,
                           message_id=cb.msgid, text=text, images=images, user_name=cb.user_id,
                           language=language(text))


def picture_item(image: ReplyImage) -> dict:
    """A picture for a stream's final frame (``msg_item``): JPEG or PNG, as base64 with the
    MD5 of its bytes. Other formats are converted to PNG."""
    data = image.data
    if image.mime not in ("image/jpeg", "image/png"):
        with Image.open(io.BytesIO(data)) as picture:
            out = io.BytesIO()
            picture.save(out, "PNG")
            data = out.getvalue()
    return {"msgtype": "image",
            "image": {"base64": base64.b64encode(data).decode("ascii"), "md5": hashlib.md5(data).hexdigest()}}


def markdown(text: str) -> dict:
    """The body of an active message (``aibot_send_msg``) saying ``text``."""
    return {"msgtype": "markdown", "markdown": {"content": text}}
