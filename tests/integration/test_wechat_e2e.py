"""The WeChat frontend end to end: the real python-wechaty client against a fake puppet
service speaking the real gRPC protocol, the real core, Redis, a `qvl worker` process, and
(for one test) the tiny random-weight model. Each test runs on SQLite and PostgreSQL.

The echo engine answers "You said: “…”. I see N picture(s) in M turn(s)." and boxes the
middle of the latest picture when asked to (框, box): it shows the context the pipeline built.
"""

from __future__ import annotations

import asyncio
import contextlib
import io

import pytest

# wechaty_puppet, not wechaty: wechaty itself only imports after the patch in
# bots/wechat/compat.py (and tests/fakes/wechat_puppet.py).
pytest.importorskip(
    "wechaty_puppet", reason="needs the `wechat` extra; scripts/test.sh runs these tests in .venv-wechat"
)

from PIL import Image  # noqa: E402

from bots.core import Core  # noqa: E402
from bots.wechat import bot as wechat_bot  # noqa: E402
from bots.wechat.bot import WechatFrontend  # noqa: E402
from bots.wechat.compat import fresh_options, reset_caches  # noqa: E402
from tests.fakes import wechat_puppet  # noqa: E402
from tests.fakes.wechat_puppet import FakeWechat, running  # noqa: E402

fake_wechat = wechat_puppet.fake_wechat  # the fixture (wechaty is imported only where needed)

pytestmark = pytest.mark.timeout(120)

RED = (220, 40, 40)


def jpeg(colour=RED, size=(320, 240)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, "JPEG", quality=95)
    return buf.getvalue()


@contextlib.asynccontextmanager
async def frontend(settings, fake: FakeWechat):
    core = Core(settings)
    reset_caches()
    bot = WechatFrontend(settings, core, fresh_options(fake.endpoint, fake.token))
    try:
        async with running(bot):
            yield bot
    finally:
        await bot.close_delivery()
        await core.close()


def texts(fake: FakeWechat, since: int = 0):
    return [m for m in fake.sent[since:] if m.kind == "text"]


async def test_room_picture_then_mention_gets_an_at_reply_and_the_annotated_picture(
        settings_for, worker_factory, fake_wechat):
    settings = settings_for()
    worker_factory(settings)
    fake = fake_wechat
    async with frontend(settings, fake):
        await fake.user_image(fake.ALICE, jpeg(), room_id=fake.ROOM)
        await asyncio.sleep(0.3)
        await fake.user_text(fake.ALICE, "帮我框出这个东西", room_id=fake.ROOM, mention_self=True)
        sent = await fake.wait_for_sent(2, timeout=60)
    text, picture = sent[0], sent[1]
    assert text.conversation_id == fake.ROOM and text.mention_ids == [fake.ALICE]
    assert text.text.startswith("@Alice") and "I see 1 picture(s) in 1 turn(s)" in text.text
    assert "帮我框出这个东西" in text.text and "@qvl" not in text.text.split("You said")[1]
    assert picture.kind == "file" and picture.conversation_id == fake.ROOM
    drawn = Image.open(io.BytesIO(picture.file_bytes)).convert("RGB")
    assert drawn.size == (320, 240) and drawn.getpixel((160, 120))[0] > 180  # middle untouched
    assert drawn.getpixel((80, 120))[0] < 120  # the box's left edge, drawn in blue


async def test_private_chat_and_scope_isolation_in_a_room(settings_for, worker_factory, fake_wechat):
    settings = settings_for()
    worker_factory(settings)
    fake = fake_wechat
    async with frontend(settings, fake):
        await fake.user_image(fake.ALICE, jpeg(), room_id=fake.ROOM)
        await fake.user_text(fake.ALICE, "这是什么", room_id=fake.ROOM, mention_self=True)
        await fake.wait_for_sent(1, timeout=60)
        await fake.user_text(fake.BOB, "她发了什么", room_id=fake.ROOM, mention_self=True)
        await fake.wait_for_sent(2, timeout=60)
        await fake.user_text(fake.ALICE, "你好", room_id=None)  # private chat: no mention needed
        await fake.wait_for_sent(3, timeout=60)
        await fake.user_text(fake.BOB, "just chatting in the room", room_id=fake.ROOM)  # not for the bot
        await asyncio.sleep(1.5)
    alice, bob, private = texts(fake)
    assert "1 picture(s) in 1 turn(s)" in alice.text
    assert "0 picture(s) in 1 turn(s)" in bob.text and bob.mention_ids == [fake.BOB]
    assert private.conversation_id == fake.ALICE and "0 picture(s) in 1 turn(s)" in private.text
    assert private.mention_ids == []
    assert len(fake.sent) == 3


async def test_pictures_expire_and_several_in_a_row_all_count(settings_for, worker_factory, fake_wechat):
    settings = settings_for(wechat_picture_window_s=2)
    worker_factory(settings)
    fake = fake_wechat
    async with frontend(settings, fake):
        await fake.user_image(fake.ALICE, jpeg((255, 0, 0)), room_id=fake.ROOM)
        await fake.user_image(fake.ALICE, jpeg((0, 255, 0)), room_id=fake.ROOM)
        await asyncio.sleep(0.3)
        await fake.user_text(fake.ALICE, "比较一下", room_id=fake.ROOM, mention_self=True)
        await fake.wait_for_sent(1, timeout=60)
        await fake.user_image(fake.BOB, jpeg(), room_id=fake.ROOM)
        await asyncio.sleep(2.5)  # longer than the window
        await fake.user_text(fake.BOB, "这是什么", room_id=fake.ROOM, mention_self=True)
        await fake.wait_for_sent(2, timeout=60)
    both, late = texts(fake)
    assert "2 picture(s) in 1 turn(s)" in both.text
    assert "0 picture(s) in 1 turn(s)" in late.text


async def test_quoting_a_picture_uses_it(settings_for, worker_factory, fake_wechat):
    settings = settings_for()
    worker_factory(settings)
    fake = fake_wechat
    async with frontend(settings, fake):
        await fake.user_image(fake.BOB, jpeg(), room_id=fake.ROOM)
        await asyncio.sleep(0.3)
        quote = "「Bob：[图片]」\n- - - - - - - - - - - - - - -\n@qvl\u2005这是什么"
        await fake.user_text(fake.ALICE, quote, room_id=fake.ROOM, mention_self=True)
        [answer] = await fake.wait_for_sent(1, timeout=60)
    assert "1 picture(s) in 1 turn(s)" in answer.text and "这是什么" in answer.text


async def test_commands_in_chinese_and_admin_scope(settings_for, worker_factory, fake_wechat):
    settings = settings_for(wechat_admins=FakeWechat.ALICE)
    worker_factory(settings)
    fake = fake_wechat
    async with frontend(settings, fake):
        await fake.user_text(fake.ALICE, "第一个问题", room_id=fake.ROOM, mention_self=True)
        await fake.wait_for_sent(1, timeout=60)
        await fake.user_text(fake.ALICE, "重置", room_id=fake.ROOM, mention_self=True)
        await fake.wait_for_sent(2, timeout=30)
        await fake.user_text(fake.ALICE, "帮助", room_id=fake.ROOM, mention_self=True)
        await fake.wait_for_sent(3, timeout=30)
        await fake.user_text(fake.BOB, "/scope room", room_id=fake.ROOM, mention_self=True)
        await fake.wait_for_sent(4, timeout=30)
        await fake.user_text(fake.ALICE, "/scope room", room_id=fake.ROOM, mention_self=True)
        await fake.wait_for_sent(5, timeout=30)
        await fake.user_text(fake.BOB, "大家好", room_id=fake.ROOM, mention_self=True)
        await fake.wait_for_sent(6, timeout=60)
        await fake.user_text(fake.ALICE, "我也在", room_id=fake.ROOM, mention_self=True)
        await fake.wait_for_sent(7, timeout=60)
    _, reset, help_, refused, done, bob, alice = texts(fake)
    assert "已清空" in reset.text and "重置" in help_.text
    assert "管理员" in refused.text and "全群共享" in done.text and "共享" in done.text
    assert "in 1 turn(s)" in bob.text and "in 3 turn(s)" in alice.text  # one shared room history


async def test_reconnects_after_the_puppet_service_restarts_and_delivers_once(
        settings_for, worker_factory, fake_wechat):
    fake = fake_wechat
    settings = settings_for(engine="tests.slow_engine:SlowEngine", wechat_endpoint=fake.endpoint,
                            wechat_token=fake.token)
    from tests.integration.test_turn_e2e import REPO

    worker_factory(settings, extra_env={"PYTHONPATH": str(REPO), "QVL_TEST_SLOW_S": "2"})
    core = Core(settings)
    runner = asyncio.create_task(wechat_bot.run(settings, redis_url=settings.redis_url,
                                                login_timeout_s=10, check_every_s=0.5, max_backoff_s=2))
    try:
        await fake.wait_for(lambda: fake.event_streams_open == 1, timeout=20)
        await asyncio.sleep(0.5)
        await fake.user_text(fake.ALICE, "are you there?", room_id=fake.ROOM, mention_self=True)
        await asyncio.sleep(0.5)  # the turn is queued; now the service goes away
        await fake.stop()
        await asyncio.sleep(3)  # the answer is finished while WeChat is unreachable
        assert texts(fake) == []
        await fake.start()  # same port
        await fake.wait_for(lambda: len(texts(fake)) >= 1, timeout=30)
        await fake.user_text(fake.BOB, "and me?", room_id=fake.ROOM, mention_self=True)
        await fake.wait_for(lambda: len(texts(fake)) >= 2, timeout=30)
        await asyncio.sleep(1)
    finally:
        runner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await runner
        await core.close()
    first, second = texts(fake)
    assert "are you there?" in first.text and "and me?" in second.text
    assert fake.event_streams_opened >= 2  # it connected again by itself


async def test_tiny_model_answers_in_a_room(settings_for, worker_factory, fake_wechat, tiny_model_factory):
    settings = settings_for(engine="transformers", model=str(tiny_model_factory("qwen2-vl")), max_new_tokens=12)
    worker_factory(settings)
    fake = fake_wechat
    async with frontend(settings, fake):
        await fake.user_image(fake.ALICE, jpeg(), room_id=fake.ROOM)
        await fake.user_text(fake.ALICE, "这是什么", room_id=fake.ROOM, mention_self=True)
        [answer] = await fake.wait_for_sent(1, timeout=90)
    assert answer.text.startswith("@Alice") and answer.text.strip() != "@Alice"
