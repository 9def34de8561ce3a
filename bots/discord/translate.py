"""Discord message → the core's IncomingMessage: who, where, which conversation, what pictures."""

from __future__ import annotations

import re

import discord

from qvl.protocol import IncomingMessage

PLATFORM = "discord"
SCOPES = ("user", "channel", "thread")  # per user in a channel (default), shared, per thread
IMAGE_TYPES = ("image/png", "image/jpeg", "image/webp", "image/gif")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".gif")
LINK = re.compile(r"https?://[^\s<>\"')\]]+")
_CJK = re.compile(r"[\u4e00-\u9fff]")


def scope_key(guild: discord.Guild | None, channel: discord.abc.Messageable, user_id: int, scope: str) -> str:
    """The conversation a message joins, under the server's scope setting.

    A DM is its own conversation and never shares history with a server.
    """
    if guild is None:
        return f"dm:{user_id}"
    if scope == "channel":
        return f"g{guild.id}:c{channel.id}"
    if scope == "thread" and isinstance(channel, discord.Thread):
        return f"g{guild.id}:t{channel.id}"
    return f"g{guild.id}:c{channel.id}:u{user_id}"


def may_join(scope: str, guild: discord.Guild | None, user_id: int) -> bool:
    """Whether ``user_id`` may continue a conversation of ``scope`` (by replying to the
    bot): shared ones of the same server yes; someone else's per-user or DM one never."""
    if scope.startswith("dm:"):
        return scope == f"dm:{user_id}"
    if guild is None or not scope.startswith(f"g{guild.id}:"):
        return False
    return ":u" not in scope or scope.endswith(f":u{user_id}")


def question_text(message: discord.Message, bot_user: discord.abc.User, trigger: str) -> str:
    """The question with the bot's mention and the trigger prefix taken out."""
    text = message.content
    for form in (f"<@{bot_user.id}>", f"<@!{bot_user.id}>"):
        text = text.replace(form, " ")
    text = text.strip()
    if trigger and text.startswith(trigger):
        text = text[len(trigger):]
    return text.strip()


def is_picture(attachment: discord.Attachment) -> bool:
    kind = (attachment.content_type or "").split(";")[0].strip().lower()
    return kind in IMAGE_TYPES or attachment.filename.lower().endswith(IMAGE_EXTENSIONS)


def links(text: str) -> list[str]:
    return LINK.findall(text)


def language(text: str) -> str | None:
    return "zh" if _CJK.search(text) else None


def incoming(*, channel: discord.abc.Messageable, user: discord.abc.User, message_id: str, text: str,
             images: tuple[bytes, ...], scope: str, reply_to: int | None = None) -> IncomingMessage:
    """The core's record of a Discord message or slash command."""
    return IncomingMessage(
        platform=PLATFORM, scope_key=scope, chat_id=str(channel.id), user_id=str(user.id),
        message_id=message_id, text=text, images=images,
        thread_id=str(channel.id) if isinstance(channel, discord.Thread) else None,
        reply_to_id=str(reply_to) if reply_to else None, user_name=user.display_name,
        language=language(text))
