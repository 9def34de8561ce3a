"""Hostile text through the real core (SQL, Redis, a real `qvl worker` with the echo engine)
and the real Discord client against the fake Discord: huge text refused at the door, every
platform event answered once, broken Unicode answered normally, and replies that ping
nobody but the asker. Each test runs on SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio

import pytest

from bots.core import DUPLICATE, Core
from qvl.messages import say
from qvl.protocol import Accepted, Reply
from storage import repo
from tests.integration.test_discord_e2e import ask as ask_discord
from tests.integration.test_discord_e2e import drain, frontend, handed_to_core
from tests.integration.test_turn_e2e import ask, message, picture

pytestmark = pytest.mark.timeout(120)


def no_turn(core: Core, msg_id: str) -> bool:
    with core.sessions() as session:
        return repo.find_turn(session=session, platform="test", platform_message_id=msg_id) is None


def test_huge_text_is_refused_at_the_door_in_the_users_language(settings_for):
    settings = settings_for()

    async def scenario():
        core = Core(settings)
        try:
            english = await core.handle(message("x" * 1_000_000, msg_id="big-en"))
            chinese = await core.handle(message("这" * 100_000, msg_id="big-zh"))
            again = await core.handle(message("x" * 1_000_000, msg_id="big-en"))
            stored = no_turn(core, "big-en") and no_turn(core, "big-zh")
        finally:
            await core.close()
        return english, chinese, again, stored

    english, chinese, again, nothing_stored = asyncio.run(scenario())
    assert isinstance(english, Reply) and english.key == "text_too_long"
    assert english.text == say("text_too_long", "en", n=1_000_000, limit=settings.text_max_chars)
    assert chinese.text == say("text_too_long", "zh", n=100_000, limit=settings.text_max_chars)
    assert len(english.text) < 200 and len(chinese.text) < 100
    assert again.key == DUPLICATE and again.text == ""
    assert nothing_stored


def test_commands_refusals_and_turns_delivered_twice_are_answered_once(settings_for):
    settings = settings_for()

    async def scenario():
        core = Core(settings)
        try:
            out = {}
            for name, msg in (("help", message("/help", msg_id="help-1")),
                              ("reset", message("/reset", msg_id="reset-1")),
                              ("picture", message("what is this?", [b"GIF89a not really"], msg_id="pic-1")),
                              ("turn", message("hello", msg_id="turn-1"))):
                out[name] = (await core.handle(msg), await core.handle(msg))
            # a turn is recognised from SQL, with no mark in Redis (as after the mark expired)
            await core.redis.delete(f"{settings.namespace}:seen:test:turn-1")
            out["turn_later"] = await core.handle(message("hello", msg_id="turn-1"))
            seen = await core.redis.ttl(f"{settings.namespace}:seen:test:help-1")
        finally:
            await core.close()
        return out, seen

    out, ttl = asyncio.run(scenario())
    for name, key in (("help", "help"), ("reset", "reset"), ("picture", "picture_damaged")):
        first, again = out[name]
        assert isinstance(first, Reply) and first.key == key and first.text, name
        assert isinstance(again, Reply) and again.key == DUPLICATE and again.text == "", name
    first, again = out["turn"]
    assert isinstance(first, Accepted) and not first.duplicate
    assert again == Accepted(job_id=first.job_id, duplicate=True)
    assert out["turn_later"] == Accepted(job_id=first.job_id, duplicate=True)
    assert 0 < ttl <= 24 * 3600


def test_lone_surrogates_and_nuls_are_answered_normally_and_the_next_turn_works(settings_for, worker_factory):
    settings = settings_for()
    worker_factory(settings)

    async def scenario():
        core = Core(settings)
        try:
            broken = await ask(core, message("abc\ud800def\x00 and \udcff\x00end", [picture()]))
            pair = await ask(core, message("smile \ud83d\ude00 e\u0301"))
            after = await ask(core, message("and now?"))
        finally:
            await core.close()
        return broken, pair, after

    broken, pair, after = asyncio.run(scenario())
    assert not broken.error and "abc\ufffddef and \ufffdend" in broken.text, broken.text
    assert "1 picture(s) in 1 turn(s)" in broken.text
    assert not pair.error and "smile \U0001f600 \u00e9" in pair.text
    assert not after.error and "1 picture(s) in 5 turn(s)" in after.text


# --- Discord: replies ping nobody but the asker -------------------------------------------

def allowed_for(sent) -> dict:
    return (sent.request or {}).get("allowed_mentions") or {}


async def test_discord_replies_mention_nobody_but_the_asker(settings_for, worker_factory, fake_discord):
    settings = settings_for()
    worker_factory(settings)
    w = fake_discord.world
    role = w.admin_role
    async with frontend(settings) as bot:
        assert bot.allowed_mentions is not None and bot.allowed_mentions.everyone is False
        question, [answer] = await ask_discord(
            fake_discord, f"say @everyone @here <@{w.bob}> <@&{role}> and <@{w.alice}>")
        _, [helped] = await ask_discord(fake_discord, f"/help @everyone <@{w.bob}>")
    assert "@everyone" in answer.content and f"<@{w.bob}>" in answer.content  # echoed...
    for sent in (answer, helped):
        allowed = allowed_for(sent)
        assert allowed.get("parse") == [], allowed  # ...but no @everyone/@here, role or user parsing
        assert [int(u) for u in allowed.get("users", [])] == [w.alice] and allowed.get("replied_user") is False
        assert allowed.get("roles", []) == []
    assert [int(u["id"]) for u in answer.payload["mentions"]] == [w.alice]  # only the asker
    assert answer.payload["mention_roles"] == [] and not answer.payload.get("mention_everyone")


async def test_discord_the_same_help_and_refused_picture_event_twice_is_answered_once(
        settings_for, worker_factory, fake_discord):
    settings = settings_for()
    worker_factory(settings)
    async with frontend(settings) as bot:
        _, handled = handed_to_core(bot)
        help_event, [helped] = await ask_discord(fake_discord, "/help")
        await fake_discord.dispatch("MESSAGE_CREATE", help_event)  # Discord redelivers it
        pic_event, [refused] = await ask_discord(fake_discord, "what is this?",
                                                 attachments=[("x.png", b"not a picture", "image/png")])
        await fake_discord.dispatch("MESSAGE_CREATE", pic_event)
        await fake_discord.wait_for(lambda: len(handled) == 4, timeout=30, what="the redelivered events handled")
        await drain(fake_discord)
    assert [getattr(r, "key", None) for r in handled[:4]] == ["help", DUPLICATE, "picture_format", DUPLICATE]
    assert [m for m in fake_discord.sent if m.reply_to == int(help_event["id"])] == [helped]
    assert [m for m in fake_discord.sent if m.reply_to == int(pic_event["id"])] == [refused]


# --- WeChat: a room reply @-mentions the asker alone --------------------------------------

@pytest.fixture
async def wechat():
    """The fake puppet service (skipped without the `wechat` extra; scripts/test.sh runs
    these tests in .venv-wechat)."""
    pytest.importorskip("wechaty_puppet", reason="needs the `wechat` extra")
    from tests.fakes.wechat_puppet import FakeWechat

    fake = await FakeWechat().start()
    try:
        yield fake
    finally:
        await fake.stop()


async def test_wechat_room_replies_mention_only_the_asker(settings_for, worker_factory, wechat):
    from bots.wechat.bot import WechatFrontend
    from bots.wechat.compat import fresh_options, reset_caches
    from tests.fakes.wechat_puppet import running

    settings = settings_for()
    worker_factory(settings)
    fake = wechat
    core = Core(settings)
    reset_caches()
    bot = WechatFrontend(settings, core, fresh_options(fake.endpoint, fake.token))
    try:
        async with running(bot):
            await fake.user_text(fake.ALICE, "say @所有人 @Bob @everyone", room_id=fake.ROOM, mention_self=True)
            await fake.user_text(fake.ALICE, "帮助", room_id=fake.ROOM, mention_self=True)
            sent = await fake.wait_for_sent(2, timeout=60)
    finally:
        await bot.close_delivery()
        await core.close()
    assert any("@所有人" in m.text for m in sent)  # echoed...
    for m in sent:
        assert m.conversation_id == fake.ROOM and m.mention_ids == [fake.ALICE], m  # ...pinging alice alone
