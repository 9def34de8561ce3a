"""Slash commands: /ask, /reset, /help for everyone; /scope and /channels for server admins.

One class holds them with what they need handed in (the core, the settings, and the
frontend's ``submit``), so this module imports nothing of the client's; one
``tree.on_error`` answers every command's failure politely.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Literal

import discord
from discord import app_commands

from bots.core import Core
from bots.discord import translate
from qvl.errors import UserFacingError
from qvl.messages import say
from qvl.protocol import IncomingMessage, Reply
from qvl.settings import Settings

log = logging.getLogger(__name__)

Submit = Callable[..., Awaitable[None]]


def _language(interaction: discord.Interaction) -> str | None:
    return "zh" if str(interaction.locale.value).startswith("zh") else None


class SlashCommands:
    """The bot's slash commands, installed on a command tree with :meth:`install`."""

    def __init__(self, core: Core, settings: Settings, *, submit: Submit):
        self.core, self.settings, self.submit = core, settings, submit

    def install(self, tree: app_commands.CommandTree) -> None:
        """Add the commands and the error handler to ``tree`` (synced per server when ready)."""
        for name, description, callback in (
                ("ask", "Ask about a picture (or anything)", SlashCommands.ask),
                ("reset", "Forget our conversation", SlashCommands.reset),
                ("help", "What I can do", SlashCommands.help),
                ("scope", "Admins: whose history a conversation shares", SlashCommands.scope),
                ("channels", "Admins: the channels I answer in", SlashCommands.channels)):
            command = app_commands.Command(name=name, description=description, callback=callback)
            command.binding = self  # called as callback(self, interaction, ...), as in a Cog
            if name in ("scope", "channels"):
                command.guild_only = True
                command.default_permissions = discord.Permissions(manage_guild=True)
            tree.add_command(command)
        tree.on_error = self.on_error

    def _turn(self, interaction: discord.Interaction, text: str, images: tuple[bytes, ...] = ()) -> IncomingMessage:
        return translate.incoming(channel=interaction.channel, user=interaction.user,
                                  message_id=f"interaction:{interaction.id}", text=text, images=images,
                                  language=_language(interaction) or translate.language_of(text))

    @app_commands.describe(question="what you want to know", image="a picture to ask about")
    async def ask(self, interaction: discord.Interaction, question: str,
                  image: discord.Attachment | None = None) -> None:
        language = _language(interaction) or translate.language_of(question)
        if image is not None and not translate.is_picture(image):
            await interaction.response.send_message(say("not_an_image", language), ephemeral=True)
            return
        if image is not None and image.size > self.settings.image_max_bytes:
            await interaction.response.send_message(
                say("image_too_large", language, mb=self.settings.image_max_bytes // 1_048_576), ephemeral=True)
            return
        await interaction.response.defer(thinking=True)  # within Discord's 3 s, before slow work

        async def pictures() -> tuple[bytes, ...]:
            return (await image.read(),) if image is not None else ()

        await self.submit(self._turn(interaction, question), interaction=interaction, pictures=pictures)

    async def reset(self, interaction: discord.Interaction) -> None:
        reply = await self.core.handle(self._turn(interaction, "/reset"))
        await self._answer(interaction, reply)

    async def help(self, interaction: discord.Interaction) -> None:
        await interaction.response.send_message(say("help", _language(interaction)), ephemeral=True)

    @app_commands.describe(mode="user: each person their own · shared: one per channel · thread: one per thread")
    async def scope(self, interaction: discord.Interaction, mode: Literal["user", "shared", "thread"]) -> None:
        reply = await self.core.configure(self._turn(interaction, f"/scope {mode}"), scope=mode)
        await self._answer(interaction, reply)

    @app_commands.describe(allow="also answer in this channel (the first one limits me to the list)",
                           disallow="stop answering in this channel")
    async def channels(self, interaction: discord.Interaction, allow: discord.TextChannel | None = None,
                       disallow: discord.TextChannel | None = None) -> None:
        reply = await self.core.configure(self._turn(interaction, "/channels"),
                                          allow=str(allow.id) if allow else None,
                                          disallow=str(disallow.id) if disallow else None)
        await self._answer(interaction, reply)

    async def _answer(self, interaction: discord.Interaction, reply: Reply) -> None:
        await interaction.response.send_message(reply.text, ephemeral=True)

    async def on_error(self, interaction: discord.Interaction, error: app_commands.AppCommandError) -> None:
        """Every command's failure: one short sentence to the user, the cause to the log."""
        cause = getattr(error, "original", error)
        language = _language(interaction)
        if isinstance(cause, UserFacingError):
            text = cause.text(language)
        elif isinstance(error, app_commands.CheckFailure):
            text = say("admins_only", language)
        else:
            log.error("slash command /%s failed", getattr(interaction.command, "name", "?"), exc_info=cause)
            text = say("sorry", language)
        try:
            if interaction.response.is_done():
                await interaction.followup.send(text, ephemeral=True)
            else:
                await interaction.response.send_message(text, ephemeral=True)
        except discord.HTTPException:
            log.warning("could not tell the user that /%s failed", getattr(interaction.command, "name", "?"))
