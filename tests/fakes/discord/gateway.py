"""The Gateway: the JSON websocket with HELLO, IDENTIFY, READY, heartbeats, sequence
numbers, dispatch filtered by intents, RESUME and INVALID_SESSION."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import logging
import secrets

from aiohttp import WSMsgType, web

from .protocol import Intent

log = logging.getLogger("tests.fakes.discord")


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


class GatewayMixin:
    """The websocket side of :class:`~tests.fakes.discord.FakeDiscord`."""

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
