"""A loopback fake of a Wechaty puppet service, for the real python-wechaty client.

The fake is a ``grpclib`` server on 127.0.0.1 that speaks the ``wechaty.Puppet`` gRPC
service with the ``wechaty_grpc`` message classes, the way a puppet service (the
TypeScript ``wechaty-puppet-service`` server in front of a WeChat account) does: no TLS,
events as JSON strings on the server-streaming ``Event`` RPC, message types in the
TypeScript numbering (Text=7, Image=6), files as FileBox JSON (``boxType`` 1 = base64).
Unmodified ``wechaty.Wechaty`` 0.10.7 logs in to it and chats.

Typical use (``fake_wechat`` is the fixture below)::

    async def test_reply(fake_wechat):
        bot = make_bot(fake_wechat, MyBot)          # endpoint, token, fresh caches
        async with running(bot):                    # start() as a task, until on_login
            await fake_wechat.user_text("wxid_bob", "hi", room_id=fake_wechat.ROOM,
                                        mention_self=True)
            [reply] = await fake_wechat.wait_for_sent(1)

What python-wechaty 0.10.7 does, checked against this fake (see
tests/integration/test_fake_wechat.py):

* ``Wechaty.start()`` runs until the Event stream ends: run it as a task. Calling
  ``stop()`` under it makes it log "The network is not good", sleep 60 s and restart;
  :func:`running` cancels the task before stopping the bot.
* It does not reconnect in any useful time. Connection lost (:meth:`FakeWechat.restart`):
  ``start()`` catches ``StreamTerminatedError``, logs, sleeps 60 s, then reconnects on the
  same puppet (Stop, Stop, Start, Event); ``on_login`` is not called again (its login
  listener fails on "Scheduler is already running", swallowed). If the service is still
  down then, it calls ``loop.stop()``. Stream ended with OK
  (:meth:`FakeWechat.end_event_streams`): ``start()`` returns quietly. Ended with an
  error status: it prints the error and returns. Neither reconnects.
* It drops a message id it has seen (process-wide), so a redelivered MESSAGE event never
  reaches ``on_message``; :func:`forget_seen_messages` clears that memory.
* ``Contact`` and ``Room`` objects are cached process-wide and keep the puppet of the
  first bot that loaded them: a second bot in the process fails with "puppet_stub should
  not be none" unless the caches are cleared (:func:`make_bot` does).
* ``WechatyOptions.host/port`` is the plugin web server (login fails if that port is in
  use); the puppet service is ``endpoint``, and ``token`` travels as the HTTP/2
  ``:authority``. The default ``PuppetOptions`` is shared by every ``WechatyOptions``
  and keeps the first endpoint: :func:`bot_options` gives each a fresh one.
* Exceptions in handlers are logged ("internal error") and swallowed; handlers run as
  concurrent tasks, so two messages may be handled out of order.
* Heartbeat events never reach ``on_heartbeat`` (the client emits "heartbeat", the bot
  listens for "heart-beat").

Why one file past the house size: the fake is test infrastructure owned as one unit.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import inspect
import itertools
import json
import logging
import mimetypes
import re
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import pytest_asyncio
import wechaty_puppet.schemas.puppet as _puppet_schemas

# Python 3.11 refuses to hash wechaty-puppet's dataclass, which wechaty hashes at import.
_puppet_schemas.PuppetOptions.__hash__ = object.__hash__  # type: ignore[method-assign]

import wechaty_grpc.wechaty as _grpc_service  # noqa: E402
from apscheduler.schedulers.asyncio import AsyncIOScheduler  # noqa: E402
from grpclib.const import Cardinality, Handler, Status  # noqa: E402
from grpclib.exceptions import GRPCError  # noqa: E402
from grpclib.server import Server, Stream  # noqa: E402
from wechaty import FileBox, Message, Wechaty, WechatyOptions  # noqa: E402
from wechaty.user.contact import Contact  # noqa: E402
from wechaty.user.room import Room  # noqa: E402
from wechaty.user.tag import Tag  # noqa: E402
from wechaty.utils.async_helper import SingleIdContainer  # noqa: E402
from wechaty_grpc.wechaty import puppet as pb  # noqa: E402
from wechaty_puppet import MessageType  # noqa: E402
from wechaty_puppet.schemas.puppet import PuppetOptions  # noqa: E402

__all__ = [
    # python-wechaty's own classes, importable from here once the import is patched
    "FileBox",
    "Message",
    "MessageType",
    "Wechaty",
    "WechatyOptions",
    # the fake
    "FakeWechat",
    "SentMessage",
    "StoredMessage",
    "MSG_TEXT",
    "MSG_IMAGE",
    "MSG_ATTACHMENT",
    "AT_SEPARATOR",
    "bot_options",
    "fake_wechat",
    "file_box_bytes",
    "file_box_json",
    "forget_seen_messages",
    "free_port",
    "make_bot",
    "reset_wechaty_caches",
    "running",
]

log = logging.getLogger(__name__)

# Message types as the TypeScript puppet numbers them on the wire (wechaty-puppet's
# MessageType); python-wechaty maps them to its own enum.
MSG_ATTACHMENT, MSG_IMAGE, MSG_TEXT = 1, 6, 7
AT_SEPARATOR = "\u2005"  # WeChat ends an @name with a four-per-em space
FILEBOX_BASE64, FILEBOX_URL = 1, 2

_E = pb.EventType
_FAKES = itertools.count(1)


# --------------------------------------------------------------------------- records


@dataclass
class FakeContact:
    id: str
    name: str
    alias: str = ""


@dataclass
class FakeRoom:
    id: str
    topic: str
    member_ids: list[str]
    owner_id: str = ""


@dataclass
class StoredMessage:
    """A message the fake knows: from a user (``user_*``) or sent by the bot."""

    id: str
    type: int
    from_id: str
    text: str = ""
    room_id: str = ""
    to_id: str = ""
    mention_ids: list[str] = field(default_factory=list)
    filename: str = ""
    data: bytes | None = None
    media_type: str = ""
    timestamp: int = field(default_factory=lambda: int(time.time() * 1000))


@dataclass
class SentMessage:
    """What the bot sent: ``kind`` is "text" or "file"."""

    conversation_id: str
    kind: str
    message_id: str
    text: str = ""
    mention_ids: list[str] = field(default_factory=list)
    file_name: str = ""
    file_bytes: bytes | None = None
    filebox: dict[str, Any] | None = None


def file_box_json(data: bytes, name: str, media_type: str = "") -> str:
    """A base64 FileBox as a puppet service serialises it (``FileBox.from_json`` reads it)."""
    media_type = media_type or mimetypes.guess_type(name)[0] or "application/octet-stream"
    return json.dumps({
        "boxType": FILEBOX_BASE64, "type": FILEBOX_BASE64, "name": name,
        "base64": base64.b64encode(data).decode(), "mediaType": media_type,
        "mimeType": media_type, "size": len(data), "metadata": {},
    })


def file_box_bytes(box: Any) -> bytes:
    """The bytes of a base64 FileBox (python-wechaty's ``to_base64()`` returns '')."""
    return base64.b64decode(box.base64)


# --------------------------------------------------------------------------- the service


def _routes() -> Iterable[tuple[str, Cardinality, type, type]]:
    """Every RPC of ``PuppetStub``: name, cardinality, request and reply classes."""
    source = inspect.getsource(_grpc_service)
    for block in re.split(r"\n    async def ", source)[1:]:
        route = re.search(r'"/wechaty\.Puppet/(\w+)"', block)
        kind = re.search(r"self\._(unary_unary|unary_stream|stream_unary|stream_stream)", block)
        request = re.search(r"puppet\.(\w+Request)\b", block)
        reply = re.search(r"puppet\.(\w+Response)\b", block)
        if route and kind and request and reply:
            yield (route.group(1), Cardinality[kind.group(1).upper()],
                   getattr(pb, request.group(1)), getattr(pb, reply.group(1)))


class _Server(Server):
    """grpclib's server, remembering its connections so a restart can cut them."""

    def __init__(self, handlers: Any) -> None:
        super().__init__(handlers)
        self.protocols: list[Any] = []

    def _protocol_factory(self) -> Any:
        protocol = super()._protocol_factory()
        self.protocols.append(protocol)
        return protocol

    def cut_connections(self) -> None:
        for protocol in self.protocols:
            if hasattr(protocol, "processor"):
                protocol.processor.close("fake puppet service restarted")


class FakeWechat:
    """The fake puppet service and its small WeChat world.

    World: the bot ``self_id`` ("qvl-bot", named "qvl"), "wxid_alice" (Alice),
    "wxid_bob" (Bob), and room "room-1@chatroom" ("Test group") holding all three.
    """

    ROOM = "room-1@chatroom"
    ALICE = "wxid_alice"
    BOB = "wxid_bob"

    def __init__(self, *, self_id: str = "qvl-bot", self_name: str = "qvl",
                 token: str = "fake-puppet-token") -> None:
        self.self_id, self.token = self_id, token
        self.contacts: dict[str, FakeContact] = {
            c.id: c for c in (FakeContact(self_id, self_name), FakeContact(self.ALICE, "Alice"),
                              FakeContact(self.BOB, "Bob"))}
        self.rooms: dict[str, FakeRoom] = {self.ROOM: FakeRoom(
            self.ROOM, "Test group", [self_id, self.ALICE, self.BOB], owner_id=self.ALICE)}
        self.messages: dict[str, StoredMessage] = {}
        self.sent: list[SentMessage] = []
        self.calls: list[str] = []  # RPC names in the order they arrived
        self.unimplemented: list[str] = []
        self.errors: list[str] = []  # requests the fake refused (unknown ids ...)
        self.dropped_events: list[pb.EventResponse] = []  # pushed while no stream was open
        self.logged_in = True
        self.event_streams_opened = 0
        self.port = 0
        self._streams: set[asyncio.Queue[pb.EventResponse | GRPCError | None]] = set()
        self._server: _Server | None = None
        self._ids = itertools.count(1)
        self._run = next(_FAKES)  # wechaty drops ids it saw, process-wide: keep ids unique

    # ---- lifecycle

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def event_streams_open(self) -> int:
        """How many Event streams are open now: 1 while a client is connected."""
        return len(self._streams)

    async def start(self) -> FakeWechat:
        """Listen on 127.0.0.1 (a free port the first time, the same port after)."""
        self._server = _Server([self])
        await self._server.start("127.0.0.1", self.port, reuse_address=True)
        self.port = self._server._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def stop(self) -> None:
        """Stop like a crashed service: cancel the RPCs, cut the connections."""
        if self._server is None:
            return
        server, self._server = self._server, None
        server.close()
        server.cut_connections()
        await server.wait_closed()
        self._streams.clear()

    async def restart(self) -> None:
        """Stop, then listen again on the same port (see the module doc for the client)."""
        await self.stop()
        await self.start()

    async def end_event_streams(self, status: Status = Status.OK) -> None:
        """End every open Event stream with ``status`` (the connection stays up)."""
        end = None if status is Status.OK else GRPCError(status, "fake puppet service ended the stream")
        for queue in list(self._streams):
            queue.put_nowait(end)
        await self.wait_for(lambda: not self._streams, 5.0)

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 10.0) -> None:
        """Wait until ``predicate()`` holds; TimeoutError after ``timeout`` seconds."""
        async with asyncio.timeout(timeout):
            while not predicate():
                await asyncio.sleep(0.01)

    async def wait_for_event_stream(self, timeout: float = 10.0) -> None:
        await self.wait_for(lambda: self.event_streams_open > 0, timeout)

    async def wait_for_sent(self, n: int = 1, timeout: float = 10.0) -> list[SentMessage]:
        """Wait until the bot sent ``n`` messages in all; returns ``sent[:n]``."""
        try:
            await self.wait_for(lambda: len(self.sent) >= n, timeout)
        except TimeoutError:
            raise TimeoutError(f"the bot sent {len(self.sent)} of {n} messages: {self.sent}") from None
        return self.sent[:n]

    # ---- what users do

    def new_id(self, prefix: str = "msg") -> str:
        return f"{prefix}-{self._run}-{next(self._ids)}"

    async def push_event(self, kind: pb.EventType, payload: dict[str, Any]) -> int:
        """Send one event to every open Event stream; returns how many got it.

        With no stream open the event is lost, as with a real service, and kept in
        ``dropped_events``.
        """
        event = pb.EventResponse(type=kind, payload=json.dumps(payload))
        if not self._streams:
            log.warning("fake wechat: no Event stream open, dropping %s", payload)
            self.dropped_events.append(event)
        for queue in self._streams:
            queue.put_nowait(event)
        await asyncio.sleep(0)
        return len(self._streams)

    def add_contact(self, contact_id: str, name: str, *, rooms: Iterable[str] = ()) -> None:
        """Add a user (and put them in ``rooms``)."""
        self.contacts[contact_id] = FakeContact(contact_id, name)
        for room_id in rooms:
            self.rooms[room_id].member_ids.append(contact_id)

    def add_room(self, room_id: str, topic: str, member_ids: Iterable[str]) -> None:
        """Add a room (ids end in "@chatroom" on WeChat); the bot is always a member."""
        members = [self.self_id, *(m for m in member_ids if m != self.self_id)]
        self.rooms[room_id] = FakeRoom(room_id, topic, members, owner_id=members[-1])

    async def user_text(self, talker_id: str, text: str, *, room_id: str | None = None,
                        mention_self: bool = False, mention_ids: Iterable[str] = ()) -> str:
        """A text message from ``talker_id`` (to the bot, or in ``room_id``); returns its id.

        Mentions are written as WeChat writes them: ``@Name\\u2005`` before the text, and
        the ids in ``mentionIdList`` (only in rooms).
        """
        mentions = ([self.self_id] if mention_self else []) + list(mention_ids)
        if mentions and room_id is None:
            raise ValueError("mentions exist only in rooms")
        where = self._where(talker_id, room_id)
        prefix = "".join(f"@{self.contacts[m].name}{AT_SEPARATOR}" for m in mentions)
        return await self._deliver(StoredMessage(
            self.new_id(), MSG_TEXT, talker_id, prefix + text, **where, mention_ids=mentions))

    async def user_image(self, talker_id: str, image: bytes, *, room_id: str | None = None,
                         filename: str = "photo.jpg") -> str:
        """A picture from ``talker_id``; MessageImage/MessageFile return it. Returns the id."""
        where = self._where(talker_id, room_id)
        text = f'<msg><img length="{len(image)}" md5="" /></msg>'  # a real one carries XML
        return await self._deliver(StoredMessage(
            self.new_id(), MSG_IMAGE, talker_id, text, **where, filename=filename,
            data=image, media_type=mimetypes.guess_type(filename)[0] or ""))

    async def redeliver(self, message_id: str) -> int:
        """Push the MESSAGE event of ``message_id`` again; returns how many streams got it."""
        if message_id not in self.messages:
            raise KeyError(message_id)
        return await self.push_event(_E.EVENT_TYPE_MESSAGE, {"messageId": message_id})

    async def heartbeat(self, data: str = "heartbeat") -> int:
        return await self.push_event(_E.EVENT_TYPE_HEARTBEAT, {"data": data, "timeout": 60000})

    async def logout(self, reason: str = "logged out on the phone") -> int:
        self.logged_in = False
        return await self.push_event(_E.EVENT_TYPE_LOGOUT, {"contactId": self.self_id, "data": reason})

    async def login(self) -> int:
        self.logged_in = True
        return await self.push_event(_E.EVENT_TYPE_LOGIN, {"contactId": self.self_id})

    async def _deliver(self, message: StoredMessage) -> str:
        self.messages[message.id] = message
        await self.push_event(_E.EVENT_TYPE_MESSAGE, {"messageId": message.id})
        return message.id

    def _where(self, talker_id: str, room_id: str | None) -> dict[str, str]:
        """Check a test's ids (ValueError), and say where its message goes."""
        if talker_id not in self.contacts:
            raise ValueError(f"unknown contact {talker_id!r}: add_contact() first")
        if room_id is None:
            return {"to_id": self.self_id}
        if talker_id not in self.rooms.get(room_id, FakeRoom("", "", [])).member_ids:
            raise ValueError(f"{talker_id!r} is not in room {room_id!r}")
        return {"room_id": room_id}

    def _contact(self, contact_id: str) -> FakeContact:
        if contact_id not in self.contacts:
            self.errors.append(f"unknown contact {contact_id!r}")
            raise GRPCError(Status.NOT_FOUND, f"contact {contact_id!r} not found")
        return self.contacts[contact_id]

    def _room(self, room_id: str) -> FakeRoom:
        if room_id not in self.rooms:
            self.errors.append(f"unknown room {room_id!r}")
            raise GRPCError(Status.NOT_FOUND, f"room {room_id!r} not found")
        return self.rooms[room_id]

    def _message(self, message_id: str) -> StoredMessage:
        if message_id not in self.messages:
            self.errors.append(f"unknown message {message_id!r}")
            raise GRPCError(Status.NOT_FOUND, f"message {message_id!r} not found")
        return self.messages[message_id]

    # ---- gRPC plumbing

    def __mapping__(self) -> dict[str, Handler]:
        mapping = {}
        for name, cardinality, request, reply in _routes():
            if name == "Event":
                func = self._event
            elif hasattr(self, f"rpc_{name}"):
                func = self._unary(name, getattr(self, f"rpc_{name}"))
            else:
                func = self._unimplemented(name)
            mapping[f"/wechaty.Puppet/{name}"] = Handler(func, cardinality, request, reply)
        return mapping

    def _unary(self, name: str, method: Callable[[Any], Any]) -> Callable[[Stream], Any]:
        async def handle(stream: Stream) -> None:
            request = await stream.recv_message()
            self.calls.append(name)
            await stream.send_message(method(request))
        return handle

    def _unimplemented(self, name: str) -> Callable[[Stream], Any]:
        async def handle(stream: Stream) -> None:
            self.calls.append(name)
            self.unimplemented.append(name)
            log.warning("fake wechat: the client called %s, which the fake does not implement", name)
            raise GRPCError(Status.UNIMPLEMENTED, f"fake puppet service: {name} is not implemented")
        return handle

    async def _event(self, stream: Stream) -> None:
        await stream.recv_message()
        self.calls.append("Event")
        queue: asyncio.Queue[pb.EventResponse | GRPCError | None] = asyncio.Queue()
        self._streams.add(queue)
        self.event_streams_opened += 1
        try:
            if self.logged_in:  # a service tells a new stream who is logged in
                await stream.send_message(pb.EventResponse(
                    type=_E.EVENT_TYPE_LOGIN, payload=json.dumps({"contactId": self.self_id})))
                await stream.send_message(pb.EventResponse(
                    type=_E.EVENT_TYPE_READY, payload=json.dumps({"data": "ready"})))
            while isinstance(event := await queue.get(), pb.EventResponse):
                await stream.send_message(event)
            if isinstance(event, GRPCError):
                raise event
        finally:
            self._streams.discard(queue)

    # ---- the RPCs (named after the service's methods)

    def rpc_Start(self, _: pb.StartRequest) -> pb.StartResponse:
        return pb.StartResponse()

    def rpc_Stop(self, _: pb.StopRequest) -> pb.StopResponse:
        return pb.StopResponse()

    def rpc_Logout(self, _: pb.LogoutRequest) -> pb.LogoutResponse:
        self.logged_in = False
        return pb.LogoutResponse()

    def rpc_Ding(self, request: pb.DingRequest) -> pb.DingResponse:
        for queue in self._streams:  # a service answers a ding with a dong event
            queue.put_nowait(pb.EventResponse(
                type=_E.EVENT_TYPE_DONG, payload=json.dumps({"data": request.data})))
        return pb.DingResponse()

    def rpc_Version(self, _: pb.VersionRequest) -> pb.VersionResponse:
        return pb.VersionResponse(version="0.0.0-qvl-fake")

    def rpc_DirtyPayload(self, _: pb.DirtyPayloadRequest) -> pb.DirtyPayloadResponse:
        return pb.DirtyPayloadResponse()

    def rpc_ContactSelfQRCode(self, _: Any) -> pb.ContactSelfQrCodeResponse:
        return pb.ContactSelfQrCodeResponse(qrcode=f"https://weixin.qq.com/r/{self.self_id}")

    def rpc_ContactList(self, _: Any) -> pb.ContactListResponse:
        return pb.ContactListResponse(ids=list(self.contacts))

    def rpc_ContactPayload(self, request: pb.ContactPayloadRequest) -> pb.ContactPayloadResponse:
        contact = self._contact(request.id)
        return pb.ContactPayloadResponse(
            id=contact.id, name=contact.name, alias=contact.alias, friend=True,
            type=pb.ContactType.CONTACT_TYPE_PERSONAL, weixin=contact.id)

    def rpc_ContactAlias(self, request: pb.ContactAliasRequest) -> pb.ContactAliasResponse:
        contact = self._contact(request.id)
        if request.alias is not None:
            contact.alias = request.alias
        return pb.ContactAliasResponse(alias=contact.alias)

    def rpc_TagContactList(self, _: Any) -> pb.TagContactListResponse:
        return pb.TagContactListResponse(ids=[])

    def rpc_RoomList(self, _: Any) -> pb.RoomListResponse:
        return pb.RoomListResponse(ids=list(self.rooms))

    def rpc_RoomPayload(self, request: pb.RoomPayloadRequest) -> pb.RoomPayloadResponse:
        room = self._room(request.id)
        return pb.RoomPayloadResponse(id=room.id, topic=room.topic, owner_id=room.owner_id,
                                      admin_ids=[room.owner_id], member_ids=list(room.member_ids))

    def rpc_RoomMemberList(self, request: pb.RoomMemberListRequest) -> pb.RoomMemberListResponse:
        return pb.RoomMemberListResponse(member_ids=list(self._room(request.id).member_ids))

    def rpc_RoomMemberPayload(self, request: pb.RoomMemberPayloadRequest) -> pb.RoomMemberPayloadResponse:
        room = self._room(request.id)
        if request.member_id not in room.member_ids:
            self.errors.append(f"{request.member_id!r} is not in room {room.id!r}")
            raise GRPCError(Status.NOT_FOUND, f"{request.member_id!r} is not in {room.id!r}")
        contact = self._contact(request.member_id)
        return pb.RoomMemberPayloadResponse(id=contact.id, name=contact.name, room_alias="")

    def rpc_MessagePayload(self, request: pb.MessagePayloadRequest) -> pb.MessagePayloadResponse:
        m = self._message(request.id)
        return pb.MessagePayloadResponse(
            id=m.id, filename=m.filename, text=m.text, timestamp=m.timestamp, type=m.type,
            from_id=m.from_id, room_id=m.room_id, to_id=m.to_id, mention_ids=list(m.mention_ids))

    def _file_of(self, message_id: str) -> str:
        m = self._message(message_id)
        if m.data is None:
            self.errors.append(f"message {message_id!r} carries no file")
            raise GRPCError(Status.INVALID_ARGUMENT, f"message {message_id!r} carries no file")
        return file_box_json(m.data, m.filename or f"{m.id}.dat", m.media_type)

    def rpc_MessageImage(self, request: pb.MessageImageRequest) -> pb.MessageImageResponse:
        return pb.MessageImageResponse(filebox=self._file_of(request.id))  # every size: the original

    def rpc_MessageFile(self, request: pb.MessageFileRequest) -> pb.MessageFileResponse:
        return pb.MessageFileResponse(filebox=self._file_of(request.id))

    def _sent_message(self, conversation_id: str, **fields: Any) -> StoredMessage:
        if conversation_id in self.rooms:
            where = {"room_id": conversation_id}
        else:
            self._contact(conversation_id)
            where = {"to_id": conversation_id}
        message = StoredMessage(self.new_id("sent"), from_id=self.self_id, **where, **fields)
        self.messages[message.id] = message
        return message

    def rpc_MessageSendText(self, request: pb.MessageSendTextRequest) -> pb.MessageSendTextResponse:
        m = self._sent_message(request.conversation_id, type=MSG_TEXT, text=request.text,
                               mention_ids=list(request.mentonal_ids))
        self.sent.append(SentMessage(request.conversation_id, "text", m.id, text=request.text,
                                     mention_ids=list(request.mentonal_ids)))
        return pb.MessageSendTextResponse(id=m.id)

    def rpc_MessageSendFile(self, request: pb.MessageSendFileRequest) -> pb.MessageSendFileResponse:
        box = json.loads(request.filebox)
        name = box.get("name") or "file"
        data = base64.b64decode(box["base64"]) if box.get("boxType") == FILEBOX_BASE64 else None
        if data is None:  # a URL box: a service would download it; nothing is reachable here
            self.errors.append(f"file box of type {box.get('boxType')} was not decoded")
        media = box.get("mediaType") or box.get("mimeType") or mimetypes.guess_type(name)[0] or ""
        m = self._sent_message(request.conversation_id, filename=name, data=data, media_type=media,
                               type=MSG_IMAGE if media.startswith("image/") else MSG_ATTACHMENT)
        self.sent.append(SentMessage(request.conversation_id, "file", m.id, file_name=name,
                                     file_bytes=data, filebox=box))
        return pb.MessageSendFileResponse(id=m.id)


# --------------------------------------------------------------------------- the client side


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def reset_wechaty_caches() -> None:
    """Forget wechaty's process-wide Contact/Room/Tag objects, which keep the puppet of
    the first bot that loaded them (a later bot would talk through a closed channel)."""
    for cls in (Contact, Room, Tag):
        cls._pool.clear()


def forget_seen_messages() -> None:
    """Forget the message ids wechaty has seen, so a redelivered id reaches on_message."""
    SingleIdContainer.instance().ids.clear()


def bot_options(fake: FakeWechat, **overrides: Any) -> WechatyOptions:
    """WechatyOptions for ``fake``: its endpoint and token, a fresh PuppetOptions, an
    in-memory scheduler, and the (unused) plugin web server on a free local port."""
    return WechatyOptions(**{
        "name": "qvl-test", "puppet_options": PuppetOptions(), "endpoint": fake.endpoint,
        "token": fake.token, "host": "127.0.0.1", "port": free_port(),
        "scheduler": AsyncIOScheduler(), **overrides})


def make_bot(fake: FakeWechat, bot_class: type[Wechaty] = Wechaty, *args: Any, **kwargs: Any) -> Any:
    """``bot_class(*args, options=bot_options(fake), **kwargs)``, with wechaty's caches reset."""
    reset_wechaty_caches()
    return bot_class(*args, options=bot_options(fake), **kwargs)


@contextlib.asynccontextmanager
async def running(bot: Wechaty, *, timeout: float = 10.0) -> AsyncIterator[Wechaty]:
    """Run ``bot.start()`` as a task until the bot's login event, and stop it on exit.

    "Logged in" means the bot's ``on_login`` returned. Raises ConnectionError if nothing
    listens at the bot's endpoint, TimeoutError if no login came in ``timeout`` seconds
    (wechaty swallows errors in its login listener: look at its log), and what
    ``start()`` raised if it ended first.
    """
    # With the service unreachable, Wechaty.start() calls loop.stop(): refuse here instead.
    host, _, port = (bot._options.puppet_options.end_point or "").rpartition(":")
    try:
        _, writer = await asyncio.open_connection(host, int(port))
        writer.close()
    except (OSError, ValueError) as exc:
        raise ConnectionError(f"no puppet service at {host}:{port} (start the fake first)") from exc
    logged_in = asyncio.Event()
    on_login = bot.on_login

    async def on_login_then_mark(contact: Any) -> None:
        try:
            await on_login(contact)
        finally:
            logged_in.set()

    bot.on_login = on_login_then_mark  # type: ignore[method-assign]
    task = asyncio.create_task(bot.start(), name="wechaty-bot")
    waiter = asyncio.ensure_future(logged_in.wait())
    try:
        await asyncio.wait({task, waiter}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        if not logged_in.is_set():
            if task.done():
                task.result()
                raise RuntimeError("Wechaty.start() ended before the bot logged in")
            raise TimeoutError(f"the bot did not log in within {timeout}s (wechaty swallows "
                               "errors in its login listener: see the 'Wechaty' log)")
        yield bot
    finally:
        waiter.cancel()
        # Cancel start() first: stopping under it would make it log "The network is not
        # good", sleep 60 s and restart. A cancel landing while grpclib closes the
        # stream can be swallowed, so insist.
        while not task.done():
            task.cancel()
            await asyncio.wait({task}, timeout=0.1)
        with contextlib.suppress(Exception):
            if bot._puppet is not None:
                await bot.stop()
        scheduler = bot._plugin_manager.scheduler
        if scheduler.running:
            scheduler.shutdown(wait=False)


@pytest_asyncio.fixture
async def fake_wechat() -> AsyncIterator[FakeWechat]:
    """A started :class:`FakeWechat` with the default world."""
    fake = await FakeWechat().start()
    try:
        yield fake
    finally:
        await fake.stop()
