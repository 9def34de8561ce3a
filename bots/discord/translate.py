"""Discord message → the core's IncomingMessage: who, where, which conversation, what pictures."""

from __future__ import annotations

import re

import discord

from qvl.messages import language_of
from qvl.protocol import IncomingMessage, Where

PLATFORM = "discord"
IMAGE_TYPES = ("image/png", "image/jpeg", "image/webp", "image/gif")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".gif")
LINK = re.compile(r"https?://[^\s<>\"')\]]+")


def where(channel: discord.abc.Messageable, member: discord.abc.User) -> Where:
    """Where a message or command was written, as access and scope care: the server,
    the channel (a thread's own id, and its parent), the member's roles, and whether
    they may manage the server."""
    guild = getattr(channel, "guild", None)
    if guild is None:
        return Where(channel_id=str(channel.id))
    thread = isinstance(channel, discord.Thread)
    perms = getattr(member, "guild_permissions", None)
    return Where(space_id=str(guild.id), channel_id=str(channel.id),
                 thread_id=str(channel.id) if thread else None,
                 parent_id=str(channel.parent_id) if thread and channel.parent_id else None,
                 roles=frozenset(str(r.id) for r in getattr(member, "roles", ())),
                 admin=bool(perms and perms.manage_guild))


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


def incoming(*, channel: discord.abc.Messageable, user: discord.abc.User, message_id: str, text: str,
             images: tuple[bytes, ...] = (), reply_to: int | None = None, reply_to_bot: int | None = None,
             language: str | None = None) -> IncomingMessage:
    """The core's record of a Discord message or slash command."""
    return IncomingMessage(
        platform=PLATFORM, chat_id=str(channel.id), user_id=str(user.id),
        message_id=message_id, text=text, images=images, where=where(channel, user),
        thread_id=str(channel.id) if isinstance(channel, discord.Thread) else None,
        reply_to_id=str(reply_to) if reply_to else None,
        reply_to_bot_id=str(reply_to_bot) if reply_to_bot else None, user_name=user.display_name,
        language=language or language_of(text))
