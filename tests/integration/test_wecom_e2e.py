"""The WeCom frontend end to end: WeCom's own SDK (unmodified) against a loopback stand-in
for WeCom's long-connection server speaking its frame protocol over TLS, the real core,
Redis, a `qvl worker` process; each test on SQLite and PostgreSQL.

The echo engine answers "You said: “…”. I see N picture(s) in M turn(s)." and boxes the
middle of the latest picture when asked to (框, box): it shows the context the pipeline built.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io

import pytest
from PIL import Image

from bots.core import Core
from bots.wecom.bot import WecomFrontend
from tests.fakes import wecom_server
from tests.fakes.wecom_server import FakeWecom

fake_wecom, wecom_certificates = wecom_server.fake_wecom, wecom_server.wecom_certificates  # the fixtures

pytestmark = pytest.mark.timeout(120)

RED = (220, 40, 40)


def jpeg(colour=RED, size=(320, 240)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, "JPEG", quality=95)
    return buf.getvalue()


def wecom_settings(settings_for, fake: FakeWecom, **overrides):
    values = dict(wecom_bot_id=fake.BOT_ID, wecom_secret=fake.SECRET, wecom_ws_url=fake.url,
                  wecom_ca_file=fake.ca_file, wecom_stream_interval_s=0.2)
    return settings_for(**values | overrides)


@contextlib.asynccontextmanager
async def frontend(settings, fake: FakeWecom, *, max_backoff_s: float = 1):
    core = Core(settings)
    bot = WecomFrontend(settings, core)
    task = asyncio.create_task(bot.serve(max_backoff_s=max_backoff_s))
    try:
        await fake.wait_for(lambda: bot.client is not None or task.done(), what="a subscription")
        assert not task.done(), task.exception()
        yield bot
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        bot.replies.connection_lost()
        await core.close()


def picture_of(item: dict) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(item["image"]["base64"]))).convert("RGB")


async def test_group_mention_with_a_picture_streams_and_ends_with_the_boxes(settings_for, worker_factory, fake_wecom):
    fake = fake_wecom
    settings = wecom_settings(settings_for, fake, wecom_heartbeat_s=0.2)
    worker_factory(settings)
    async with frontend(settings, fake):
        req = await fake.mixed(fake.ALICE, "@qvl 帮我框出这个东西", jpeg(), group=fake.GROUP)
        final = await fake.wait_final(req)
        await fake.wait_for(lambda: fake.pings >= 2, what="heartbeats")
    frames = fake.stream(req)
    assert frames[0]["content"] in ("⏳ 思考中…",) or frames[0]["content"].endswith(" …")
    assert len({f["id"] for f in frames}) == 1 and [f["finish"] for f in frames][-1] is True
    assert "帮我框出这个东西" in final["content"] and "I see 1 picture(s) in 1 turn(s)" in final["content"]
    assert "@qvl" not in final["content"]
    [item] = final["msg_item"]
    drawn = picture_of(item)
    assert drawn.size == (320, 240) and drawn.getpixel((160, 120))[0] > 180  # the middle untouched
    assert drawn.getpixel((80, 120))[0] < 120  # the box's left edge
    assert fake.active() == [] and fake.violations == []


async def test_direct_chat_picture_window_quotes_per_user_history_and_a_long_answer(
        settings_for, worker_factory, fake_wecom):
    fake = fake_wecom
    settings = wecom_settings(settings_for, fake)
    worker_factory(settings)
    async with frontend(settings, fake):
        picture = await fake.image(fake.ALICE, jpeg())  # a direct chat: the picture waits for the question
        asked = await fake.text(fake.ALICE, "这是什么")
        alone = (await fake.wait_final(asked))["content"]
        bob = (await fake.wait_final(await fake.text(fake.BOB, "她发了什么", group=fake.GROUP)))["content"]
        quoting = await fake.text(fake.ALICE, "这张图里有什么", group=fake.GROUP, quote=fake.quote_image(jpeg()))
        quoted_picture = (await fake.wait_final(quoting))["content"]
        quoted_text = (await fake.wait_final(
            await fake.text(fake.BOB, "怎么看", group=fake.GROUP, quote=fake.quote_text("今天天气不错"))))["content"]
        long = await fake.text(fake.ALICE, "长" * 5100)
        first = (await fake.wait_final(long))["content"]
        rest = await fake.wait_for(lambda: fake.active(fake.ALICE), what="the rest of a long answer")
    assert fake.stream(picture) == []  # held, not answered
    assert "这是什么" in alone and "1 picture(s) in 1 turn(s)" in alone
    assert "0 picture(s) in 1 turn(s)" in bob  # Bob's own history in the group, not Alice's
    assert "这张图里有什么" in quoted_picture and "1 picture(s) in 1 turn(s)" in quoted_picture
    assert "> 今天天气不错" in quoted_text and "in 3 turn(s)" in quoted_text  # his 2nd question (+1 answer)
    assert len(first) <= 5000 and len(rest) == 1 and first + rest[0]  # split, nothing lost
    assert ("长" * 5100) in (first + rest[0]).replace("\n", "").replace(" ", "")
    assert fake.violations == []


async def test_commands_in_chinese_admin_scope_and_groups_not_served(settings_for, worker_factory, fake_wecom):
    fake = fake_wecom
    settings = wecom_settings(settings_for, fake, wecom_admins=FakeWecom.ALICE, wecom_groups=FakeWecom.GROUP,
                              rate_limit_turns=3)
    worker_factory(settings)
    async with frontend(settings, fake):
        async def ask(user, text, group=FakeWecom.GROUP):
            return (await fake.wait_final(await fake.text(user, text, group=group)))["content"]

        elsewhere = await fake.text(fake.ALICE, "有人吗", group="wrOtherGroup")
        await ask(fake.ALICE, "第一个问题")
        reset = await ask(fake.ALICE, "重置")
        help_ = await ask(fake.ALICE, "帮助")
        refused = await ask(fake.BOB, "/scope shared")
        done = await ask(fake.ALICE, "范围 共享")
        bob = await ask(fake.BOB, "大家好")
        alice = await ask(fake.ALICE, "我也在")
        not_picture_en = (await fake.wait_final(
            await fake.mixed(fake.BOB, "@qvl what is in this?", b"not a picture", group=fake.GROUP)))["content"]
        not_picture_zh = (await fake.wait_final(
            await fake.mixed(fake.ALICE, "@qvl 这是什么", b"not a picture", group=fake.GROUP)))["content"]
        too_fast = await ask(fake.ALICE, "再问一次")
    assert fake.stream(elsewhere) == []  # a group the operator did not list: quiet
    assert "已清空" in reset and "重置" in help_
    assert "管理员" in refused and "全群共享" in done
    assert "in 1 turn(s)" in bob and "in 3 turn(s)" in alice  # one shared history: Bob, its answer, Alice
    assert "not a picture I can read" in not_picture_en and "无法识别" in not_picture_zh
    assert "提问太频繁" in too_fast  # Alice's 4th turn with 3 a minute allowed
    assert fake.violations == []


async def test_queue_position_then_a_reply_past_the_window_is_sent_anew_once(settings_for, worker_factory, fake_wecom):
    from tests.integration.test_turn_e2e import REPO

    fake = fake_wecom
    settings = wecom_settings(settings_for, fake, engine="tests.slow_engine:SlowEngine")
    worker_factory(settings, extra_env={"PYTHONPATH": str(REPO), "QVL_TEST_SLOW_S": "2"})
    async with frontend(settings, fake):
        # One after another, each once the bot answered the one before (a picture takes longer
        # to fetch than a text: sent at once, they could be queued in any order).
        first = await fake.mixed(fake.ALICE, "@qvl box the dog", jpeg(), group=fake.GROUP)
        await fake.wait_for(lambda: fake.stream(first), what="Alice's first frame")
        second = await fake.text(fake.BOB, "what about you?", group=fake.GROUP)
        await fake.wait_for(lambda: fake.stream(second), what="Bob's first frame")
        third = await fake.mixed("carol", "@qvl box the cat", jpeg(), group=fake.GROUP)
        await fake.wait_for(lambda: any("Queued" in f["content"] for f in fake.stream(third)), what="Carol queued")
        fake.expired.add(third)  # WeCom closes Carol's reply window while she waits (a long queue)
        final = await fake.wait_final(first)
        await fake.wait_final(second)
        late = await fake.wait_for(lambda: fake.active(fake.GROUP), timeout=30, what="the late reply")
        after = await fake.wait_final(await fake.text(fake.BOB, "thanks"))  # a later event: nothing more came
    assert any("thinking" in f["content"] for f in fake.stream(first))  # the answer as it is written
    assert final["msg_item"] and "box the dog" in final["content"]
    assert "⏳ Queued: 1 question(s) ahead of yours." in [f["content"] for f in fake.stream(third)]
    assert fake.final(third) is None  # its window had closed: no final frame, ...
    [text] = late  # ... the answer once, anew, with a line for the picture that cannot follow
    assert "box the cat" in text and "Ask again" in text
    assert fake.active(fake.GROUP) == late and "thanks" in after["content"]
    assert fake.violations and all("window passed" in v for v in fake.violations)  # Carol's refused frames


async def test_replies_finished_while_disconnected_are_sent_once_after_reconnecting(
        settings_for, worker_factory, fake_wecom):
    from tests.fixtures.waiting import wait_for_turn
    from tests.integration.test_turn_e2e import REPO

    fake = fake_wecom
    settings = wecom_settings(settings_for, fake, engine="tests.slow_engine:SlowEngine", delivery_lease_s=2)
    worker_factory(settings, extra_env={"PYTHONPATH": str(REPO), "QVL_TEST_SLOW_S": "1.5"})
    async with frontend(settings, fake) as bot:
        req = await fake.text(fake.ALICE, "are you there?", group=fake.GROUP)
        await fake.wait_for(lambda: fake.stream(req), what="the first stream frame")
        await fake.stop()  # WeCom goes away while the turn runs
        await fake.wait_for(lambda: bot.client is None, what="the bot noticing")
        msgid = fake.callbacks[req][1]["msgid"]
        await wait_for_turn(settings, msgid, lambda t: t.final, platform="wecom", what="the answer")
        assert fake.active() == []
        await fake.start()  # same port
        [text] = await fake.wait_for(lambda: fake.active(fake.GROUP), what="the reply after reconnecting")
        after = await fake.wait_final(await fake.text(fake.BOB, "and me?", group=fake.GROUP))
        await wait_for_turn(settings, msgid, lambda t: t.posted, platform="wecom", what="the reply recorded")
    assert "are you there?" in text and fake.final(req) is None
    assert "and me?" in after["content"] and fake.active() == [text]  # once
    assert bot.connections == 2 and fake.violations == []


async def test_a_refused_secret_is_retried_with_backoff_and_never_served(settings_for, fake_wecom, caplog):
    fake = fake_wecom
    settings = wecom_settings(settings_for, fake, wecom_secret="wrong-secret")
    core = Core(settings)
    bot = WecomFrontend(settings, core)
    task = asyncio.create_task(bot.serve(max_backoff_s=0.5))
    try:
        await fake.wait_for(lambda: fake.subscribes >= 3, timeout=20, what="retries")
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await core.close()
    assert bot.connections == 0 and bot.client is None
    assert "check WECOM_BOT_ID and WECOM_BOT_SECRET" in caplog.text and "wrong-secret" not in caplog.text


async def test_a_cut_or_silent_connection_is_noticed_and_replaced(settings_for, fake_wecom):
    fake = fake_wecom
    settings = wecom_settings(settings_for, fake, wecom_heartbeat_s=0.2)
    async with frontend(settings, fake, max_backoff_s=0.5) as bot:
        fake.abort()  # no closing handshake
        await fake.wait_for(lambda: bot.connections == 2 and bot.client is not None, what="a new connection")
        fake.answer_pings = False  # half-open: the SDK gives up after two unanswered pings
        await fake.wait_for(lambda: bot.client is None, what="the silent connection given up")
        fake.answer_pings = True
        await fake.wait_for(lambda: bot.connections == 3 and bot.client is not None, what="a third connection")
    assert fake.subscribes == 3 and fake.pings >= 2
