"""Slash commands: /ask, /reset, /help for everyone; /config for server admins."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Literal

import discord
from discord import app_commands

from bots.commands import say
from bots.discord import translate
from bots.discord.access import allowed
from bots.discord.translate import PLATFORM
from qvl.errors import UserFacingError

if TYPE_CHECKING:
    from bots.discord.bot import DiscordFrontend

log = logging.getLogger(__name__)


def register(bot: DiscordFrontend) -> None:
    """Add the commands to ``bot.tree`` (synced per server when the bot is ready)."""
    tree = bot.tree

    async def scope_of(interaction: discord.Interaction) -> str | None:
        """The interaction's conversation, or None (after saying why) when not allowed here."""
        config = await bot.core.space_settings(PLATFORM, str(interaction.guild_id)) if interaction.guild else {}
        if not allowed(bot.settings, config, interaction.channel, interaction.user):
            await interaction.response.send_message("I am not enabled in this channel.", ephemeral=True)
            return None
        return translate.scope_key(interaction.guild, interaction.channel, interaction.user.id,
                                   config.get("scope", "user"))

    @tree.command(name="ask", description="Ask about a picture (or anything)")
    @app_commands.describe(question="what you want to know", image="a picture to ask about")
    async def ask(interaction: discord.Interaction, question: str,
                  image: discord.Attachment | None = None) -> None:
        if image is not None and not translate.is_picture(image):
            await interaction.response.send_message(say("not_an_image", None), ephemeral=True)
            return
        if image is not None and image.size > bot.settings.image_max_bytes:
            await interaction.response.send_message(
                say("image_too_large", None, mb=bot.settings.image_max_bytes // 1_048_576), ephemeral=True)
            return
        scope = await scope_of(interaction)
        if scope is None:
            return
        await interaction.response.defer(thinking=True)  # within Discord's 3 s, before slow work
        images = (await image.read(),) if image is not None else ()
        turn = translate.incoming(channel=interaction.channel, user=interaction.user,
                                  message_id=f"interaction:{interaction.id}", text=question,
                                  images=images, scope=scope)
        try:
            await bot._submit(turn, interaction=interaction)
        except UserFacingError as exc:
            await interaction.followup.send(exc.message)

    @tree.command(name="reset", description="Forget our conversation")
    async def reset(interaction: discord.Interaction) -> None:
        scope = await scope_of(interaction)
        if scope is None:
            return
        turn = translate.incoming(channel=interaction.channel, user=interaction.user,
                                  message_id=f"interaction:{interaction.id}", text="/reset",
                                  images=(), scope=scope)
        reply = await bot.core.handle(turn)
        await interaction.response.send_message(reply.text, ephemeral=True)

    @tree.command(name="help", description="What I can do")
    async def help_(interaction: discord.Interaction) -> None:
        language = "zh" if str(interaction.locale.value).startswith("zh") else None
        await interaction.response.send_message(say("help", language), ephemeral=True)

    @tree.command(name="config", description="Server settings: conversation scope, allowed channels")
    @app_commands.guild_only()
    @app_commands.default_permissions(manage_guild=True)
    @app_commands.describe(scope="whose history a conversation shares",
                           allow="also answer in this channel (the first one limits the bot to the list)",
                           disallow="stop answering in this channel")
    async def config(interaction: discord.Interaction,
                     scope: Literal["user", "channel", "thread"] | None = None,
                     allow: discord.TextChannel | None = None,
                     disallow: discord.TextChannel | None = None) -> None:
        perms = getattr(interaction.user, "guild_permissions", None)
        if perms is None or not perms.manage_guild:
            await interaction.response.send_message("Only server admins can change my settings.", ephemeral=True)
            return
        space = str(interaction.guild_id)
        current = await bot.core.space_settings(PLATFORM, space)
        channels = set(current.get("channels", []))
        if allow is not None:
            channels.add(str(allow.id))
        if disallow is not None:
            channels.discard(str(disallow.id))
        changes: dict = {"channels": sorted(channels) or None}
        if scope is not None:
            changes["scope"] = scope
        values = await bot.core.update_space_settings(PLATFORM, space, **changes)
        listed = ", ".join(f"<#{c}>" for c in values.get("channels", [])) or "any channel"
        await interaction.response.send_message(
            f"Conversation scope: **{values.get('scope', 'user')}** · answering in: {listed}", ephemeral=True)
