"""A loopback fake of Discord's servers: the REST API (v10) and the Gateway.

Real, unmodified discord.py connects to it. Only its two base URLs are pointed here
(``Route.BASE`` and ``DiscordWebSocket.DEFAULT_GATEWAY``, see
:meth:`FakeDiscord.patch_discord`); everything else is the protocol: JSON over HTTP with
Discord's payload shapes and error codes, and a JSON websocket with HELLO, IDENTIFY,
READY, heartbeats, sequence numbers, RESUME and INVALID_SESSION. The fake also keeps
Discord's rules that bots trip over: the MESSAGE_CONTENT intent, the 2000-character
limit, empty messages, the 3-second interaction deadline, one response per
interaction, follow-ups only after a response, the first follow-up after a deferral
replacing the "thinking" message.

Typical use (the ``fake_discord`` fixture starts it and patches discord.py)::

    async def test_reply(fake_discord):
        w = fake_discord.world
        bot = commands.Bot(command_prefix="!", intents=..., guild_ready_timeout=0.1)
        async with running(bot):
            await fake_discord.user_message(w.general, w.alice, f"<@{fake_discord.bot_id}> hi")
            [reply] = await fake_discord.wait_for_sent()

Why one file past the house size: the fake is test infrastructure owned as one unit;
its sections are marked below (records, gateway, test-side events, REST).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import io
import json
import logging
import mimetypes
import re
import secrets
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, NamedTuple
from urllib.parse import quote

import pytest
import pytest_asyncio
from aiohttp import WSMsgType, web

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

log = logging.getLogger("tests.fakes.discord")

DISCORD_EPOCH_MS = 1_420_070_400_000
UPLOAD_LIMIT = 10 * 1024 * 1024  # bytes per file for an unboosted guild
INTERACTION_DEADLINE = 3.0  # seconds Discord waits for the first interaction response


class Intent:
    """Gateway intent bits (https://discord.com/developers/docs/events/gateway#gateway-intents)."""

    GUILDS = 1 << 0
    GUILD_MEMBERS = 1 << 1
    GUILD_PRESENCES = 1 << 8
    GUILD_MESSAGES = 1 << 9
    GUILD_MESSAGE_REACTIONS = 1 << 10
    GUILD_MESSAGE_TYPING = 1 << 11
    DIRECT_MESSAGES = 1 << 12
    DIRECT_MESSAGE_REACTIONS = 1 << 13
    DIRECT_MESSAGE_TYPING = 1 << 14
    MESSAGE_CONTENT = 1 << 15
    PRIVILEGED = GUILD_MEMBERS | GUILD_PRESENCES | MESSAGE_CONTENT


class Permission:
    """Permission bits used by the fake's roles."""

    CREATE_INSTANT_INVITE = 1 << 0
    ADMINISTRATOR = 1 << 3
    ADD_REACTIONS = 1 << 6
    VIEW_CHANNEL = 1 << 10
    SEND_MESSAGES = 1 << 11
    MANAGE_MESSAGES = 1 << 13
    EMBED_LINKS = 1 << 14
    ATTACH_FILES = 1 << 15
    READ_MESSAGE_HISTORY = 1 << 16
    USE_EXTERNAL_EMOJIS = 1 << 18
    CHANGE_NICKNAME = 1 << 26
    USE_APPLICATION_COMMANDS = 1 << 31
    CREATE_PUBLIC_THREADS = 1 << 35
    SEND_MESSAGES_IN_THREADS = 1 << 38
    ALL = (1 << 51) - 1
    EVERYONE = (
        CREATE_INSTANT_INVITE | ADD_REACTIONS | VIEW_CHANNEL | SEND_MESSAGES | EMBED_LINKS
        | ATTACH_FILES | READ_MESSAGE_HISTORY | USE_EXTERNAL_EMOJIS | CHANGE_NICKNAME
        | USE_APPLICATION_COMMANDS | CREATE_PUBLIC_THREADS | SEND_MESSAGES_IN_THREADS
    )  # fmt: skip


# Discord's JSON error codes (https://discord.com/developers/docs/topics/opcodes-and-status-codes)
UNKNOWN_CHANNEL, UNKNOWN_GUILD, UNKNOWN_MEMBER, UNKNOWN_MESSAGE = 10003, 10004, 10007, 10008
UNKNOWN_USER, UNKNOWN_WEBHOOK, UNKNOWN_INTERACTION, UNKNOWN_COMMAND = 10013, 10015, 10062, 10063
TOO_LARGE, ALREADY_ACKNOWLEDGED, CANNOT_EDIT_OTHERS = 40005, 40060, 50005
EMPTY_MESSAGE, INVALID_FORM_BODY = 50006, 50035

_USER_MENTION = re.compile(r"<@!?([0-9]{15,20})>")
_ROLE_MENTION = re.compile(r"<@&([0-9]{15,20})>")
_COMMAND_NAME = re.compile(r"^[-_\w]{1,32}$")


# ---------------------------------------------------------------------------- records


class Call(NamedTuple):
    """One REST request: method, path below ``/api/v10`` and the body.

    The body is the parsed JSON, ``None`` when empty, or for multipart
    ``{"payload_json": <parsed>, "files": [(filename, bytes), ...]}``.
    """

    method: str
    path: str
    body: Any


@dataclass
class SentMessage:
    """A message the bot made visible: ``via`` is "channel" (POST /channels/{id}/messages),
    "interaction" (callback type 4), "followup" (webhook POST) or "edit_original" (the
    PATCH that fills a deferred response)."""

    id: int
    channel_id: int
    content: str
    files: list[tuple[str, bytes]]
    message_reference: dict | None
    embeds: list[dict]
    flags: int
    via: str
    payload: dict
    request: Any
    interaction_id: int | None = None

    @property
    def reply_to(self) -> int | None:
        ref = self.message_reference
        return int(ref["message_id"]) if ref and ref.get("message_id") else None

    @property
    def ephemeral(self) -> bool:
        return bool(self.flags & 64)


@dataclass
class Edit:
    """A PATCH of a message by the bot; ``content`` is the content after the edit."""

    message_id: int
    channel_id: int
    content: str
    files: list[tuple[str, bytes]]
    payload: dict
    request: Any
    via: str


@dataclass
class Typing:
    """A typing trigger by the bot; ``at`` is ``time.monotonic()``."""

    channel_id: int
    at: float


@dataclass
class InteractionResponse:
    """A POST to /interactions/{id}/{token}/callback."""

    interaction_id: int
    type: int
    data: dict
    files: list[tuple[str, bytes]]


@dataclass
class Reaction:
    channel_id: int
    message_id: int
    emoji: str
    added: bool


@dataclass(frozen=True)
class World:
    """Ids of the default world: one guild, two text channels, alice (admin) and bob."""

    guild: int
    general: int
    random: int
    alice: int
    bob: int
    admin_role: int


@dataclass
class _Upload:
    field: str
    filename: str
    data: bytes


@dataclass
class _Guild:
    id: int
    name: str
    owner_id: int
    joined_at: str
    roles: dict[int, dict] = field(default_factory=dict)
    members: dict[int, dict] = field(default_factory=dict)  # user id -> member without "user"
    channels: list[int] = field(default_factory=list)
    threads: list[int] = field(default_factory=list)


@dataclass
class _Interaction:
    id: int
    token: str
    guild_id: int | None
    channel_id: int
    user_id: int
    name: str
    created: float
    response_type: int | None = None
    original_id: int | None = None
    loading: bool = False
    ephemeral: bool = False
    message_ids: set[int] = field(default_factory=set)


class _HTTPError(Exception):
    def __init__(self, status: int, code: int, message: str, errors: dict | None = None):
        super().__init__(f"{status} {code} {message}")
        self.status, self.code, self.message, self.errors = status, code, message, errors

    def response(self) -> web.Response:
        body: dict[str, Any] = {"message": self.message, "code": self.code}
        if self.errors:
            body["errors"] = self.errors
        return _json(body, self.status)


def _json(data: Any, status: int = 200) -> web.Response:
    # Exactly "application/json": discord.py's json_or_text compares the header verbatim.
    return web.Response(
        status=status, body=json.dumps(data).encode(), headers={"Content-Type": "application/json"}
    )


def _form_error(field_name: str, code: str, message: str) -> _HTTPError:
    errors = {field_name: {"_errors": [{"code": code, "message": message}]}}
    return _HTTPError(400, INVALID_FORM_BODY, "Invalid Form Body", errors)


def _now_iso() -> str:
    return datetime.now(UTC).isoformat()


def _image_size(data: bytes) -> tuple[int, int] | None:
    try:
        from PIL import Image

        with Image.open(io.BytesIO(data)) as image:
            return image.size
    except Exception:  # not an image Pillow knows: Discord just omits width/height
        return None


_ROUTES: list[tuple[str, re.Pattern[str], str, bool]] = []


def _route(method: str, pattern: str, *, auth: bool = True) -> Callable:
    """Register a REST handler; ``auth`` routes need ``Authorization: Bot <token>``."""

    def register(fn: Callable) -> Callable:
        _ROUTES.append((method, re.compile(pattern + r"\Z"), fn.__name__, auth))
        return fn

    return register


_C = r"(?P<channel_id>\d+)"
_M = r"(?P<message_id>\d+)"
_G = r"(?P<guild_id>\d+)"
_A = r"(?P<app_id>\d+)"
_T = r"(?P<token>[^/]+)"


class _Session:
    """A gateway session: its event log survives disconnects so RESUME can replay it."""

    def __init__(self, session_id: str, intents: int, token: str):
        self.id, self.intents, self.token = session_id, intents, token
        self.frames: list[tuple[int, str]] = []  # (seq, serialized frame)
        self.seq = 0
        self.cursor = 0  # index of the next frame to write to the attached connection
        self.conn: _Conn | None = None
        self.alive = True
        self.wake = asyncio.Event()


class _Conn:
    def __init__(self, ws: web.WebSocketResponse, path: str, query: dict[str, str]):
        self.ws, self.path, self.query = ws, path, query
        self.session: _Session | None = None
        self.dropped = False
        self.pump: asyncio.Task | None = None
        self._lock = asyncio.Lock()

    async def send(self, frame: dict | str) -> None:
        text = frame if isinstance(frame, str) else json.dumps(frame)
        async with self._lock:
            await self.ws.send_str(text)


class _Snowflakes:
    def __init__(self) -> None:
        self._last = 0

    def next(self) -> int:
        now = ((int(time.time() * 1000) - DISCORD_EPOCH_MS) << 22) | (1 << 17)
        self._last = max(now, self._last + 1)
        return self._last


# ---------------------------------------------------------------------------- the fake


class FakeDiscord:
    """Discord's REST API and Gateway on 127.0.0.1, with records for assertions.

    Records: ``requests`` (every REST :class:`Call`), ``sent`` (:class:`SentMessage`),
    ``edits``, ``deleted`` ((channel_id, message_id)), ``typing``, ``reactions``,
    ``interaction_responses``, ``command_syncs`` ((guild_id or None, [names])),
    ``dispatched`` ((event, payload) for every gateway dispatch), ``presences``,
    ``unknown_routes``, ``errors`` (the fake's own bugs), ``gateway_connections``
    ((path, query) per websocket), ``identify_count``, ``resume_count``.
    """

    def __init__(
        self,
        *,
        world: bool = True,
        token: str | None = None,
        bot_name: str = "qvl-bot",
        heartbeat_interval_ms: int = 41_250,
        interaction_deadline: float = INTERACTION_DEADLINE,
        privileged_intents: int = Intent.PRIVILEGED,
    ):
        self.token = token  # None: any "Bot <token>" is accepted
        self.heartbeat_interval_ms = heartbeat_interval_ms
        self.interaction_deadline = interaction_deadline
        self.privileged_intents = privileged_intents  # what the developer portal allows
        self.upload_limit = UPLOAD_LIMIT
        self._ids = _Snowflakes()
        self.port = 0
        self._runner: web.AppRunner | None = None

        self.users: dict[int, dict] = {}
        self.guilds: dict[int, _Guild] = {}
        self.channels: dict[int, dict] = {}
        self.messages: dict[int, dict] = {}
        self.commands: dict[int | None, list[dict]] = {}
        self._dms: dict[int, int] = {}
        self._files: dict[str, tuple[bytes, str]] = {}
        self._interactions: dict[int, _Interaction] = {}
        self._sessions: dict[str, _Session] = {}
        self._conns: set[_Conn] = set()
        self._waiters: list[asyncio.Future] = []
        self._background: set[asyncio.Task] = set()

        self.requests: list[Call] = []
        self.sent: list[SentMessage] = []
        self.edits: list[Edit] = []
        self.deleted: list[tuple[int, int]] = []
        self.typing: list[Typing] = []
        self.reactions: list[Reaction] = []
        self.interaction_responses: list[InteractionResponse] = []
        self.command_syncs: list[tuple[int | None, list[str]]] = []
        self.dispatched: list[tuple[str, dict]] = []
        self.last_dispatched: tuple[str, dict] | None = None
        self.presences: list[dict] = []
        self.downloads: list[str] = []
        self.unknown_routes: list[tuple[str, str]] = []
        self.errors: list[str] = []
        self.gateway_connections: list[tuple[str, dict[str, str]]] = []
        self.identify_count = 0
        self.resume_count = 0

        self.bot_id = self.add_user(bot_name, bot=True)
        self.application_id = self.bot_id  # as for every application created since 2016
        self.developer_id = self.add_user("qvl-dev")
        self._world: World | None = self.build_default_world() if world else None

    # ------------------------------------------------------------------ lifecycle

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_base(self) -> str:
        return f"{self.base_url}/api/v10"

    @property
    def gateway_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/gateway"

    @property
    def world(self) -> World:
        if self._world is None:
            raise RuntimeError("this FakeDiscord was made with world=False")
        return self._world

    @property
    def bot(self) -> dict:
        return copy.deepcopy(self.users[self.bot_id])

    async def start(self) -> FakeDiscord:
        """Serve on 127.0.0.1 on a free port; returns self."""
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_get("/gateway", self._gateway)
        app.router.add_get("/gateway/resume", self._gateway)
        app.router.add_route("*", r"/api/v{version:\d+}/{tail:.*}", self._api)
        app.router.add_get("/attachments/{tail:.*}", self._cdn)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self

    async def stop(self) -> None:
        """Close every websocket (1001, going away) and the server."""
        for conn in list(self._conns):
            conn.dropped = True
            self._detach(conn)
            with contextlib.suppress(Exception):
                await conn.ws.close(code=1001, message=b"fake Discord stopping")
        for session in self._sessions.values():
            session.alive = False
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @contextlib.contextmanager
    def patch_discord(self) -> Iterator[FakeDiscord]:
        """Point discord.py's REST base and default gateway URL here; restore after.

        discord.py's plain Client never asks GET /gateway/bot (only the sharded one
        does): it connects to the class attribute ``DiscordWebSocket.DEFAULT_GATEWAY``
        and afterwards to READY's ``resume_gateway_url``.
        """
        import discord.gateway
        import discord.http
        import yarl

        route, ws = discord.http.Route, discord.gateway.DiscordWebSocket
        old = route.BASE, ws.DEFAULT_GATEWAY
        route.BASE, ws.DEFAULT_GATEWAY = self.api_base, yarl.URL(self.gateway_url)
        try:
            yield self
        finally:
            route.BASE, ws.DEFAULT_GATEWAY = old

    # ------------------------------------------------------------------ waiting

    def _notify(self) -> None:
        waiters, self._waiters = self._waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)

    async def wait_for(
        self, predicate: Callable[[], Any], *, timeout: float = 10.0, what: str = "a condition"
    ) -> Any:
        """Wait until ``predicate()`` is truthy (re-checked on every change); return it.

        Raises TimeoutError with a summary of what the fake saw.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            result = predicate()
            if result:
                return result
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError(f"fake Discord: no {what} after {timeout}s\n{self.describe()}")
            fut = loop.create_future()
            self._waiters.append(fut)
            # Wake at least every 50 ms: some conditions change without a notify.
            await asyncio.wait([fut], timeout=min(remaining, 0.05))

    async def wait_for_sent(
        self, n: int = 1, *, timeout: float = 10.0, channel_id: int | None = None
    ) -> list[SentMessage]:
        """Wait for at least ``n`` bot messages (in ``channel_id`` if given); return all of them."""

        def matching() -> list[SentMessage]:
            return [m for m in self.sent if channel_id is None or m.channel_id == channel_id]

        await self.wait_for(
            lambda: len(matching()) >= n, timeout=timeout, what=f"{n} sent message(s)"
        )
        return matching()

    async def wait_until_connected(self, *, timeout: float = 10.0) -> None:
        """Wait until a bot holds a live gateway session (after READY or RESUMED was queued)."""
        await self.wait_for(lambda: self.connected, timeout=timeout, what="gateway connection")

    @property
    def connected(self) -> bool:
        return any(s.alive and s.conn is not None for s in self._sessions.values())

    def describe(self) -> str:
        """A short account of the fake's state, for failure messages."""
        lines = [
            f"  sessions: {[(s.id[:8], s.alive, s.conn is not None) for s in self._sessions.values()]}",
            f"  sent: {[(m.via, m.channel_id, m.content[:40]) for m in self.sent[-5:]]}",
            f"  last requests: {[(c.method, c.path) for c in self.requests[-8:]]}",
        ]
        if self.unknown_routes:
            lines.append(f"  UNKNOWN ROUTES: {self.unknown_routes}")
        if self.errors:
            lines.append(f"  FAKE ERRORS: {self.errors}")
        return "\n".join(lines)

    # ------------------------------------------------------------------ world building

    def add_user(self, name: str, *, bot: bool = False, global_name: str | None = None) -> int:
        """A user (not yet in any guild); returns its id."""
        uid = self._ids.next()
        self.users[uid] = {
            "id": str(uid), "username": name, "discriminator": "0",
            "global_name": global_name if global_name is not None else (None if bot else name.title()),
            "avatar": None, "banner": None, "accent_color": None, "avatar_decoration_data": None,
            "bot": bot, "system": False, "public_flags": 0, "flags": 0,
        }  # fmt: skip
        return uid

    def add_guild(self, name: str = "Test guild", *, owner_id: int | None = None) -> int:
        """A guild with the bot in it (and its managed role); returns its id. Dispatches
        GUILD_CREATE when a bot is connected."""
        gid = self._ids.next()
        owner = owner_id if owner_id is not None else self.developer_id
        guild = _Guild(id=gid, name=name, owner_id=owner, joined_at=_now_iso())
        self.guilds[gid] = guild
        guild.roles[gid] = self._role_payload(gid, "@everyone", Permission.EVERYONE, position=0)
        bot_role = self._ids.next()
        guild.roles[bot_role] = self._role_payload(
            bot_role, self.users[self.bot_id]["username"], Permission.EVERYONE | Permission.MANAGE_MESSAGES,
            position=1, managed=True, tags={"bot_id": str(self.bot_id)},
        )  # fmt: skip
        guild.members[self.bot_id] = self._member_payload([bot_role])
        if owner_id is not None:
            guild.members[owner_id] = self._member_payload([])
        if self._live_sessions():
            self.dispatched.append(
                ("GUILD_CREATE", self._guild_create(guild, Intent.GUILD_MEMBERS))
            )
        for session in self._live_sessions():
            joined = self._guild_create(guild, session.intents)
            del joined["unavailable"]  # a join, not a guild of READY becoming available
            self._emit_one(session, "GUILD_CREATE", joined)
        self._notify()
        return gid

    def add_role(
        self, guild_id: int, name: str, permissions: int = 0, *, hoist: bool = False
    ) -> int:
        """A role; returns its id. Dispatches GUILD_ROLE_CREATE."""
        guild = self.guilds[guild_id]
        rid = self._ids.next()
        guild.roles[rid] = self._role_payload(
            rid, name, permissions, position=len(guild.roles), hoist=hoist
        )
        self._emit("GUILD_ROLE_CREATE", {"guild_id": str(guild_id), "role": guild.roles[rid]})
        return rid

    def add_member(
        self, guild_id: int, user_id: int, roles: list[int] | tuple[int, ...] = ()
    ) -> int:
        """Put a user in a guild; returns the user id. Dispatches GUILD_MEMBER_ADD."""
        guild = self.guilds[guild_id]
        guild.members[user_id] = self._member_payload(list(roles))
        self._emit(
            "GUILD_MEMBER_ADD", {**self._member(guild_id, user_id), "guild_id": str(guild_id)}
        )
        return user_id

    def give_role(self, guild_id: int, user_id: int, role_id: int) -> None:
        """Add a role to a member. Dispatches GUILD_MEMBER_UPDATE."""
        member = self.guilds[guild_id].members[user_id]
        if str(role_id) not in member["roles"]:
            member["roles"].append(str(role_id))
        self._emit(
            "GUILD_MEMBER_UPDATE", {**self._member(guild_id, user_id), "guild_id": str(guild_id)}
        )

    def add_text_channel(self, guild_id: int, name: str, *, topic: str | None = None) -> int:
        """A text channel; returns its id. Dispatches CHANNEL_CREATE."""
        guild = self.guilds[guild_id]
        cid = self._ids.next()
        self.channels[cid] = {
            "id": str(cid), "type": 0, "guild_id": str(guild_id), "name": name,
            "position": len(guild.channels), "permission_overwrites": [], "topic": topic,
            "nsfw": False, "last_message_id": None, "rate_limit_per_user": 0, "parent_id": None,
            "default_auto_archive_duration": 1440, "flags": 0,
        }  # fmt: skip
        guild.channels.append(cid)
        self._emit("CHANNEL_CREATE", self.channels[cid])
        return cid

    def add_thread(
        self, parent_channel_id: int, name: str, owner_id: int, *, private: bool = False
    ) -> int:
        """A thread made by a user; returns its id. Dispatches THREAD_CREATE."""
        thread = self._new_thread(parent_channel_id, name, owner_id, private=private)
        self._emit("THREAD_CREATE", {**thread, "newly_created": True})
        return int(thread["id"])

    def dm_channel(self, user_id: int) -> int:
        """The DM channel between the bot and a user (made on first use); returns its id."""
        if user_id not in self._dms:
            cid = self._ids.next()
            self.channels[cid] = {
                "id": str(cid), "type": 1, "last_message_id": None, "flags": 0,
                "recipients": [self.users[user_id]],
            }  # fmt: skip
            self._dms[user_id] = cid
        return self._dms[user_id]

    def build_default_world(self) -> World:
        """One guild, channels #general and #random, alice (owner, admin role) and bob."""
        alice, bob = self.add_user("alice"), self.add_user("bob")
        gid = self.add_guild("qvl test guild", owner_id=alice)
        general = self.add_text_channel(gid, "general")
        random_ = self.add_text_channel(gid, "random")
        admin = self.add_role(gid, "admin", Permission.ADMINISTRATOR)
        self.give_role(gid, alice, admin)
        self.add_member(gid, bob)
        self._world = World(
            guild=gid, general=general, random=random_, alice=alice, bob=bob, admin_role=admin
        )
        return self._world

    def user(self, user_id: int) -> dict:
        return copy.deepcopy(self.users[user_id])

    def channel(self, channel_id: int) -> dict:
        return copy.deepcopy(self.channels[channel_id])

    def message(self, message_id: int) -> dict:
        """The current payload of any message the fake knows (edits applied)."""
        return copy.deepcopy(self.messages[message_id])

    def permissions(self, guild_id: int, user_id: int) -> int:
        """A member's guild-level permissions (no channel overwrites in this fake)."""
        guild = self.guilds[guild_id]
        if user_id == guild.owner_id:
            return Permission.ALL
        perms = int(guild.roles[guild_id]["permissions"])
        for rid in guild.members[user_id]["roles"]:
            perms |= int(guild.roles[int(rid)]["permissions"])
        return Permission.ALL if perms & Permission.ADMINISTRATOR else perms

    # ------------------------------------------------------------------ payloads

    @staticmethod
    def _role_payload(rid: int, name: str, permissions: int, *, position: int, hoist: bool = False,
                      managed: bool = False, tags: dict | None = None) -> dict:  # fmt: skip
        role = {
            "id": str(rid), "name": name, "color": 0,
            "colors": {"primary_color": 0, "secondary_color": None, "tertiary_color": None},
            "hoist": hoist, "icon": None, "unicode_emoji": None, "position": position,
            "permissions": str(permissions), "managed": managed, "mentionable": False, "flags": 0,
        }  # fmt: skip
        if tags:
            role["tags"] = tags
        return role

    @staticmethod
    def _member_payload(roles: list[int]) -> dict:
        return {
            "roles": [str(r) for r in roles], "nick": None, "avatar": None, "banner": None,
            "joined_at": _now_iso(), "premium_since": None, "deaf": False, "mute": False,
            "flags": 0, "pending": False, "communication_disabled_until": None,
        }  # fmt: skip

    def _member(self, guild_id: int, user_id: int, *, with_user: bool = True) -> dict:
        member = copy.deepcopy(self.guilds[guild_id].members[user_id])
        if with_user:
            member["user"] = self.user(user_id)
        return member

    def _guild_of(self, channel_id: int) -> int | None:
        gid = self.channels[channel_id].get("guild_id")
        return int(gid) if gid else None

    def _guild_create(self, guild: _Guild, intents: int) -> dict:
        # Without GUILD_MEMBERS Discord sends only the bot's own member.
        member_ids = list(guild.members) if intents & Intent.GUILD_MEMBERS else [self.bot_id]
        channels = []
        for cid in guild.channels:
            channel = copy.deepcopy(self.channels[cid])
            channel.pop("guild_id", None)  # GUILD_CREATE's channels carry no guild_id
            channels.append(channel)
        return {
            "id": str(guild.id), "name": guild.name, "icon": None, "splash": None,
            "discovery_splash": None, "banner": None, "description": None,
            "owner_id": str(guild.owner_id), "afk_channel_id": None, "afk_timeout": 300,
            "verification_level": 0, "default_message_notifications": 0,
            "explicit_content_filter": 0, "mfa_level": 0, "nsfw_level": 0, "features": [],
            "roles": list(copy.deepcopy(guild.roles).values()), "emojis": [], "stickers": [],
            "system_channel_id": str(guild.channels[0]) if guild.channels else None,
            "system_channel_flags": 0, "rules_channel_id": None, "public_updates_channel_id": None,
            "safety_alerts_channel_id": None, "max_members": 500000, "vanity_url_code": None,
            "premium_tier": 0, "premium_subscription_count": 0, "preferred_locale": "en-US",
            "premium_progress_bar_enabled": False, "application_id": None,
            "joined_at": guild.joined_at, "large": False, "unavailable": False,
            "member_count": len(guild.members),
            "members": [self._member(guild.id, uid) for uid in member_ids],
            "channels": channels,
            "threads": [copy.deepcopy(self.channels[t]) for t in guild.threads],
            "voice_states": [], "presences": [], "stage_instances": [],
            "guild_scheduled_events": [], "soundboard_sounds": [],
        }  # fmt: skip

    def _app_info(self) -> dict:
        flags = (1 << 13) | (1 << 15) | (1 << 19)  # the three *_LIMITED gateway intent flags
        return {
            "id": str(self.application_id), "name": self.users[self.bot_id]["username"],
            "icon": None, "description": "", "summary": "", "type": None, "bot_public": True,
            "bot_require_code_grant": False, "owner": self.user(self.developer_id),
            "team": None, "verify_key": "0" * 64, "flags": flags, "tags": [],
            "bot": self.user(self.bot_id), "redirect_uris": [], "interactions_endpoint_url": None,
            "approximate_guild_count": len(self.guilds), "install_params": None,
        }  # fmt: skip

    def _mention(self, guild_id: int | None, user_id: int) -> dict:
        user = self.user(user_id)
        if guild_id and user_id in self.guilds[guild_id].members:
            user["member"] = self._member(guild_id, user_id, with_user=False)
        return user

    def _store_attachment(self, channel_id: int, filename: str, data: bytes,
                          content_type: str | None = None, *, description: str | None = None,
                          ephemeral: bool = False) -> dict:  # fmt: skip
        aid = self._ids.next()
        content_type = (
            content_type or mimetypes.guess_type(filename)[0] or "application/octet-stream"
        )
        path = f"/attachments/{channel_id}/{aid}/{filename}"
        self._files[path] = (data, content_type)
        url = f"{self.base_url}/attachments/{channel_id}/{aid}/{quote(filename)}"
        attachment = {
            "id": str(aid), "filename": filename, "size": len(data), "url": url,
            "proxy_url": url, "content_type": content_type,
        }  # fmt: skip
        if description:
            attachment["description"] = description
        if ephemeral:
            attachment["ephemeral"] = True
        if content_type.startswith("image/") and (size := _image_size(data)):
            attachment["width"], attachment["height"] = size
        return attachment

    def _new_thread(self, parent_id: int, name: str, owner_id: int, *, thread_id: int | None = None,
                    private: bool = False, auto_archive: int = 1440) -> dict:  # fmt: skip
        gid = self._guild_of(parent_id)
        if gid is None:
            raise _HTTPError(400, 50024, "Cannot execute action on this channel type")
        tid = thread_id or self._ids.next()
        now = _now_iso()
        metadata = {"archived": False, "auto_archive_duration": auto_archive, "archive_timestamp": now,
                    "locked": False, "create_timestamp": now}  # fmt: skip
        if private:
            metadata["invitable"] = True
        thread = {
            "id": str(tid), "type": 12 if private else 11, "guild_id": str(gid),
            "parent_id": str(parent_id), "owner_id": str(owner_id), "name": name,
            "last_message_id": None, "message_count": 0, "member_count": 1,
            "rate_limit_per_user": 0, "flags": 0, "total_message_sent": 0,
            "thread_metadata": metadata, "applied_tags": [],
        }  # fmt: skip
        self.channels[tid] = thread
        self.guilds[gid].threads.append(tid)
        return thread

    def _new_message(self, *, channel_id: int, author_id: int, content: str = "",
                     attachments: list[dict] | None = None, mention_ids: list[int] | None = None,
                     mention_roles: list[int] | None = None, mention_everyone: bool = False,
                     reference: dict | None = None, msg_type: int = 0, flags: int = 0,
                     embeds: list | None = None, components: list | None = None,
                     nonce: Any = None, webhook_id: int | None = None,
                     interaction: _Interaction | None = None, tts: bool = False) -> dict:  # fmt: skip
        channel = self.channels[channel_id]
        gid = self._guild_of(channel_id)
        mid = self._ids.next()
        msg: dict[str, Any] = {
            "id": str(mid), "channel_id": str(channel_id), "author": self.user(author_id),
            "content": content, "timestamp": _now_iso(), "edited_timestamp": None, "tts": tts,
            "mention_everyone": mention_everyone,
            "mentions": [self._mention(gid, u) for u in mention_ids or []],
            "mention_roles": [str(r) for r in mention_roles or []],
            "attachments": attachments or [], "embeds": embeds or [], "pinned": False,
            "type": msg_type, "flags": flags, "components": components or [],
        }  # fmt: skip
        if nonce is not None:
            msg["nonce"] = nonce
        if webhook_id is not None:
            msg["webhook_id"] = msg["application_id"] = str(webhook_id)
        if gid is not None:
            msg["guild_id"] = str(gid)
            if author_id in self.guilds[gid].members:
                msg["member"] = self._member(gid, author_id, with_user=False)
        if reference is not None:
            msg["message_reference"] = reference
            ref = self.messages.get(int(reference["message_id"]))
            msg["referenced_message"] = self._nested(ref) if ref else None
        if interaction is not None:
            msg["interaction_metadata"] = {
                "id": str(interaction.id), "type": 2, "user": self.user(interaction.user_id),
                "name": interaction.name, "command_type": 1,
                "authorizing_integration_owners": (
                    {"0": str(interaction.guild_id)} if interaction.guild_id
                    else {"1": str(interaction.user_id)}
                ),
            }  # fmt: skip
            interaction.message_ids.add(mid)
        if channel["type"] in (11, 12):
            msg["position"] = channel["total_message_sent"]
            channel["message_count"] += 1
            channel["total_message_sent"] += 1
        if not flags & 64:
            channel["last_message_id"] = str(mid)
        self.messages[mid] = msg
        return msg

    @staticmethod
    def _nested(msg: dict) -> dict:
        nested = copy.deepcopy(msg)
        nested.pop("referenced_message", None)
        return nested

    @staticmethod
    def _rest(msg: dict) -> dict:
        """A message as the REST API returns it: no guild_id, no member objects."""
        out = copy.deepcopy(msg)
        out.pop("guild_id", None)
        out.pop("member", None)
        for mention in out.get("mentions", []):
            mention.pop("member", None)
        return out

    # ------------------------------------------------------------------ gateway

    def _live_sessions(self) -> list[_Session]:
        return [s for s in self._sessions.values() if s.alive]

    def _visible(self, session: _Session, event: str, payload: dict) -> dict | None:
        """The payload as this session may see it under its intents, or None."""
        intents = session.intents
        in_guild = bool(payload.get("guild_id"))
        if event.startswith("MESSAGE_REACTION"):
            need = Intent.GUILD_MESSAGE_REACTIONS if in_guild else Intent.DIRECT_MESSAGE_REACTIONS
        elif event.startswith("MESSAGE_"):
            need = Intent.GUILD_MESSAGES if in_guild else Intent.DIRECT_MESSAGES
        elif event == "TYPING_START":
            need = Intent.GUILD_MESSAGE_TYPING if in_guild else Intent.DIRECT_MESSAGE_TYPING
        elif event.startswith("GUILD_MEMBER"):
            need = Intent.GUILD_MEMBERS
        elif event.startswith(("GUILD_", "CHANNEL_", "THREAD_")):
            need = Intent.GUILDS
        else:
            need = 0
        if need and not intents & need:
            return None
        if event in ("MESSAGE_CREATE", "MESSAGE_UPDATE") and not intents & Intent.MESSAGE_CONTENT:
            author = int(payload.get("author", {}).get("id", 0))
            mentioned = any(int(u["id"]) == self.bot_id for u in payload.get("mentions", []))
            if in_guild and author != self.bot_id and not mentioned:
                payload = {
                    **payload,
                    "content": "",
                    "embeds": [],
                    "attachments": [],
                    "components": [],
                }
                payload.pop("poll", None)
        return payload

    def _emit_one(self, session: _Session, event: str, payload: dict) -> bool:
        data = self._visible(session, event, payload)
        if data is None:
            return False
        session.seq += 1
        frame = {"op": 0, "t": event, "s": session.seq, "d": data}
        session.frames.append((session.seq, json.dumps(frame)))
        session.wake.set()
        return True

    def _emit(self, event: str, payload: dict) -> list[tuple[_Session, int]]:
        """Queue an event to every live session; returns (session, frames-to-flush)."""
        payload = copy.deepcopy(payload)
        self.dispatched.append((event, payload))
        self.last_dispatched = (event, payload)
        targets = []
        for session in self._live_sessions():
            if self._emit_one(session, event, payload):
                targets.append((session, len(session.frames)))
        self._notify()
        return targets

    async def dispatch(self, event: str, payload: dict) -> dict:
        """Send a raw gateway event (op 0) to every bot session; returns the payload.

        Waits until it is written to every connected socket. Sessions that are
        disconnected but resumable keep it for RESUME.
        """
        targets = self._emit(event, payload)
        if not self._sessions:
            log.warning("fake Discord: no bot has identified; %s went nowhere", event)
        await self.wait_for(
            lambda: all(s.cursor >= n or s.conn is None for s, n in targets),
            timeout=5.0, what=f"{event} written to the gateway",
        )  # fmt: skip
        return payload

    async def drop_gateway(self, *, code: int = 4000, resumable: bool = True) -> None:
        """Close every gateway socket with ``code``, as a network or Discord failure would.

        With ``resumable=False`` the sessions are also invalidated: the client's RESUME
        gets INVALID_SESSION (op 9, d=false) and it must IDENTIFY again.
        """
        conns = list(self._conns)
        for conn in conns:
            conn.dropped = True
            self._detach(conn)
        if not resumable:
            for session in self._sessions.values():
                session.alive = False
        for conn in conns:
            with contextlib.suppress(Exception):
                await conn.ws.close(code=code, message=b"dropped by the fake")

    def _attach(self, conn: _Conn, session: _Session, cursor: int) -> None:
        if session.conn is not None and session.conn is not conn:
            old = session.conn
            old.dropped = True
            self._detach(old)
            task = asyncio.get_running_loop().create_task(old.ws.close(code=4000))
            self._background.add(task)
            task.add_done_callback(self._background.discard)
        conn.session, session.conn, session.cursor = session, conn, cursor
        conn.pump = asyncio.create_task(
            self._pump(conn, session), name=f"fake-gateway-{session.id[:8]}"
        )
        self._notify()

    def _detach(self, conn: _Conn) -> None:
        session = conn.session
        if session is not None and session.conn is conn:
            session.conn = None
            session.wake.set()
        if conn.pump is not None and conn.pump is not asyncio.current_task():
            conn.pump.cancel()
        self._notify()

    async def _pump(self, conn: _Conn, session: _Session) -> None:
        """Write the session's queued frames, in order, while this connection holds it."""
        try:
            while session.conn is conn:
                if session.cursor < len(session.frames):
                    await conn.send(session.frames[session.cursor][1])
                    session.cursor += 1
                    self._notify()
                    continue
                session.wake.clear()
                await session.wake.wait()
        except (ConnectionError, RuntimeError):
            log.debug("fake Discord: gateway write failed; waiting for a resume")

    async def _gateway(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=0)
        await ws.prepare(request)
        conn = _Conn(ws, request.path, dict(request.query))
        self._conns.add(conn)
        self.gateway_connections.append((request.path, dict(request.query)))
        try:
            await conn.send(
                {
                    "op": 10,
                    "s": None,
                    "t": None,
                    "d": {"heartbeat_interval": self.heartbeat_interval_ms},
                }
            )
            async for msg in ws:
                if msg.type is not WSMsgType.TEXT:
                    await ws.close(code=4002, message=b"Error while decoding payload.")
                    break
                try:
                    frame = json.loads(msg.data)
                except ValueError:
                    await ws.close(code=4002, message=b"Error while decoding payload.")
                    break
                await self._on_op(conn, frame)
        except (ConnectionError, RuntimeError):
            pass
        except Exception:
            log.exception("fake Discord: gateway handler failed")
            self.errors.append("gateway handler raised; see log")
        finally:
            session = conn.session
            self._detach(conn)
            self._conns.discard(conn)
            # A client's own close with 1000/1001 ends its session, as on Discord.
            if session is not None and not conn.dropped and ws.close_code in (1000, 1001):
                session.alive = False
            self._notify()
        return ws

    async def _on_op(self, conn: _Conn, frame: dict) -> None:
        op, data = frame.get("op"), frame.get("d")
        if op == 1:  # HEARTBEAT
            await conn.send({"op": 11, "s": None, "t": None, "d": None})
        elif op == 2:  # IDENTIFY
            await self._identify(conn, data or {})
        elif op == 6:  # RESUME
            await self._resume(conn, data or {})
        elif conn.session is None:
            await conn.ws.close(code=4003, message=b"Not authenticated.")
        elif op == 3:  # PRESENCE_UPDATE
            self.presences.append(data)
        elif op == 4:  # VOICE_STATE_UPDATE: no voice here
            log.info("fake Discord: ignoring voice state update %s", data)
        elif op == 8:  # REQUEST_GUILD_MEMBERS
            self._members_chunk(conn.session, data or {})
        else:
            log.warning("fake Discord: unknown gateway opcode %s", op)
            await conn.ws.close(code=4001, message=b"Unknown opcode.")

    def _token_ok(self, token: str | None) -> bool:
        return bool(token) and (self.token is None or token == self.token)

    async def _identify(self, conn: _Conn, data: dict) -> None:
        if conn.session is not None:
            await conn.ws.close(code=4005, message=b"Already authenticated.")
            return
        if not self._token_ok(data.get("token")):
            await conn.ws.close(code=4004, message=b"Authentication failed.")
            return
        intents = data.get("intents")
        if not isinstance(intents, int):
            await conn.ws.close(code=4013, message=b"Invalid intent(s).")
            return
        if intents & Intent.PRIVILEGED & ~self.privileged_intents:
            await conn.ws.close(code=4014, message=b"Disallowed intent(s).")
            return
        session = _Session(secrets.token_hex(16), intents, data["token"])
        self._sessions[session.id] = session
        self.identify_count += 1
        guilds = [g for g in self.guilds.values() if self.bot_id in g.members]
        ready = {
            "v": 10, "user": {**self.user(self.bot_id), "verified": True, "mfa_enabled": False,
                              "email": None, "locale": "en-US"},
            "guilds": [{"id": str(g.id), "unavailable": True} for g in guilds],
            "session_id": session.id, "session_type": "normal",
            "resume_gateway_url": f"ws://127.0.0.1:{self.port}/gateway/resume",
            "application": {"id": str(self.application_id), "flags": self._app_info()["flags"]},
            "private_channels": [], "relationships": [], "presences": [],
            "geo_ordered_rtc_regions": [], "guild_join_requests": [], "auth": {},
            "user_settings": {}, "_trace": ["fake-discord"],
        }  # fmt: skip
        if "shard" in data:
            ready["shard"] = data["shard"]
        self._emit_one(session, "READY", ready)
        for guild in guilds:
            self._emit_one(session, "GUILD_CREATE", self._guild_create(guild, intents))
        self._attach(conn, session, 0)

    async def _resume(self, conn: _Conn, data: dict) -> None:
        session = self._sessions.get(str(data.get("session_id")))
        if session is None or not session.alive or data.get("token") != session.token:
            await conn.send({"op": 9, "s": None, "t": None, "d": False})
            return
        seq = data.get("seq") or 0
        cursor = next(
            (i for i, (s, _) in enumerate(session.frames) if s > seq), len(session.frames)
        )
        self.resume_count += 1
        self._emit_one(session, "RESUMED", {"_trace": ["fake-discord"]})
        self._attach(conn, session, cursor)

    def _members_chunk(self, session: _Session, data: dict) -> None:
        guild = self.guilds.get(int(data.get("guild_id", 0)))
        if guild is None:
            return
        ids = list(guild.members)
        if data.get("user_ids"):
            wanted = {int(u) for u in data["user_ids"]}
            ids = [u for u in ids if u in wanted]
        elif data.get("query"):
            ids = [u for u in ids if self.users[u]["username"].startswith(data["query"])]
        if data.get("limit"):
            ids = ids[: data["limit"]]
        chunk = {"guild_id": str(guild.id), "members": [self._member(guild.id, u) for u in ids],
                 "chunk_index": 0, "chunk_count": 1, "not_found": []}  # fmt: skip
        if data.get("nonce"):
            chunk["nonce"] = data["nonce"]
        self._emit_one(session, "GUILD_MEMBERS_CHUNK", chunk)

    # ------------------------------------------------------------------ test-side events

    def _known_channel(self, channel_id: int) -> dict:
        if channel_id not in self.channels:
            raise KeyError(f"fake Discord has no channel {channel_id}")
        return self.channels[channel_id]

    async def user_message(self, channel_id: int, author_id: int, content: str = "", *,
                           attachments: list[tuple] | tuple = (), mentions: list[int] | tuple = (),
                           reply_to: int | None = None, guild_id: int | None = None,
                           ping_reply: bool = True, embeds: list[dict] | None = None) -> dict:  # fmt: skip
        """A user posts a message: MESSAGE_CREATE. Returns a copy of the payload.

        ``attachments`` are ``(filename, bytes)`` or ``(filename, bytes, content_type)``,
        served at the payload's ``url``. Mentions are the ``<@id>`` in ``content`` plus
        ``mentions``; a reply also mentions the replied-to author unless ``ping_reply``
        is false.
        """
        self._known_channel(channel_id)
        gid = self._guild_of(channel_id)
        if guild_id is not None and guild_id != gid:
            raise ValueError(f"channel {channel_id} is in guild {gid}, not {guild_id}")
        if author_id not in self.users:
            raise KeyError(f"fake Discord has no user {author_id}")
        stored = [self._store_attachment(channel_id, *spec) for spec in attachments]
        mention_ids = [int(m) for m in _USER_MENTION.findall(content)] + list(mentions)
        reference = None
        if reply_to is not None:
            target = self.messages[reply_to]
            reference = {"type": 0, "message_id": str(reply_to), "channel_id": target["channel_id"],
                         "fail_if_not_exists": False}  # fmt: skip
            if gid is not None:
                reference["guild_id"] = str(gid)
            if ping_reply:
                mention_ids.append(int(target["author"]["id"]))
        mention_ids = [u for u in dict.fromkeys(mention_ids) if u in self.users]
        roles = [int(r) for r in _ROLE_MENTION.findall(content)]
        msg = self._new_message(
            channel_id=channel_id, author_id=author_id, content=content, attachments=stored,
            mention_ids=mention_ids, mention_everyone="@everyone" in content,
            mention_roles=[r for r in roles if gid and r in self.guilds[gid].roles],
            reference=reference, msg_type=19 if reference else 0, embeds=embeds,
        )  # fmt: skip
        await self.dispatch("MESSAGE_CREATE", msg)
        return copy.deepcopy(msg)

    async def user_edit(self, message_id: int, content: str) -> dict:
        """A user edits their message: MESSAGE_UPDATE. Returns the new payload."""
        msg = self.messages[message_id]
        msg["content"], msg["edited_timestamp"] = content, _now_iso()
        await self.dispatch("MESSAGE_UPDATE", msg)
        return copy.deepcopy(msg)

    async def user_delete(self, message_id: int) -> None:
        """A message is deleted by its author: MESSAGE_DELETE."""
        msg = self.messages.pop(message_id)
        payload = {"id": msg["id"], "channel_id": msg["channel_id"]}
        if "guild_id" in msg:
            payload["guild_id"] = msg["guild_id"]
        await self.dispatch("MESSAGE_DELETE", payload)

    async def user_typing(self, channel_id: int, user_id: int) -> dict:
        """A user starts typing: TYPING_START."""
        gid = self._guild_of(channel_id)
        payload: dict[str, Any] = {"channel_id": str(channel_id), "user_id": str(user_id),
                                   "timestamp": int(time.time())}  # fmt: skip
        if gid is not None:
            payload["guild_id"] = str(gid)
            payload["member"] = self._member(gid, user_id)
        return await self.dispatch("TYPING_START", payload)

    def _find_command(self, guild_id: int | None, name: str) -> tuple[dict, bool]:
        for scope in ([guild_id] if guild_id else []) + [None]:
            for cmd in self.commands.get(scope, []):
                if cmd["name"] == name and cmd.get("type", 1) == 1:
                    return cmd, scope is not None
        known = {scope: [c["name"] for c in cmds] for scope, cmds in self.commands.items()}
        raise LookupError(f"/{name} was never synced (global: None); synced so far: {known}")

    async def slash(self, guild_id: int | None, channel_id: int, user_id: int, name: str,
                    options: dict[str, Any] | list[dict] | None = None, *,
                    attachments: dict[str, tuple] | None = None, locale: str = "en-US") -> dict:  # fmt: skip
        """A user runs a synced slash command: INTERACTION_CREATE (type 2). Returns the payload.

        ``name`` may hold subcommands ("draw box"). ``options`` is ``{name: value}`` (typed
        from the synced command; users, channels and roles by id) or Discord's raw option
        list. ``attachments`` is ``{option_name: (filename, bytes[, content_type])}``.
        Use ``guild_id=None`` with a DM channel for a DM invocation.
        """
        self._known_channel(channel_id)
        if guild_id is not None and user_id not in self.guilds[guild_id].members:
            raise ValueError(f"user {user_id} is not a member of guild {guild_id}")
        top, *subs = name.split()
        cmd, is_guild_cmd = self._find_command(guild_id, top)
        schema = cmd.get("options", [])
        sub_types = []
        for sub in subs:
            spec = next((o for o in schema if o["name"] == sub and o["type"] in (1, 2)), None)
            if spec is None:
                raise LookupError(f"/{top} has no subcommand {sub!r}")
            sub_types.append(spec["type"])
            schema = spec.get("options", [])
        resolved: dict[str, dict] = {}
        if isinstance(options, list):
            leaf = options
        else:
            leaf = []
            for opt_name, value in {**(options or {}), **(attachments or {})}.items():
                spec = next((o for o in schema if o["name"] == opt_name), None)
                if spec is None:
                    raise KeyError(
                        f"/{name} has no option {opt_name!r}; it has {[o['name'] for o in schema]}"
                    )
                leaf.append(self._option(spec, value, resolved, guild_id, channel_id))
        opts = leaf
        for sub, sub_type in reversed(list(zip(subs, sub_types, strict=True))):
            opts = [{"name": sub, "type": sub_type, "options": opts}]
        data: dict[str, Any] = {"id": cmd["id"], "name": top, "type": 1, "options": opts}
        if resolved:
            data["resolved"] = resolved
        if is_guild_cmd:
            data["guild_id"] = str(guild_id)
        iid, token = self._ids.next(), "fake-" + secrets.token_urlsafe(48)
        payload: dict[str, Any] = {
            "id": str(iid), "application_id": str(self.application_id), "type": 2, "data": data,
            "channel_id": str(channel_id), "channel": self._interaction_channel(channel_id, user_id),
            "token": token, "version": 1, "locale": locale, "entitlements": [],
            "attachment_size_limit": self.upload_limit,
        }  # fmt: skip
        if guild_id is not None:
            payload.update({
                "guild_id": str(guild_id), "guild_locale": "en-US",
                "guild": {"id": str(guild_id), "locale": "en-US", "features": []},
                "member": {**self._member(guild_id, user_id),
                           "permissions": str(self.permissions(guild_id, user_id))},
                "app_permissions": str(self.permissions(guild_id, self.bot_id)),
                "authorizing_integration_owners": {"0": str(guild_id)}, "context": 0,
            })  # fmt: skip
        else:
            payload.update({"user": self.user(user_id), "context": 1,
                            "app_permissions": str(Permission.EVERYONE),
                            "authorizing_integration_owners": {"0": "0"}})  # fmt: skip
        self._interactions[iid] = _Interaction(
            iid, token, guild_id, channel_id, user_id, top, time.monotonic()
        )
        await self.dispatch("INTERACTION_CREATE", payload)
        return copy.deepcopy(payload)

    def _interaction_channel(self, channel_id: int, user_id: int) -> dict:
        channel = self.channel(channel_id)
        gid = self._guild_of(channel_id)
        if gid is None:
            channel["recipients"] = [self.user(user_id)]
        else:
            channel["permissions"] = str(self.permissions(gid, user_id))
        return channel

    def _option(
        self, spec: dict, value: Any, resolved: dict, guild_id: int | None, channel_id: int
    ) -> dict:
        kind = spec["type"]
        option = {"name": spec["name"], "type": kind}
        if kind == 11:  # ATTACHMENT
            att = self._store_attachment(channel_id, *value, ephemeral=True)
            resolved.setdefault("attachments", {})[att["id"]] = att
            option["value"] = att["id"]
        elif kind == 6 or (kind == 9 and int(value) in self.users):  # USER / MENTIONABLE user
            uid = int(value)
            resolved.setdefault("users", {})[str(uid)] = self.user(uid)
            if guild_id is not None and uid in self.guilds[guild_id].members:
                member = {**self._member(guild_id, uid, with_user=False),
                          "permissions": str(self.permissions(guild_id, uid))}  # fmt: skip
                resolved.setdefault("members", {})[str(uid)] = member
            option["value"] = str(uid)
        elif kind in (8, 9):  # ROLE / MENTIONABLE role
            rid = int(value)
            resolved.setdefault("roles", {})[str(rid)] = copy.deepcopy(
                self.guilds[guild_id].roles[rid]
            )
            option["value"] = str(rid)
        elif kind == 7:  # CHANNEL
            cid = int(value)
            resolved.setdefault("channels", {})[str(cid)] = {
                **self.channel(cid),
                "permissions": str(Permission.ALL),
            }
            option["value"] = str(cid)
        elif kind == 4:
            option["value"] = int(value)
        elif kind == 10:
            option["value"] = float(value)
        elif kind == 5:
            option["value"] = bool(value)
        else:
            option["value"] = str(value)
        return option

    # ------------------------------------------------------------------ REST plumbing

    async def _read_body(self, request: web.Request) -> tuple[Any, list[_Upload]]:
        if request.content_type == "multipart/form-data":
            form = await request.post()
            body, uploads = None, []
            for name, value in form.items():
                if isinstance(value, web.FileField):
                    uploads.append(_Upload(name, value.filename, value.file.read()))
                elif name == "payload_json":
                    body = json.loads(value)
            return body, uploads
        raw = await request.read()
        if not raw:
            return None, []
        try:
            return json.loads(raw), []
        except ValueError:
            return raw.decode(errors="replace"), []

    def _authorized(self, request: web.Request) -> bool:
        header = request.headers.get("Authorization", "")
        return header.startswith("Bot ") and self._token_ok(header[4:])

    async def _api(self, request: web.Request) -> web.Response:
        path = "/" + request.match_info["tail"]
        method = request.method
        body, uploads = await self._read_body(request)
        recorded = (
            body
            if not uploads
            else {"payload_json": body, "files": [(u.filename, u.data) for u in uploads]}
        )
        self.requests.append(Call(method, path, recorded))
        path_matched = False
        for route_method, pattern, handler, auth in _ROUTES:
            match = pattern.match(path)
            if match is None:
                continue
            path_matched = True
            if route_method != method:
                continue
            if auth and not self._authorized(request):
                return _json({"message": "401: Unauthorized", "code": 0}, 401)
            try:
                return await getattr(self, handler)(match.groupdict(), request.query, body, uploads)
            except _HTTPError as exc:
                return exc.response()
            except Exception as exc:
                log.exception("fake Discord: %s %s failed", method, path)
                self.errors.append(f"{method} {path}: {exc!r}")
                # 501, not 500: discord.py retries 500s with sleeps, hiding the bug for seconds.
                return _json({"message": f"fake Discord bug: {exc!r}", "code": 0}, 501)
            finally:
                self._notify()
        self.unknown_routes.append((method, path))
        log.warning("fake Discord: no route for %s %s (body %r)", method, path, recorded)
        if path_matched:
            return _json({"message": "405: Method Not Allowed", "code": 0}, 405)
        return _json({"message": "404: Not Found", "code": 0}, 404)

    async def _cdn(self, request: web.Request) -> web.Response:
        self.downloads.append(request.path)
        found = self._files.get(request.path)
        if found is None:
            return web.Response(status=404, text="404: Not Found")
        data, content_type = found
        return web.Response(body=data, headers={"Content-Type": content_type})

    def _channel_or_404(self, channel_id: str | int) -> dict:
        channel = self.channels.get(int(channel_id))
        if channel is None:
            raise _HTTPError(404, UNKNOWN_CHANNEL, "Unknown Channel")
        return channel

    def _message_or_404(self, channel_id: str | int, message_id: str | int) -> dict:
        msg = self.messages.get(int(message_id))
        if msg is None or msg["channel_id"] != str(channel_id):
            raise _HTTPError(404, UNKNOWN_MESSAGE, "Unknown Message")
        return msg

    def _check_new_message(self, body: dict, uploads: list[_Upload]) -> None:
        content = body.get("content") or ""
        if len(content) > 2000:
            raise _form_error("content", "BASE_TYPE_MAX_LENGTH", "Must be 2000 or fewer in length.")
        if len(body.get("embeds") or []) > 10:
            raise _form_error("embeds", "BASE_TYPE_MAX_LENGTH", "Must be 10 or fewer in length.")
        if not (content or body.get("embeds") or uploads or body.get("sticker_ids")
                or body.get("components") or body.get("poll")):  # fmt: skip
            raise _HTTPError(400, EMPTY_MESSAGE, "Cannot send an empty message")
        self._check_uploads(uploads)

    def _check_uploads(self, uploads: list[_Upload]) -> None:
        if any(len(u.data) > self.upload_limit for u in uploads):
            raise _HTTPError(413, TOO_LARGE, "Request entity too large")

    def _uploaded(
        self, channel_id: int, body: dict, uploads: list[_Upload], *, ephemeral: bool = False
    ) -> list[dict]:
        """Attachments for ``files[n]``, named by the matching ``attachments`` entry (id n)."""
        meta = {str(a.get("id")): a for a in body.get("attachments") or []}
        stored = []
        for index, upload in enumerate(uploads):
            found = re.search(r"\[(\d+)\]", upload.field)
            info = meta.get(found.group(1) if found else str(index), {})
            stored.append(self._store_attachment(
                channel_id, info.get("filename") or upload.filename, upload.data,
                description=info.get("description"), ephemeral=ephemeral,
            ))  # fmt: skip
        return stored

    def _bot_mentions(self, content: str, allowed: dict | None, replied: int | None) -> list[int]:
        ids = [int(m) for m in _USER_MENTION.findall(content)]
        if allowed is not None and "users" not in allowed.get("parse", []):
            explicit = {int(u) for u in allowed.get("users", [])}
            ids = [u for u in ids if u in explicit]
        if replied is not None and (allowed is None or allowed.get("replied_user", False)):
            ids.append(replied)
        return [u for u in dict.fromkeys(ids) if u in self.users]

    def _record_sent(self, msg: dict, body: Any, uploads: list[_Upload], via: str,
                     interaction: _Interaction | None = None) -> None:  # fmt: skip
        self.sent.append(SentMessage(
            id=int(msg["id"]), channel_id=int(msg["channel_id"]), content=msg["content"],
            files=[(u.filename, u.data) for u in uploads], embeds=msg["embeds"],
            message_reference=msg.get("message_reference"), flags=msg["flags"], via=via,
            payload=copy.deepcopy(msg), request=body,
            interaction_id=interaction.id if interaction else None,
        ))  # fmt: skip

    def _apply_edit(self, msg: dict, body: dict, uploads: list[_Upload]) -> None:
        if len(body.get("content") or "") > 2000:
            raise _form_error("content", "BASE_TYPE_MAX_LENGTH", "Must be 2000 or fewer in length.")
        self._check_uploads(uploads)
        for key in ("content", "embeds", "components"):
            if key in body:
                msg[key] = body[key] if body[key] is not None else ("" if key == "content" else [])
        if "flags" in body and body["flags"] is not None:
            msg["flags"] = (msg["flags"] & ~4) | (int(body["flags"]) & 4)  # only SUPPRESS_EMBEDS
        new = self._uploaded(
            int(msg["channel_id"]), body, uploads, ephemeral=bool(msg["flags"] & 64)
        )
        if body.get("attachments") is not None:
            keep = {str(a.get("id")) for a in body["attachments"]}
            msg["attachments"] = [a for a in msg["attachments"] if a["id"] in keep] + new
        else:
            msg["attachments"] = msg["attachments"] + new
        msg["edited_timestamp"] = _now_iso()

    # ------------------------------------------------------------------ REST: session, users

    @_route("GET", "/gateway", auth=False)
    async def _r_gateway(self, params, query, body, uploads):
        return _json({"url": self.gateway_url})

    @_route("GET", "/gateway/bot")
    async def _r_gateway_bot(self, params, query, body, uploads):
        limit = {"total": 1000, "remaining": 999, "reset_after": 0, "max_concurrency": 1}
        return _json({"url": self.gateway_url, "shards": 1, "session_start_limit": limit})

    @_route("GET", "/users/@me")
    async def _r_me(self, params, query, body, uploads):
        return _json({**self.user(self.bot_id), "verified": True, "mfa_enabled": False,
                      "email": None, "locale": "en-US"})  # fmt: skip

    @_route("GET", r"/users/(?P<user_id>\d+)")
    async def _r_user(self, params, query, body, uploads):
        if int(params["user_id"]) not in self.users:
            raise _HTTPError(404, UNKNOWN_USER, "Unknown User")
        return _json(self.user(int(params["user_id"])))

    @_route("GET", "/oauth2/applications/@me")
    async def _r_app_oauth(self, params, query, body, uploads):
        return _json(self._app_info())

    @_route("GET", "/applications/@me")
    async def _r_app(self, params, query, body, uploads):
        return _json(self._app_info())

    @_route("POST", "/users/@me/channels")
    async def _r_open_dm(self, params, query, body, uploads):
        uid = int((body or {}).get("recipient_id", 0))
        if uid not in self.users:
            raise _HTTPError(404, UNKNOWN_USER, "Unknown User")
        return _json(self.channel(self.dm_channel(uid)))

    # ------------------------------------------------------------------ REST: channels, messages

    @_route("GET", rf"/channels/{_C}")
    async def _r_channel(self, params, query, body, uploads):
        return _json(copy.deepcopy(self._channel_or_404(params["channel_id"])))

    @_route("GET", rf"/channels/{_C}/messages")
    async def _r_history(self, params, query, body, uploads):
        self._channel_or_404(params["channel_id"])
        limit = min(int(query.get("limit", 50)), 100)
        msgs = sorted(
            (m for m in self.messages.values()
             if m["channel_id"] == params["channel_id"] and not m["flags"] & 64),
            key=lambda m: int(m["id"]),
        )  # fmt: skip
        if "before" in query:
            msgs = [m for m in msgs if int(m["id"]) < int(query["before"])][-limit:]
        elif "after" in query:
            msgs = [m for m in msgs if int(m["id"]) > int(query["after"])][:limit]
        elif "around" in query:
            pivot = int(query["around"])
            older = [m for m in msgs if int(m["id"]) <= pivot][-(limit - limit // 2) :]
            msgs = older + [m for m in msgs if int(m["id"]) > pivot][: limit // 2]
        else:
            msgs = msgs[-limit:]
        return _json([self._rest(m) for m in reversed(msgs)])

    @_route("POST", rf"/channels/{_C}/messages")
    async def _r_send(self, params, query, body, uploads):
        cid = int(params["channel_id"])
        self._channel_or_404(cid)
        body = body or {}
        self._check_new_message(body, uploads)
        nonce = body.get("nonce")
        if nonce is not None and body.get("enforce_nonce"):
            for earlier in self.messages.values():
                if earlier.get("nonce") == nonce and earlier["channel_id"] == str(cid):
                    return _json(self._rest(earlier))
        reference, replied = body.get("message_reference"), None
        if reference:
            target = self.messages.get(int(reference.get("message_id", 0)))
            if target is None:
                if reference.get("fail_if_not_exists", True):
                    raise _form_error(
                        "message_reference", "MESSAGE_REFERENCE_UNKNOWN_MESSAGE", "Unknown message"
                    )
                reference = None
            else:
                replied = int(target["author"]["id"])
                reference = {
                    "type": 0,
                    "message_id": target["id"],
                    "channel_id": target["channel_id"],
                }
                if self._guild_of(cid):
                    reference["guild_id"] = str(self._guild_of(cid))
        content = body.get("content") or ""
        msg = self._new_message(
            channel_id=cid, author_id=self.bot_id, content=content,
            attachments=self._uploaded(cid, body, uploads),
            mention_ids=self._bot_mentions(content, body.get("allowed_mentions"), replied),
            reference=reference, msg_type=19 if reference else 0,
            flags=int(body.get("flags") or 0) & (4 | 4096), embeds=body.get("embeds"),
            components=body.get("components"), nonce=nonce, tts=bool(body.get("tts")),
        )  # fmt: skip
        self._record_sent(msg, body, uploads, "channel")
        self._emit("MESSAGE_CREATE", msg)
        return _json(self._rest(msg))

    @_route("GET", rf"/channels/{_C}/messages/{_M}")
    async def _r_get_message(self, params, query, body, uploads):
        return _json(self._rest(self._message_or_404(params["channel_id"], params["message_id"])))

    @_route("PATCH", rf"/channels/{_C}/messages/{_M}")
    async def _r_edit(self, params, query, body, uploads):
        msg = self._message_or_404(params["channel_id"], params["message_id"])
        if int(msg["author"]["id"]) != self.bot_id:
            raise _HTTPError(
                403, CANNOT_EDIT_OTHERS, "Cannot edit a message authored by another user"
            )
        self._apply_edit(msg, body or {}, uploads)
        self._record_edit(msg, body, uploads, "channel")
        self._emit("MESSAGE_UPDATE", msg)
        return _json(self._rest(msg))

    def _record_edit(self, msg: dict, body: Any, uploads: list[_Upload], via: str) -> None:
        self.edits.append(Edit(
            message_id=int(msg["id"]), channel_id=int(msg["channel_id"]), content=msg["content"],
            files=[(u.filename, u.data) for u in uploads], payload=copy.deepcopy(msg),
            request=body, via=via,
        ))  # fmt: skip

    @_route("DELETE", rf"/channels/{_C}/messages/{_M}")
    async def _r_delete(self, params, query, body, uploads):
        msg = self._message_or_404(params["channel_id"], params["message_id"])
        self._delete(msg)
        return web.Response(status=204)

    def _delete(self, msg: dict) -> None:
        del self.messages[int(msg["id"])]
        self.deleted.append((int(msg["channel_id"]), int(msg["id"])))
        if not msg["flags"] & 64:
            event = {"id": msg["id"], "channel_id": msg["channel_id"]}
            if "guild_id" in msg:
                event["guild_id"] = msg["guild_id"]
            self._emit("MESSAGE_DELETE", event)

    @_route("POST", rf"/channels/{_C}/typing")
    async def _r_typing(self, params, query, body, uploads):
        self._channel_or_404(params["channel_id"])
        self.typing.append(Typing(int(params["channel_id"]), time.monotonic()))
        return web.Response(status=204)

    @_route("PUT", rf"/channels/{_C}/messages/{_M}/reactions/(?P<emoji>[^/]+)/@me")
    async def _r_react(self, params, query, body, uploads):
        return self._react(params, added=True)

    @_route("DELETE", rf"/channels/{_C}/messages/{_M}/reactions/(?P<emoji>[^/]+)/@me")
    async def _r_unreact(self, params, query, body, uploads):
        return self._react(params, added=False)

    def _react(self, params: dict, *, added: bool) -> web.Response:
        msg = self._message_or_404(params["channel_id"], params["message_id"])
        name, _, emoji_id = params["emoji"].partition(":")
        self.reactions.append(
            Reaction(int(msg["channel_id"]), int(msg["id"]), params["emoji"], added)
        )
        event = {"user_id": str(self.bot_id), "channel_id": msg["channel_id"], "message_id": msg["id"],
                 "emoji": {"id": emoji_id or None, "name": name}, "burst": False, "type": 0}  # fmt: skip
        if "guild_id" in msg:
            event["guild_id"] = msg["guild_id"]
            if added:
                event["member"] = self._member(int(msg["guild_id"]), self.bot_id)
                event["message_author_id"] = msg["author"]["id"]
        self._emit("MESSAGE_REACTION_ADD" if added else "MESSAGE_REACTION_REMOVE", event)
        return web.Response(status=204)

    @_route("POST", rf"/channels/{_C}/messages/{_M}/threads")
    async def _r_thread_from_message(self, params, query, body, uploads):
        msg = self._message_or_404(params["channel_id"], params["message_id"])
        body = body or {}
        # A thread started from a message has the message's id.
        thread = self._new_thread(int(params["channel_id"]), body.get("name") or "thread", self.bot_id,
                                  thread_id=int(msg["id"]), auto_archive=body.get("auto_archive_duration") or 1440)  # fmt: skip
        msg["thread"] = copy.deepcopy(thread)
        msg["flags"] |= 1 << 5  # HAS_THREAD
        return _json(self._announce_thread(thread))

    @_route("POST", rf"/channels/{_C}/threads")
    async def _r_thread(self, params, query, body, uploads):
        body = body or {}
        self._channel_or_404(params["channel_id"])
        if "message" in body:
            raise _HTTPError(400, 50024, "fake Discord: forum posts are not supported")
        thread = self._new_thread(int(params["channel_id"]), body.get("name") or "thread", self.bot_id,
                                  private=body.get("type") == 12, auto_archive=body.get("auto_archive_duration") or 1440)  # fmt: skip
        return _json(self._announce_thread(thread))

    def _announce_thread(self, thread: dict) -> dict:
        member = {
            "id": thread["id"],
            "user_id": str(self.bot_id),
            "join_timestamp": _now_iso(),
            "flags": 0,
        }
        self._emit("THREAD_CREATE", {**thread, "newly_created": True, "member": member})
        return {**copy.deepcopy(thread), "member": member}

    # ------------------------------------------------------------------ REST: guilds

    def _guild_or_404(self, guild_id: str) -> _Guild:
        guild = self.guilds.get(int(guild_id))
        if guild is None:
            raise _HTTPError(404, UNKNOWN_GUILD, "Unknown Guild")
        return guild

    @_route("GET", rf"/guilds/{_G}")
    async def _r_guild(self, params, query, body, uploads):
        data = self._guild_create(self._guild_or_404(params["guild_id"]), 0)
        for key in ("members", "channels", "threads", "joined_at", "large", "member_count",
                    "voice_states", "presences", "unavailable"):  # fmt: skip
            data.pop(key, None)
        return _json(data)

    @_route("GET", rf"/guilds/{_G}/channels")
    async def _r_guild_channels(self, params, query, body, uploads):
        guild = self._guild_or_404(params["guild_id"])
        return _json([self.channel(c) for c in guild.channels])

    @_route("GET", rf"/guilds/{_G}/roles")
    async def _r_roles(self, params, query, body, uploads):
        return _json(list(copy.deepcopy(self._guild_or_404(params["guild_id"]).roles).values()))

    @_route("GET", rf"/guilds/{_G}/members/(?P<user_id>\d+)")
    async def _r_member(self, params, query, body, uploads):
        guild = self._guild_or_404(params["guild_id"])
        if int(params["user_id"]) not in guild.members:
            raise _HTTPError(404, UNKNOWN_MEMBER, "Unknown Member")
        return _json(self._member(guild.id, int(params["user_id"])))

    @_route("GET", rf"/guilds/{_G}/members")
    async def _r_members(self, params, query, body, uploads):
        guild = self._guild_or_404(params["guild_id"])
        after, limit = int(query.get("after", 0)), int(query.get("limit", 1))
        ids = sorted(u for u in guild.members if u > after)[:limit]
        return _json([self._member(guild.id, u) for u in ids])

    # ------------------------------------------------------------------ REST: application commands

    def _command_payload(self, spec: dict, command_id: str, guild_id: int | None) -> dict:
        kind = spec.get("type", 1)
        if kind == 1:
            if (
                not _COMMAND_NAME.match(spec.get("name", ""))
                or spec["name"] != spec["name"].lower()
            ):
                raise _form_error(
                    "name",
                    "APPLICATION_COMMAND_INVALID_NAME",
                    f"Command name is invalid: {spec.get('name')!r}",
                )
            if not 1 <= len(spec.get("description") or "") <= 100:
                raise _form_error(
                    "description", "BASE_TYPE_BAD_LENGTH", "Must be between 1 and 100 in length."
                )
        cmd = {
            "options": [], "default_member_permissions": None, "dm_permission": True,
            "nsfw": False, "contexts": None, "integration_types": [0], **copy.deepcopy(spec),
            "id": command_id, "application_id": str(self.application_id), "type": kind,
            "version": str(self._ids.next()),
        }  # fmt: skip
        if guild_id is not None:
            cmd["guild_id"] = str(guild_id)
        return cmd

    def _upsert(self, scope: int | None, spec: dict) -> dict:
        cmds = self.commands.setdefault(scope, [])
        key = (spec.get("name"), spec.get("type", 1))
        old = next((c for c in cmds if (c["name"], c["type"]) == key), None)
        cmd = self._command_payload(spec, old["id"] if old else str(self._ids.next()), scope)
        cmds[:] = [c for c in cmds if c is not old] + [cmd]
        return cmd

    def _overwrite(self, scope: int | None, specs: list[dict]) -> list[dict]:
        old = {(c["name"], c["type"]): c["id"] for c in self.commands.get(scope, [])}
        new = [
            self._command_payload(
                spec,
                old.get((spec.get("name"), spec.get("type", 1))) or str(self._ids.next()),
                scope,
            )
            for spec in specs
        ]
        self.commands[scope] = new
        self.command_syncs.append((scope, [c["name"] for c in new]))
        return copy.deepcopy(new)

    def _app_scope(self, params: dict) -> int | None:
        if int(params["app_id"]) != self.application_id:
            raise _HTTPError(403, 50001, "Missing Access")
        if "guild_id" in params:
            return self._guild_or_404(params["guild_id"]).id
        return None

    def _command_or_404(self, scope: int | None, command_id: str) -> dict:
        cmd = next((c for c in self.commands.get(scope, []) if c["id"] == command_id), None)
        if cmd is None:
            raise _HTTPError(404, UNKNOWN_COMMAND, "Unknown application command")
        return cmd

    @_route("GET", rf"/applications/{_A}/commands")
    @_route("GET", rf"/applications/{_A}/guilds/{_G}/commands")
    async def _r_commands(self, params, query, body, uploads):
        return _json(copy.deepcopy(self.commands.get(self._app_scope(params), [])))

    @_route("PUT", rf"/applications/{_A}/commands")
    @_route("PUT", rf"/applications/{_A}/guilds/{_G}/commands")
    async def _r_sync(self, params, query, body, uploads):
        return _json(self._overwrite(self._app_scope(params), body or []))

    @_route("POST", rf"/applications/{_A}/commands")
    @_route("POST", rf"/applications/{_A}/guilds/{_G}/commands")
    async def _r_upsert(self, params, query, body, uploads):
        return _json(copy.deepcopy(self._upsert(self._app_scope(params), body or {})), 201)

    @_route("GET", rf"/applications/{_A}/commands/(?P<command_id>\d+)")
    @_route("GET", rf"/applications/{_A}/guilds/{_G}/commands/(?P<command_id>\d+)")
    async def _r_command(self, params, query, body, uploads):
        return _json(
            copy.deepcopy(self._command_or_404(self._app_scope(params), params["command_id"]))
        )

    @_route("PATCH", rf"/applications/{_A}/commands/(?P<command_id>\d+)")
    @_route("PATCH", rf"/applications/{_A}/guilds/{_G}/commands/(?P<command_id>\d+)")
    async def _r_edit_command(self, params, query, body, uploads):
        scope = self._app_scope(params)
        cmd = self._command_or_404(scope, params["command_id"])
        return _json(copy.deepcopy(self._upsert(scope, {**cmd, **(body or {})})))

    @_route("DELETE", rf"/applications/{_A}/commands/(?P<command_id>\d+)")
    @_route("DELETE", rf"/applications/{_A}/guilds/{_G}/commands/(?P<command_id>\d+)")
    async def _r_delete_command(self, params, query, body, uploads):
        scope = self._app_scope(params)
        cmd = self._command_or_404(scope, params["command_id"])
        self.commands[scope] = [c for c in self.commands[scope] if c is not cmd]
        return web.Response(status=204)

    # ------------------------------------------------------------------ REST: interactions

    @_route("POST", rf"/interactions/(?P<interaction_id>\d+)/{_T}/callback", auth=False)
    async def _r_callback(self, params, query, body, uploads):
        it = self._interactions.get(int(params["interaction_id"]))
        if it is None or it.token != params["token"]:
            raise _HTTPError(404, UNKNOWN_INTERACTION, "Unknown interaction")
        if time.monotonic() - it.created > self.interaction_deadline:
            raise _HTTPError(404, UNKNOWN_INTERACTION, "Unknown interaction")
        if it.response_type is not None:
            raise _HTTPError(
                400, ALREADY_ACKNOWLEDGED, "Interaction has already been acknowledged."
            )
        body = body or {}
        kind, data = int(body.get("type", 0)), body.get("data") or {}
        msg = None
        if kind == 4:  # CHANNEL_MESSAGE_WITH_SOURCE
            self._check_new_message(data, uploads)
            it.ephemeral = bool(int(data.get("flags") or 0) & 64)
            msg = self._interaction_message(it, data, uploads, msg_type=20, loading=False)
            self._record_sent(msg, body, uploads, "interaction", it)
        elif kind == 5:  # DEFERRED_CHANNEL_MESSAGE_WITH_SOURCE: the "thinking…" message
            it.ephemeral, it.loading = bool(int(data.get("flags") or 0) & 64), True
            msg = self._interaction_message(it, {}, [], msg_type=20, loading=True)
        elif kind not in (6, 7, 8, 9, 10, 12):
            raise _form_error(
                "type",
                "BASE_TYPE_CHOICES",
                f"Value must be one of interaction callback types, got {kind}",
            )
        it.response_type = kind
        if msg is not None:
            it.original_id = int(msg["id"])
        self.interaction_responses.append(
            InteractionResponse(it.id, kind, data, [(u.filename, u.data) for u in uploads])
        )
        if query.get("with_response") not in ("1", "true", "True"):
            return web.Response(status=204)
        info = {"id": str(it.id), "type": 2, "response_message_loading": it.loading,
                "response_message_ephemeral": it.ephemeral}  # fmt: skip
        out: dict[str, Any] = {"interaction": info}
        if msg is not None:
            info["response_message_id"] = msg["id"]
            out["resource"] = {"type": kind, "message": self._rest(msg)}
        return _json(out)

    def _interaction_message(self, it: _Interaction, data: dict, uploads: list[_Upload], *,
                             msg_type: int, loading: bool) -> dict:  # fmt: skip
        flags = (int(data.get("flags") or 0) & (4 | 64 | 4096)) | (64 if it.ephemeral else 0)
        if loading:
            flags |= 128
        content = data.get("content") or ""
        msg = self._new_message(
            channel_id=it.channel_id, author_id=self.bot_id, content=content,
            attachments=self._uploaded(it.channel_id, data, uploads, ephemeral=bool(flags & 64)),
            mention_ids=self._bot_mentions(content, data.get("allowed_mentions"), None),
            msg_type=msg_type, flags=flags, embeds=data.get("embeds"),
            components=data.get("components"), webhook_id=self.application_id, interaction=it,
        )  # fmt: skip
        if not flags & 64:
            self._emit("MESSAGE_CREATE", msg)
        return msg

    def _interaction_by_token(self, app_id: str, token: str) -> _Interaction:
        it = next((i for i in self._interactions.values() if i.token == token), None)
        if it is None or int(app_id) != self.application_id:
            raise _HTTPError(404, UNKNOWN_WEBHOOK, "Unknown Webhook")
        return it

    def _webhook_message(self, it: _Interaction, message_id: str) -> dict:
        mid = it.original_id if message_id == "@original" else int(message_id)
        if mid is None or mid not in it.message_ids or mid not in self.messages:
            raise _HTTPError(404, UNKNOWN_MESSAGE, "Unknown Message")
        return self.messages[mid]

    def _finish_deferred(
        self, it: _Interaction, body: dict, uploads: list[_Upload], via: str
    ) -> dict:
        """Fill the "thinking…" message with the first real answer (MESSAGE_UPDATE)."""
        msg = self.messages[it.original_id]
        self._apply_edit(msg, body, uploads)
        msg["flags"] &= ~128
        it.loading = False
        self._record_sent(msg, body, uploads, via, it)
        return msg

    @_route("POST", rf"/webhooks/{_A}/{_T}", auth=False)
    async def _r_followup(self, params, query, body, uploads):
        it = self._interaction_by_token(params["app_id"], params["token"])
        if it.response_type is None:  # Discord: no follow-up before the first response
            raise _HTTPError(404, UNKNOWN_WEBHOOK, "Unknown Webhook")
        body = body or {}
        self._check_new_message(body, uploads)
        if it.loading and it.original_id in self.messages:
            msg = self._finish_deferred(it, body, uploads, "followup")
            if not msg["flags"] & 64:
                self._emit("MESSAGE_UPDATE", msg)
        else:
            flags = int(body.get("flags") or 0) & (4 | 64 | 4096)
            content = body.get("content") or ""
            msg = self._new_message(
                channel_id=it.channel_id, author_id=self.bot_id, content=content,
                attachments=self._uploaded(it.channel_id, body, uploads, ephemeral=bool(flags & 64)),
                mention_ids=self._bot_mentions(content, body.get("allowed_mentions"), None),
                flags=flags, embeds=body.get("embeds"), components=body.get("components"),
                webhook_id=self.application_id, interaction=it,
            )  # fmt: skip
            self._record_sent(msg, body, uploads, "followup", it)
            if not flags & 64:
                self._emit("MESSAGE_CREATE", msg)
        if query.get("wait") in ("1", "true", "True"):
            return _json(self._rest(msg))
        return web.Response(status=204)

    @_route("GET", rf"/webhooks/{_A}/{_T}/messages/(?P<message_id>@original|\d+)", auth=False)
    async def _r_webhook_get(self, params, query, body, uploads):
        it = self._interaction_by_token(params["app_id"], params["token"])
        return _json(self._rest(self._webhook_message(it, params["message_id"])))

    @_route("PATCH", rf"/webhooks/{_A}/{_T}/messages/(?P<message_id>@original|\d+)", auth=False)
    async def _r_webhook_edit(self, params, query, body, uploads):
        it = self._interaction_by_token(params["app_id"], params["token"])
        msg = self._webhook_message(it, params["message_id"])
        body = body or {}
        if it.loading and int(msg["id"]) == it.original_id:
            self._finish_deferred(it, body, uploads, "edit_original")
        else:
            self._apply_edit(msg, body, uploads)
        self._record_edit(msg, body, uploads, "interaction")
        if not msg["flags"] & 64:
            self._emit("MESSAGE_UPDATE", msg)
        return _json(self._rest(msg))

    @_route("DELETE", rf"/webhooks/{_A}/{_T}/messages/(?P<message_id>@original|\d+)", auth=False)
    async def _r_webhook_delete(self, params, query, body, uploads):
        it = self._interaction_by_token(params["app_id"], params["token"])
        self._delete(self._webhook_message(it, params["message_id"]))
        return web.Response(status=204)


# ---------------------------------------------------------------------------- helpers for tests


@contextlib.asynccontextmanager
async def running(client: Any, token: str = "x", *, timeout: float = 10.0) -> AsyncIterator[Any]:
    """Run ``client.start(token)`` as a task, wait for on_ready and for every guild
    of READY to be available, and close the client on exit.

    Raises what ``start`` raised if the client dies before it is ready, TimeoutError if
    it is not ready in ``timeout`` seconds.
    """
    task = asyncio.create_task(client.start(token), name="discord-client")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    try:
        while not (client.is_ready() and not any(g.unavailable for g in client.guilds)):
            if task.done():
                task.result()
                raise RuntimeError("the client stopped before it became ready")
            if loop.time() > deadline:
                raise TimeoutError(f"the client was not ready after {timeout}s")
            await asyncio.sleep(0.01)
        yield client
    finally:
        await client.close()
        done, _ = await asyncio.wait({task}, timeout=5.0)
        if not done:
            task.cancel()
        elif not task.cancelled() and task.exception() is not None:
            log.warning("discord client ended with %r", task.exception())


@pytest_asyncio.fixture
async def fake_discord() -> AsyncIterator[FakeDiscord]:
    """A started :class:`FakeDiscord` with the default world, discord.py pointed at it.

    Fails the test at teardown if the fake itself raised (a bug in the fake).
    """
    fake = await FakeDiscord().start()
    try:
        with fake.patch_discord():
            yield fake
    finally:
        await fake.stop()
    if fake.errors:
        pytest.fail(f"fake Discord raised while serving: {fake.errors}")
