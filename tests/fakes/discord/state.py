"""The fake's shared world: users, guilds, channels, messages, commands, gateway
sessions, and the records tests assert on; plus waiting on it and building it.

The other parts (gateway, REST, payload builders, test-side events) are mixins over
this state rather than separate objects, because on the real service they are views
of one database: a REST send must show up on every gateway session, a guild added by
a test must reach a connected bot.
"""

from __future__ import annotations

import asyncio
import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import web

from .protocol import (
    DISCORD_EPOCH_MS,
    INTERACTION_DEADLINE,
    NONCE_WINDOW_S,
    UPLOAD_LIMIT,
    Intent,
    Permission,
    _now_iso,
)
from .records import (
    Call,
    Edit,
    InteractionResponse,
    Reaction,
    SentMessage,
    Typing,
    World,
)

if TYPE_CHECKING:
    from .gateway import _Conn, _Session


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


class _Snowflakes:
    def __init__(self) -> None:
        self._last = 0

    def next(self) -> int:
        now = ((int(time.time() * 1000) - DISCORD_EPOCH_MS) << 22) | (1 << 17)
        self._last = max(now, self._last + 1)
        return self._last


class WorldState:
    """The state every part of :class:`~tests.fakes.discord.FakeDiscord` shares."""

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
        self.nonce_window_s = NONCE_WINDOW_S  # a test may shorten it
        self._ids = _Snowflakes()
        self.port = 0
        self._runner: web.AppRunner | None = None

        self.users: dict[int, dict] = {}
        self.guilds: dict[int, _Guild] = {}
        self.channels: dict[int, dict] = {}
        self.messages: dict[int, dict] = {}
        # (channel, author, nonce) → (message id, time.monotonic() when created)
        self._nonces: dict[tuple[int, int, str], tuple[int, float]] = {}
        self._refusals: list[dict] = []  # see RestMixin.refuse
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
