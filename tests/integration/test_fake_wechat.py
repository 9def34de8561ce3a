"""The fake puppet service drives the real python-wechaty client (wechaty 0.10.7).

These tests also pin down what the client does, where a bot author could guess wrong:
mentions, image bytes, its dedup of message ids, and what happens when the service
goes away (it does not come back by itself in any useful time).
"""

from __future__ import annotations

import asyncio
import base64
import types
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

# wechaty_puppet, not wechaty: wechaty itself only imports after the patch in
# bots/wechat/compat.py (and tests/fakes/wechat_puppet.py).
pytest.importorskip(
    "wechaty_puppet", reason="needs the `wechat` extra; scripts/test.sh runs these tests in .venv-wechat"
)

import pytest_asyncio  # noqa: E402
from grpclib.const import Status  # noqa: E402
from grpclib.exceptions import GRPCError, StreamTerminatedError  # noqa: E402

from tests.fakes import wechat_puppet  # noqa: E402
from tests.fakes.wechat_puppet import (  # noqa: E402
    AT_SEPARATOR,
    FakeWechat,
    FileBox,
    Message,
    MessageType,
    Wechaty,
    file_box_bytes,
    forget_seen_messages,
    make_bot,
    running,
)

fake_wechat = wechat_puppet.fake_wechat  # the fixture (tests/conftest.py does not import it)

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4


class RecordingBot(Wechaty):
    """Keeps every message; runs ``self.reply(msg)`` if set; collects its own errors,
    because wechaty swallows exceptions raised in handlers."""

    def __init__(self, options):
        super().__init__(options)
        self.messages: list[Message] = []
        self.errors: list[BaseException] = []
        self.logins = 0
        self.reply: Callable[[Message], Awaitable[None]] | None = None

    async def on_login(self, contact) -> None:
        self.logins += 1

    async def on_message(self, msg: Message) -> None:
        try:
            self.messages.append(msg)
            if self.reply is not None:
                await self.reply(msg)
        except Exception as exc:  # noqa: BLE001 - surfaced by the fixture
            self.errors.append(exc)

    async def wait_for_messages(self, fake: FakeWechat, n: int) -> list[Message]:
        await fake.wait_for(lambda: len(self.messages) >= n, timeout=5)
        return self.messages


@pytest_asyncio.fixture
async def bot(fake_wechat: FakeWechat) -> AsyncIterator[RecordingBot]:
    bot = make_bot(fake_wechat, RecordingBot)
    async with running(bot):
        yield bot
    assert not bot.errors, bot.errors
    assert not fake_wechat.unimplemented, fake_wechat.unimplemented


async def test_logs_in(fake_wechat: FakeWechat, bot: RecordingBot) -> None:
    assert fake_wechat.calls[:3] == ["Stop", "Start", "Event"]
    assert fake_wechat.event_streams_open == 1
    me = bot.user_self()
    assert (me.contact_id, me.name) == ("qvl-bot", "qvl")
    assert bot.logins == 1


async def test_private_text(fake_wechat: FakeWechat, bot: RecordingBot) -> None:
    message_id = await fake_wechat.user_text("wxid_alice", "你好 hello")
    [msg] = await bot.wait_for_messages(fake_wechat, 1)
    assert msg.message_id == message_id
    assert msg.type() == MessageType.MESSAGE_TYPE_TEXT
    assert (msg.talker().contact_id, msg.talker().name) == ("wxid_alice", "Alice")
    assert msg.text() == "你好 hello"
    assert msg.room() is None
    assert not await msg.mention_self()
    assert not msg.is_self()


async def test_room_text_with_mention(fake_wechat: FakeWechat, bot: RecordingBot) -> None:
    await fake_wechat.user_text("wxid_bob", "what is this?", room_id=fake_wechat.ROOM,
                                mention_self=True)
    await fake_wechat.user_text("wxid_alice", "no mention here", room_id=fake_wechat.ROOM)
    await bot.wait_for_messages(fake_wechat, 2)
    by_talker = {m.talker().contact_id: m for m in bot.messages}

    mentioned = by_talker["wxid_bob"]
    room = mentioned.room()
    assert room is not None and room.room_id == "room-1@chatroom"
    assert await room.topic() == "Test group"
    assert await mentioned.mention_self()
    assert mentioned.text() == f"@qvl{AT_SEPARATOR}what is this?"  # as WeChat writes it
    assert await mentioned.mention_text() == "what is this?"
    assert not await by_talker["wxid_alice"].mention_self()


async def test_image_bytes(fake_wechat: FakeWechat, bot: RecordingBot) -> None:
    await fake_wechat.user_image("wxid_alice", PNG, filename="cat.png")
    [msg] = await bot.wait_for_messages(fake_wechat, 1)
    assert msg.type() == MessageType.MESSAGE_TYPE_IMAGE
    box = await msg.to_file_box()
    assert box.name == "cat.png"
    assert file_box_bytes(box) == PNG
    assert file_box_bytes(await msg.to_image().artwork()) == PNG
    assert file_box_bytes(await msg.to_image().hd()) == PNG


async def test_bot_replies_with_mention_and_file(fake_wechat: FakeWechat, bot: RecordingBot) -> None:
    said: list[Message | None] = []

    async def reply(msg: Message) -> None:
        said.append(await msg.room().say("hi", mention_ids=[msg.talker().contact_id]))
        box = FileBox.from_base64(base64.b64encode(PNG), name="answer.png")
        said.append(await msg.say(box))

    bot.reply = reply
    await fake_wechat.user_text("wxid_alice", "draw", room_id=fake_wechat.ROOM, mention_self=True)
    text, file = await fake_wechat.wait_for_sent(2)

    assert text.conversation_id == file.conversation_id == "room-1@chatroom"
    assert (text.kind, text.mention_ids) == ("text", ["wxid_alice"])
    assert text.text == "@Alice hi"  # Room.say writes the @names itself
    assert (file.kind, file.file_name, file.file_bytes) == ("file", "answer.png", PNG)
    await fake_wechat.wait_for(lambda: len(said) == 2)
    assert [m.message_id for m in said] == [text.message_id, file.message_id]
    assert said[0].text() == "@Alice hi" and said[0].is_self()


async def test_redelivery_is_dropped_by_the_client(fake_wechat: FakeWechat, bot: RecordingBot) -> None:
    message_id = await fake_wechat.user_text("wxid_alice", "once")
    await bot.wait_for_messages(fake_wechat, 1)
    assert await fake_wechat.redeliver(message_id) == 1  # the event went out again ...
    await asyncio.sleep(0.3)
    assert len(bot.messages) == 1  # ... and python-wechaty dropped the id it had seen

    forget_seen_messages()
    await fake_wechat.redeliver(message_id)
    await bot.wait_for_messages(fake_wechat, 2)
    assert [m.message_id for m in bot.messages] == [message_id, message_id]


async def test_unimplemented_rpc_is_visible(fake_wechat: FakeWechat, bot: RecordingBot) -> None:
    message_id = await fake_wechat.user_text("wxid_alice", "recall me")
    [msg] = await bot.wait_for_messages(fake_wechat, 1)
    assert msg.message_id == message_id
    with pytest.raises(GRPCError) as caught:
        await msg.recall()
    assert caught.value.status is Status.UNIMPLEMENTED
    assert fake_wechat.unimplemented == ["MessageRecall"]
    fake_wechat.unimplemented.clear()


async def test_restart_leaves_the_client_asleep(fake_wechat: FakeWechat, bot: RecordingBot) -> None:
    """After the service restarts, wechaty's start() logs "The network is not good",
    sleeps 60 s and only then reconnects: meanwhile events are lost."""
    port = fake_wechat.port
    await fake_wechat.restart()
    assert fake_wechat.port == port
    await fake_wechat.wait_for(lambda: fake_wechat.event_streams_open == 0)
    await asyncio.sleep(0.5)
    assert fake_wechat.event_streams_opened == 1  # no new stream
    await fake_wechat.user_text("wxid_alice", "anyone?")
    assert len(fake_wechat.dropped_events) == 1  # no stream to carry it: lost
    assert bot.messages == []


async def test_client_reconnects_after_its_sleep(
    fake_wechat: FakeWechat, bot: RecordingBot, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the 60 s retry does, with wechaty's sleep shortened: it reconnects (Stop,
    Stop, Start, Event), messages flow again, and on_login is NOT called again."""
    naps: list[float] = []

    async def short_sleep(delay: float, *args: object) -> None:
        naps.append(delay)
        await asyncio.sleep(0.1)

    monkeypatch.setattr("wechaty.wechaty.asyncio", types.SimpleNamespace(
        sleep=short_sleep, get_event_loop=asyncio.get_event_loop))
    await fake_wechat.restart()
    await fake_wechat.wait_for(lambda: fake_wechat.event_streams_opened == 2, timeout=5)
    assert naps == [60]
    assert fake_wechat.calls[-4:] == ["Stop", "Stop", "Start", "Event"]
    message_id = await fake_wechat.user_text("wxid_bob", "back?")
    [msg] = await bot.wait_for_messages(fake_wechat, 1)
    assert msg.message_id == message_id
    assert bot.logins == 1  # its login listener fails ("Scheduler is already running")


@pytest.mark.parametrize("status", [Status.OK, Status.UNAVAILABLE])
async def test_a_stream_that_ends_is_not_reopened(
    fake_wechat: FakeWechat, bot: RecordingBot, status: Status
) -> None:
    task = next(t for t in asyncio.all_tasks() if t.get_name() == "wechaty-bot")
    await fake_wechat.end_event_streams(status)
    await asyncio.wait({task}, timeout=2)
    assert task.done() and task.exception() is None  # start() returned (OK) or printed
    await asyncio.sleep(0.3)
    assert fake_wechat.event_streams_opened == 1


async def test_running_refuses_an_absent_service(fake_wechat: FakeWechat) -> None:
    bot = make_bot(fake_wechat, RecordingBot)
    await fake_wechat.stop()  # Wechaty.start() would call loop.stop() on this
    with pytest.raises(ConnectionError):
        async with running(bot):
            pass


class BareStartBot(RecordingBot):
    async def start(self) -> None:
        """Wechaty.start() without its catch-all: a dropped connection surfaces."""
        await self.init_puppet()
        await self.init_puppet_event_bridge(self.puppet)
        await self.puppet.start()


async def test_a_bare_start_surfaces_the_drop(fake_wechat: FakeWechat) -> None:
    bot = make_bot(fake_wechat, BareStartBot)
    async with running(bot):
        task = next(t for t in asyncio.all_tasks() if t.get_name() == "wechaty-bot")
        await fake_wechat.restart()
        await asyncio.wait({task}, timeout=2)
        assert isinstance(task.exception(), StreamTerminatedError)

        again = asyncio.create_task(bot.puppet.start())  # the same puppet, a new channel
        try:
            await fake_wechat.wait_for_event_stream(timeout=5)
            await fake_wechat.user_text("wxid_alice", "still there?")
            [msg] = await bot.wait_for_messages(fake_wechat, 1)
            assert msg.text() == "still there?"
        finally:
            again.cancel()
    assert not bot.errors
