"""Who the bot answers where: the operator's allowlists and each server's /config."""

from __future__ import annotations

import discord

from qvl.settings import Settings


def allowed(settings: Settings, config: dict, channel: discord.abc.Messageable,
            member: discord.abc.User) -> bool:
    """Whether to serve ``member`` in ``channel``. DMs are always served; in a server the
    server, the channel (a thread counts as its parent) and the member's roles must pass."""
    guild = getattr(channel, "guild", None)
    if guild is None:
        return True
    guilds = Settings.ids(settings.discord_allowed_guilds)
    if guilds and str(guild.id) not in guilds:
        return False
    channels = Settings.ids(settings.discord_allowed_channels) | set(config.get("channels", []))
    where = {str(channel.id), str(getattr(channel, "parent_id", None) or "")}
    if channels and not channels & where:
        return False
    roles = Settings.ids(settings.discord_allowed_roles)
    if roles:
        have = {str(r.id) for r in getattr(member, "roles", [])}
        if not roles & have:
            return False
    return True
