"""A loopback fake of Discord's servers: the REST API (v10) and the Gateway.

Real, unmodified discord.py connects to it. Only its two base URLs are pointed here
(``Route.BASE`` and ``DiscordWebSocket.DEFAULT_GATEWAY``, see
:meth:`FakeDiscord.patch_discord`); everything else is the protocol: JSON over HTTP with
Discord's payload shapes and error codes, and a JSON websocket with HELLO, IDENTIFY,
READY, heartbeats, sequence numbers, RESUME and INVALID_SESSION. The fake also keeps
Discord's rules that bots trip over: the MESSAGE_CONTENT intent, the 2000-character
limit, empty messages, the 3-second interaction deadline, one response per
interaction, follow-ups only after a response, the first follow-up after a deferral
replacing the "thinking" message, a repeated message nonce (``enforce_nonce``) within
a few minutes returning the first message instead of a new one.

Typical use (the ``fake_discord`` fixture starts it and patches discord.py)::

    async def test_reply(fake_discord):
        w = fake_discord.world
        bot = commands.Bot(command_prefix="!", intents=..., guild_ready_timeout=0.1)
        async with running(bot):
            await fake_discord.user_message(w.general, w.alice, f"<@{fake_discord.bot_id}> hi")
            [reply] = await fake_discord.wait_for_sent()

The modules follow the real service's split: ``gateway`` (the websocket), ``rest`` (the
HTTP routes for users, channels, messages, threads, guilds), ``interactions``
(application commands, interaction callbacks and their webhooks), ``payloads`` (the
JSON shapes), ``events`` (what a test makes users do), ``state`` (the world they all
share), ``protocol`` (intents, permissions, error codes), ``records`` (what tests read)
and ``server`` (:class:`FakeDiscord`, ``running`` and the ``fake_discord`` fixture).
:class:`FakeDiscord` is one class made of mixins, one per module, rather than separate
objects, because the fake is one server over one world: a message sent over REST must
reach every gateway session, a guild a test adds must reach a connected bot.
"""

from .protocol import Intent, Permission
from .records import Call, Edit, InteractionResponse, Reaction, SentMessage, Typing, World
from .server import FakeDiscord, fake_discord, running

__all__ = [
    "Call",
    "Edit",
    "FakeDiscord",
    "Intent",
    "InteractionResponse",
    "Permission",
    "Reaction",
    "SentMessage",
    "Typing",
    "World",
    "fake_discord",
    "running",
]
