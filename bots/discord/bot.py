"""The Discord client: events in, the core in between, replies out."""

from __future__ import annotations

import asyncio
import io
import logging

import discord
from discord import app_commands

from bots.core import DUPLICATE, Core
from bots.discord import translate
from bots.discord.slash import SlashCommands
from bots.discord.translate import PLATFORM
from bots.fetch import fetch_image
from bots.health import Health
from bots.text import split_message
from qvl.errors import UserFacingError
from qvl.messages import language_of, say
from qvl.protocol import FINAL_STATES, Accepted, IncomingMessage, Reply
from qvl.settings import Settings

log = logging.getLogger(__name__)

LIMIT = 2000  # characters in one Discord message


class DiscordFrontend(discord.Client):
    """A discord.py client that hands every turn to the core and posts what comes back."""

    def __init__(self, settings: Settings, core: Core, **options):
        intents = discord.Intents.default()
        intents.message_content = True  # privileged: enable it in the developer portal
        # Nobody is pinged unless a call allows it (each reply allows the asker alone):
        # an answer that echoes "@everyone" or "<@id>" must not notify anyone.
        options.setdefault("allowed_mentions", _mentions(None))
        super().__init__(intents=intents, **options)
        self.settings, self.core = settings, core
        self.tree = app_commands.CommandTree(self)
        self.placeholders: dict[int, discord.Message] = {}  # job → "queued…" / streamed message
        self.interactions: dict[int, discord.Interaction] = {}  # job → the /ask waiting for it
        self.threads: set[int] = set()  # threads the bot was mentioned in
        self._delivery: asyncio.Task | None = None
        self._feedbacks: set[asyncio.Task] = set()  # one per waiting turn; ended by close()
        self.health = Health(PLATFORM, settings.data_dir)  # `python -m bots.health discord`
        self.health.down()  # a mark from before a restart is not this connection's
        self._gateway_up = False  # between READY/RESUMED and a disconnect
        self._health: asyncio.Task | None = None

    async def setup_hook(self) -> None:
        SlashCommands(self.core, self.settings, submit=self.submit).install(self.tree)
        self._delivery = asyncio.create_task(self._deliver_forever(), name="qvl-discord-delivery")
        self._health = asyncio.create_task(
            self.health.keep_fresh(lambda: self._gateway_up and not self.is_closed()), name="qvl-discord-health")

    async def on_ready(self) -> None:
        self._mark_gateway(True)
        log.info("Discord: logged in as %s in %d server(s)", self.user, len(self.guilds))
        for guild in self.guilds:
            await self._sync(guild)

    async def on_resumed(self) -> None:
        self._mark_gateway(True)

    async def on_disconnect(self) -> None:
        self._mark_gateway(False)

    def _mark_gateway(self, up: bool) -> None:
        """Mark the gateway connection up or down for the container's healthcheck."""
        self._gateway_up = up
        if up:
            self.health.up()
        else:
            self.health.down()

    async def on_guild_join(self, guild: discord.Guild) -> None:
        await self._sync(guild)

    async def _sync(self, guild: discord.Guild) -> None:
        guilds = self.settings.discord_allowed_guilds
        if guilds and str(guild.id) not in guilds:
            return
        self.tree.copy_global_to(guild=guild)
        try:
            await self.tree.sync(guild=guild)
        except discord.HTTPException:
            log.exception("could not sync slash commands in %s", guild.id)

    async def close(self) -> None:
        self._mark_gateway(False)
        tasks = [t for t in (self._delivery, self._health, *self._feedbacks) if t is not None]
        for task in tasks:
            task.cancel()
        if tasks:  # bounded: shutting down must not wait on a stuck connection
            await asyncio.wait(tasks, timeout=5)
        await super().close()

    # --- messages -------------------------------------------------------------------

    async def on_message(self, message: discord.Message) -> None:
        if message.author.bot:
            return
        replied = await self._replied_message(message)  # fetched once: both steps need it
        if not await self._addressed(message, replied):
            return
        # Feedback first: typing shows before pictures are downloaded and the turn is stored.
        asyncio.create_task(_quietly(_typing_once(message.channel)))
        text = translate.question_text(message, self.user, self.settings.discord_trigger)
        language = language_of(text)
        try:
            await self._answer(message, replied, text)
        except UserFacingError as exc:
            await self._say(message, exc.text(language))
        except Exception:
            log.exception("Discord message %s failed", message.id)
            await self._say(message, say("sorry", language))

    async def _addressed(self, message: discord.Message, replied: discord.Message | None) -> bool:
        """Whether the message is for the bot: a DM, a mention, the trigger, a reply to the
        bot, or any message in a thread the bot started or was mentioned in."""
        channel = message.channel
        if message.guild is None:
            return True
        if self.user in message.mentions:
            if isinstance(channel, discord.Thread):
                self.threads.add(channel.id)
            return True
        trigger = self.settings.discord_trigger
        if trigger and message.content.startswith(trigger):
            return True
        if isinstance(channel, discord.Thread) and (channel.owner_id == self.user.id or channel.id in self.threads):
            return True
        return replied is not None and replied.author.id == self.user.id

    async def _replied_message(self, message: discord.Message) -> discord.Message | None:
        ref = message.reference
        if ref is None or ref.message_id is None:
            return None
        if isinstance(ref.resolved, discord.Message):
            return ref.resolved
        try:
            return await message.channel.fetch_message(ref.message_id)
        except discord.HTTPException:
            return None

    async def _answer(self, message: discord.Message, replied: discord.Message | None, text: str) -> None:
        to_bot = replied is not None and replied.author.id == self.user.id
        turn = translate.incoming(channel=message.channel, user=message.author, message_id=str(message.id),
                                  text=text, reply_to=replied.id if replied else None,
                                  reply_to_bot=replied.id if to_bot else None)
        await self.submit(turn, message=message, pictures=lambda: self._pictures(message, replied, text))

    async def submit(self, turn: IncomingMessage, *, message: discord.Message | None = None,
                     interaction: discord.Interaction | None = None, pictures=None) -> None:
        """Hand ``turn`` to the core; post its immediate reply, or watch the queued turn.
        A refusal for a place the bot does not serve is posted only to a slash command."""
        result = await self.core.handle(turn, pictures=pictures)
        if isinstance(result, Reply):
            if result.key == DUPLICATE or (result.key == "not_allowed" and interaction is None):
                return  # an event answered before, or a place the bot keeps quiet in
            await self.deliver(result, message=message, interaction=interaction)
            return
        if result.duplicate:  # a redelivered event: the first one is being answered
            return
        if interaction is not None:
            self.interactions[result.job_id] = interaction
        channel = message.channel if message else interaction.channel
        task = asyncio.create_task(self._feedback(channel, message, result, turn.language, turn.user_id))
        self._feedbacks.add(task)
        task.add_done_callback(self._feedbacks.discard)

    async def _pictures(self, message: discord.Message, replied: discord.Message | None,
                        text: str) -> tuple[bytes, ...]:
        """Pictures attached here, in the replied-to message, and behind links in the text."""
        attachments = [a for a in message.attachments if translate.is_picture(a)]
        if replied is not None and replied.author.id != self.user.id:  # the bot's own pictures
            # are drawings of ones already in the conversation
            attachments += [a for a in replied.attachments if translate.is_picture(a)]
        limit = self.settings.image_max_bytes
        if any(a.size > limit for a in attachments):
            raise UserFacingError.of("image_too_large", mb=limit // 1_048_576)
        images = [await a.read() for a in attachments]
        for url in translate.links(text)[: self.settings.images_per_message]:
            images.append(await fetch_image(url, max_bytes=limit, timeout_s=self.settings.fetch_timeout_s))
        return tuple(images)

    # --- while the user waits -------------------------------------------------------

    async def _feedback(self, channel: discord.abc.Messageable, message: discord.Message | None,
                        accepted: Accepted, language: str | None, user_id: str | None = None) -> None:
        """Typing while the turn waits or runs; the queue position when the wait is long;
        the answer as it is written, if streaming is on (an edit at most once a second)."""
        job = accepted.job_id
        loop = asyncio.get_running_loop()
        started, last_edit, shown = loop.time(), 0.0, None
        try:
            async with channel.typing():
                async for status in self.core.watch(job, poll_s=1.0, changes_only=False):
                    if status.state in FINAL_STATES or self.is_closed():
                        return
                    waited = loop.time() - started
                    if (status.state == "queued" and (status.position or 0) > 1
                            and waited >= self.settings.discord_queue_notice_s):
                        text = say("queued", language, ahead=status.position - 1)
                    elif status.state == "streaming" and self.settings.discord_stream and status.partial:
                        text = split_message(status.partial, LIMIT - 2)[0] + " …"
                    else:
                        continue
                    if text != shown and loop.time() - last_edit >= 1.0:
                        await self._placeholder(job, channel, message, text, user_id)
                        shown, last_edit = text, loop.time()
        except discord.HTTPException:
            log.warning("feedback for job %s failed", job, exc_info=True)

    async def _placeholder(self, job: int, channel, message: discord.Message | None, text: str,
                           user_id: str | None = None) -> None:
        existing = self.placeholders.get(job)
        mentions = _mentions(user_id)
        if existing is not None:
            await existing.edit(content=text, allowed_mentions=mentions)
        elif message is not None:
            self.placeholders[job] = await message.reply(text, mention_author=False, allowed_mentions=mentions)
        else:
            self.placeholders[job] = await channel.send(text, allowed_mentions=mentions)

    # --- replies --------------------------------------------------------------------

    async def _deliver_forever(self) -> None:
        """Post every finished reply once, including those finished while offline."""
        await self.wait_until_ready()
        await self.core.serve_replies(PLATFORM, self.deliver)

    async def deliver(self, reply: Reply, *, message: discord.Message | None = None,
                      interaction: discord.Interaction | None = None) -> None:
        """Post ``reply``: split to Discord's limit, the annotated picture attached to the
        first part, as a reply to the asking message (or as the /ask command's answer).

        A reply from the delivery loop (no ``message``/``interaction`` given) raises when
        Discord does not take every part, so that the core delivers it again; each part
        carries a nonce of its turn and number, so a part Discord already has is not posted
        twice (Discord returns the first message instead). A command's immediate reply
        (``message=``/``interaction=``) is only logged. ``core.sent`` records the first
        part's id once every part is accepted."""
        direct = message is not None or interaction is not None
        if reply.job_id is not None:
            interaction = interaction or self.interactions.pop(reply.job_id, None)
            placeholder = self.placeholders.pop(reply.job_id, None)
            if placeholder is not None:
                await _quietly(placeholder.delete())
        chunks = split_message(reply.text, LIMIT) or [""]
        files = [discord.File(io.BytesIO(img.data), filename=img.filename) for img in reply.images]
        mentions = _mentions(reply.user_id)  # the asker alone: never @everyone, a role or another user
        try:
            if interaction is not None:
                first = await _followup(interaction, chunks[0], files, mentions)
                for chunk in chunks[1:]:
                    await interaction.followup.send(chunk, allowed_mentions=mentions)
            else:
                channel = self.get_channel(int(reply.chat_id)) or await self.fetch_channel(int(reply.chat_id))
                reference = None
                if message is not None:
                    reference = message.to_reference(fail_if_not_exists=False)
                elif reply.reply_to_message_id and reply.reply_to_message_id.isdigit():
                    reference = discord.MessageReference(message_id=int(reply.reply_to_message_id),
                                                         channel_id=channel.id, fail_if_not_exists=False)
                first = await channel.send(chunks[0] or None, files=files, reference=reference,
                                           mention_author=False, nonce=_nonce(reply, 0), allowed_mentions=mentions)
                for n, chunk in enumerate(chunks[1:], 1):
                    await channel.send(chunk, nonce=_nonce(reply, n), allowed_mentions=mentions)
        except discord.HTTPException as exc:
            log.warning("could not post the reply of job %s to channel %s: %s", reply.job_id, reply.chat_id,
                        str(exc).replace("\n", " "))
            if direct:
                return
            raise
        if first is not None:  # every part accepted: the reply is delivered, under its first part's id
            await self.core.sent(reply, str(first.id))

    async def _say(self, message: discord.Message, text: str) -> None:
        await _quietly(message.reply(text, mention_author=False, allowed_mentions=_mentions(message.author.id)))


def _nonce(reply: Reply, part: int) -> str | None:
    """Discord's idempotency key of one part of a delivered reply (25 characters at most:
    "qvl", a 64-bit job id, ".", a part number below 100): Discord returns the message it
    already has for a repeated nonce instead of posting it again (for a few minutes)."""
    return None if reply.job_id is None else f"qvl{reply.job_id}.{part}"


def _mentions(user_id: str | int | None) -> discord.AllowedMentions:
    """Whom a message may ping: the asker ``user_id`` at most (when the text names them);
    never @everyone, @here, a role, another user or the author of the replied-to message."""
    users = [discord.Object(int(user_id))] if user_id is not None and str(user_id).isdigit() else False
    return discord.AllowedMentions(everyone=False, roles=False, users=users, replied_user=False)


async def _followup(interaction: discord.Interaction, text: str, files: list[discord.File],
                    mentions: discord.AllowedMentions):
    if not interaction.response.is_done():
        await interaction.response.send_message(text or None, files=files, allowed_mentions=mentions)
        return await interaction.original_response()
    return await interaction.followup.send(text or None, files=files, wait=True, allowed_mentions=mentions)


async def _typing_once(channel: discord.abc.Messageable) -> None:
    await channel.typing()


async def _quietly(coro) -> None:
    try:
        await coro
    except discord.HTTPException:
        log.warning("Discord call failed", exc_info=True)


async def run(settings: Settings, *, redis_url: str | None = None) -> None:
    """Run the Discord frontend until it is closed."""
    if settings.discord_token is None:
        raise UserFacingError("Set DISCORD_TOKEN (or QVL_DISCORD_TOKEN) to the bot's token.")
    core = Core(settings, redis_url_=redis_url)
    await core.check()
    client = DiscordFrontend(settings, core)
    try:
        await client.start(settings.discord_token.get_secret_value())
    except discord.LoginFailure as exc:
        raise UserFacingError("Discord refused the token: check DISCORD_TOKEN.") from exc
    finally:
        await client.close()
        await core.close()
