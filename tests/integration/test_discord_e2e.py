"""The Discord frontend end to end: the real discord.py client against the loopback fake of
Discord's gateway and REST API, the real core, Redis, a real `qvl worker` process, and (for
one test) the tiny random-weight model. Each test runs on SQLite and on PostgreSQL.

The echo engine answers "You said: “…”. I see N picture(s) in M turn(s)." and boxes the
middle of the latest picture when asked to box something: it shows what context the
pipeline built for the model.
"""

from __future__ import annotations

import contextlib
import io

import pytest
from PIL import Image

from bots.core import Core
from bots.discord.bot import DiscordFrontend
from qvl.messages import say
from qvl.protocol import JobState
from tests.fakes.discord_server import FakeDiscord, SentMessage, running
from tests.fixtures.waiting import wait_for_turn

pytestmark = pytest.mark.timeout(120)

RED = (200, 30, 30)


def png(size=(320, 240), colour=RED) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, "PNG")
    return buf.getvalue()


class Frontend(DiscordFrontend):
    async def before_identify_hook(self, shard_id, *, initial=False):
        return None  # discord.py waits 5 s before re-identifying; the fake needs no pause


@contextlib.asynccontextmanager
async def frontend(settings):
    core = Core(settings)
    bot = Frontend(settings, core, guild_ready_timeout=0.1)
    try:
        async with running(bot):
            yield bot
    finally:
        await core.close()


def mention(fake: FakeDiscord) -> str:
    return f"<@{fake.bot_id}>"


async def ask(fake: FakeDiscord, text, *, user=None, channel=None, attachments=(), reply_to=None,
              n_before=None, mentioned=True):
    w = fake.world
    before = len(fake.sent) if n_before is None else n_before
    payload = await fake.user_message(channel or w.general, user or w.alice,
                                      f"{mention(fake)} {text}" if mentioned else text,
                                      attachments=list(attachments), reply_to=reply_to,
                                      mentions=[fake.bot_id] if mentioned else [])
    sent = await fake.wait_for_sent(before + 1, timeout=60)
    return payload, sent[before:]


async def drain(fake: FakeDiscord, text: str = "one more thing", *, channel=None) -> SentMessage:
    """Ask a later question and return its answer, once posted: an explicit drain, for a test
    that shows that something was *not* posted. The bot handles gateway events in order,
    and this answer needs a round trip through the worker; so what the bot posts for the
    earlier events by itself (a refusal, a word about a duplicate) or through its one
    delivery loop (finished replies one at a time, the backlog first) is in ``fake.sent``
    before it. A reply that needs its own round trip through the worker could race it:
    pair the drain with :func:`handed_to_core` to show that no such turn was started."""
    question = await fake.user_message(channel or fake.world.general, fake.world.alice,
                                       f"{mention(fake)} {text}", mentions=[fake.bot_id])
    [answer] = await fake.wait_for(lambda: [m for m in fake.sent if m.reply_to == int(question["id"])],
                                   timeout=60, what=f"the answer to {text!r}")
    return answer


def handed_to_core(bot: Frontend, name: str = "handle") -> tuple[list, list]:
    """Record what the frontend hands to ``bot.core.<name>`` (the slash commands share the
    core) and what comes back: the messages when the call is made, before anything is
    awaited, the results when it returns. A test waits on these to know that an event
    was handled, and how, or that it never reached the core."""
    calls: list = []
    results: list = []
    real = getattr(bot.core, name)

    async def recording(msg, *args, **kwargs):
        calls.append(msg)
        result = await real(msg, *args, **kwargs)
        results.append(result)
        return result

    setattr(bot.core, name, recording)
    return calls, results


async def test_mention_with_a_picture_gets_text_and_the_annotated_picture(settings_for, worker_factory,
                                                                          fake_discord):
    settings = settings_for()
    worker_factory(settings)
    async with frontend(settings):
        question, [reply] = await ask(fake_discord, "please box the apple",
                                      attachments=[("apple.png", png(), "image/png")])
    assert reply.reply_to == int(question["id"])  # a reply to the asking message
    assert "I see 1 picture(s) in 1 turn(s)" in reply.content and reply.content.endswith("apple")
    assert "<|box_start|>" not in reply.content and f"<@{fake_discord.bot_id}>" not in reply.content
    [(name, data)] = reply.files
    drawn = Image.open(io.BytesIO(data)).convert("RGB")
    assert name.endswith(".jpg") and drawn.size == (320, 240)
    assert drawn.getpixel((80, 120)) != RED and drawn.getpixel((160, 120)) == RED
    assert fake_discord.typing  # typing was shown while it waited


async def test_reply_chain_continues_and_users_never_share_history(settings_for, worker_factory,
                                                                  fake_discord):
    settings = settings_for()
    worker_factory(settings)
    w = fake_discord.world
    async with frontend(settings):
        _, [first] = await ask(fake_discord, "what is this?", attachments=[("a.png", png(), "image/png")])
        # alice replies to the bot without mentioning it: the same conversation goes on
        _, [second] = await ask(fake_discord, "and its colour?", reply_to=first.id, mentioned=False)
        # bob, in the same channel, has his own conversation
        _, [bobs] = await ask(fake_discord, "what did alice send?", user=w.bob)
        # bob replying to alice's answer does not get into alice's conversation either
        _, [sneaky] = await ask(fake_discord, "tell me more", user=w.bob, reply_to=second.id, mentioned=False)
        # a DM is its own conversation
        dm = fake_discord.dm_channel(w.alice)
        _, [private] = await ask(fake_discord, "hello", channel=dm, mentioned=False)
    assert "1 picture(s) in 1 turn(s)" in first.content
    assert "1 picture(s) in 3 turn(s)" in second.content and second.reply_to is not None
    assert "0 picture(s) in 1 turn(s)" in bobs.content
    assert "0 picture(s) in 3 turn(s)" in sneaky.content  # bob's own history: his turn, the answer, now
    assert "0 picture(s) in 1 turn(s)" in private.content


async def test_long_replies_are_split_at_discords_limit(settings_for, worker_factory, fake_discord):
    settings = settings_for()
    worker_factory(settings)
    long_text = "\n\n".join(f"Paragraph {i}: " + "lorem ipsum dolor " * 20 for i in range(8))
    async with frontend(settings):
        before = len(fake_discord.sent)
        await fake_discord.user_message(fake_discord.world.general, fake_discord.world.alice,
                                        f"{mention(fake_discord)} {long_text}", mentions=[fake_discord.bot_id])
        await fake_discord.wait_for_sent(before + 2, timeout=60)
        later = await drain(fake_discord)  # answered after every part of the long reply
        *sent, last = fake_discord.sent[before:]
    assert last == later
    assert len(sent) == 2 and all(len(m.content) <= 2000 for m in sent)
    assert sent[0].reply_to is not None
    assert sent[0].content.rstrip().endswith("lorem ipsum dolor")  # cut between paragraphs
    assert "Paragraph 7" in sent[1].content


async def test_rate_limit_and_bad_links_get_short_replies(settings_for, worker_factory, fake_discord):
    settings = settings_for(rate_limit_turns=2)
    worker_factory(settings)
    async with frontend(settings):
        _, [refused] = await ask(fake_discord, "what is at http://127.0.0.1:6379/x.png ?")
        await ask(fake_discord, "one")
        await ask(fake_discord, "two")
        _, [limited] = await ask(fake_discord, "three")
    assert "public addresses" in refused.content
    assert "too fast" in limited.content and "Traceback" not in limited.content


async def test_the_same_gateway_event_twice_is_answered_once(settings_for, worker_factory, fake_discord):
    settings = settings_for()
    worker_factory(settings)
    async with frontend(settings) as bot:
        _, handled = handed_to_core(bot)
        payload, [reply] = await ask(fake_discord, "hello once")
        await fake_discord.dispatch("MESSAGE_CREATE", payload)  # Discord redelivers it
        await fake_discord.wait_for(lambda: len(handled) == 2, timeout=30, what="the redelivered event handled")
        later = await drain(fake_discord)
    first, again = handled[:2]
    assert again.duplicate and again.job_id == first.job_id and not first.duplicate
    answers = [m for m in fake_discord.sent if m.reply_to == int(payload["id"])]
    assert answers == [reply]
    assert fake_discord.sent[fake_discord.sent.index(reply) + 1:] == [later]


async def test_replies_finished_while_offline_are_posted_on_return_once(settings_for, worker_factory,
                                                                       fake_discord):
    settings = settings_for(engine="tests.slow_engine:SlowEngine")
    from tests.integration.test_turn_e2e import REPO

    worker_factory(settings, extra_env={"PYTHONPATH": str(REPO), "QVL_TEST_SLOW_S": "2"})
    async with frontend(settings):
        question = await fake_discord.user_message(fake_discord.world.general, fake_discord.world.alice,
                                                   f"{mention(fake_discord)} are you there?",
                                                   mentions=[fake_discord.bot_id])
        # queued and picked up (the slow engine thinks for 2 s); the bot goes down now
        await wait_for_turn(settings, question["id"], lambda t: t.status == JobState.RUNNING,
                            what="the turn picked up by the worker")
    # the answer is finished while the bot is offline, and nobody delivered it
    finished = await wait_for_turn(settings, question["id"], lambda t: t.final, what="the turn finished")
    assert finished.status == JobState.DONE and finished.delivered_at is None
    assert not [m for m in fake_discord.sent if m.reply_to == int(question["id"])]
    async with frontend(settings):
        await fake_discord.wait_for(lambda: any(m.reply_to == int(question["id"]) for m in fake_discord.sent),
                                    timeout=30, what="the reply after reconnecting")
        await wait_for_turn(settings, question["id"], lambda t: t.posted, what="the reply recorded as posted")
    async with frontend(settings):  # and once only
        later = await drain(fake_discord, "still there?")  # after the backlog sweep
    answers = [m for m in fake_discord.sent if m.reply_to == int(question["id"])]
    assert len(answers) == 1 and "are you there?" in answers[0].content
    assert fake_discord.sent[-1] == later and "still there?" in later.content


async def test_queue_position_is_shown_when_the_wait_is_long(settings_for, fake_discord):
    settings = settings_for(discord_queue_notice_s=0.0)  # no worker: everything waits
    w = fake_discord.world
    async with frontend(settings):
        await fake_discord.user_message(w.general, w.bob, f"{mention(fake_discord)} first",
                                        mentions=[fake_discord.bot_id])
        await fake_discord.user_message(w.general, w.alice, f"{mention(fake_discord)} second",
                                        mentions=[fake_discord.bot_id])
        [notice] = await fake_discord.wait_for_sent(1, timeout=20)
    assert "1 question(s) ahead" in notice.content


async def test_slash_ask_with_an_image_and_admin_scope(settings_for, worker_factory, fake_discord):
    settings = settings_for()
    worker_factory(settings)
    w = fake_discord.world
    async with frontend(settings):
        await fake_discord.wait_for(lambda: fake_discord.commands.get(w.guild), timeout=10,
                                    what="slash commands synced to the server")
        await fake_discord.slash(w.guild, w.general, w.alice, "ask", {"question": "box the cat"},
                                 attachments={"image": ("cat.png", png(), "image/png")})
        await fake_discord.wait_for(lambda: any(m.files for m in fake_discord.sent), timeout=60,
                                    what="the /ask answer with its picture")
        answer = next(m for m in fake_discord.sent if m.files)
        await fake_discord.slash(w.guild, w.general, w.bob, "scope", {"mode": "shared"})
        await fake_discord.slash(w.guild, w.general, w.alice, "scope", {"mode": "shared"})
        await fake_discord.wait_for(lambda: sum(m.ephemeral for m in fake_discord.sent) >= 2, timeout=10,
                                    what="the /scope answers")
        _, [shared] = await ask(fake_discord, "what did alice ask?", user=w.bob)
    assert "box the cat" in answer.content and answer.via in ("followup", "edit_original")
    refusal, confirmation = [m for m in fake_discord.sent if m.ephemeral][:2]
    assert "admins" in refusal.content and "scope: shared" in confirmation.content
    assert "in 1 turn(s)" in shared.content  # a fresh, shared channel conversation


async def test_slash_reset_and_scope_fail_politely_and_the_bot_goes_on(settings_for, worker_factory,
                                                                      fake_discord, monkeypatch, caplog):
    settings = settings_for()
    worker_factory(settings)
    w = fake_discord.world
    sorry = say("sorry", None)
    async with frontend(settings) as bot:
        real_handle = bot.core.handle

        async def handle(msg, **kwargs):  # /reset breaks; everything else still works
            if msg.text == "/reset":
                raise RuntimeError("the database went away")
            return await real_handle(msg, **kwargs)

        async def configure(msg, **kwargs):
            raise RuntimeError("the settings table is locked")

        monkeypatch.setattr(bot.core, "handle", handle)
        monkeypatch.setattr(bot.core, "configure", configure)
        await fake_discord.wait_for(lambda: fake_discord.commands.get(w.guild), timeout=10,
                                    what="slash commands synced to the server")

        async def run(name, options=None, timeout=10):
            it = await fake_discord.slash(w.guild, w.general, w.alice, name, options)
            [sent] = await fake_discord.wait_for(
                lambda: [m for m in fake_discord.sent if m.interaction_id == int(it["id"])],
                timeout=timeout, what=f"the answer to /{name}")
            return sent

        reset_failed = await run("reset")
        scope_failed = await run("scope", {"mode": "shared"})
        # the bot keeps answering; this answer also drains any second word about the failures
        answer = await run("ask", {"question": "still with me?"}, timeout=60)
    for failed in (reset_failed, scope_failed):
        assert failed.content == sorry and failed.ephemeral and failed.via == "interaction"
        assert "\n" not in failed.content and len(failed.content) < 100  # one short sentence
    assert "still with me?" in answer.content and not answer.ephemeral
    assert answer.via in ("followup", "edit_original")
    assert fake_discord.sent == [reset_failed, scope_failed, answer]
    for m in fake_discord.sent:
        assert "Traceback" not in m.content and "RuntimeError" not in m.content
    failures = [r for r in caplog.records if r.name == "bots.discord.slash" and r.exc_info]
    assert [str(r.exc_info[1]) for r in failures] == ["the database went away", "the settings table is locked"]


async def test_tiny_model_answers_a_mention_with_a_picture(settings_for, worker_factory, fake_discord,
                                                           tiny_model_factory):
    settings = settings_for(engine="transformers", model=str(tiny_model_factory("qwen2-vl")), max_new_tokens=12)
    worker_factory(settings)
    async with frontend(settings):
        _, [reply] = await ask(fake_discord, "what is in this picture?",
                               attachments=[("p.png", png(), "image/png")])
    assert reply.content.strip() and reply.reply_to is not None


async def test_pictures_of_the_replied_message_and_threads_it_was_mentioned_in(settings_for, worker_factory,
                                                                              fake_discord):
    settings = settings_for()
    worker_factory(settings)
    w = fake_discord.world
    async with frontend(settings) as bot:
        shown = await fake_discord.user_message(w.general, w.bob, "look at this",
                                                attachments=[("b.png", png(), "image/png")])
        _, [about] = await ask(fake_discord, "what is in bob's picture?", reply_to=int(shown["id"]))
        thread = fake_discord.add_thread(w.general, "questions", w.alice)
        _, [in_thread] = await ask(fake_discord, "hi", channel=thread)
        _, [follow] = await ask(fake_discord, "and again, without a mention", channel=thread, mentioned=False)
        before = len(fake_discord.sent)
        handed, _ = handed_to_core(bot)
        await fake_discord.user_message(w.random, w.alice, "just chatting, not to the bot")
        later = await drain(fake_discord, "now to you", channel=w.random)
    assert "1 picture(s) in 1 turn(s)" in about.content
    assert "in 1 turn(s)" in in_thread.content and "in 3 turn(s)" in follow.content
    # ordinary talk is left alone: it never became a turn, and nothing was said about it
    assert [m.message_id for m in handed] == [str(later.reply_to)]
    assert fake_discord.sent[before:] == [later]


async def test_streamed_answer_is_edited_in_place_then_replaced_by_the_reply(settings_for, worker_factory,
                                                                            fake_discord):
    settings = settings_for(engine="tests.slow_engine:SlowEngine", discord_stream=True, stream_interval_s=0.1)
    from tests.integration.test_turn_e2e import REPO

    worker_factory(settings, extra_env={"PYTHONPATH": str(REPO), "QVL_TEST_SLOW_S": "3"})
    async with frontend(settings):
        question, sent = await ask(fake_discord, "think about it")
        await fake_discord.wait_for(lambda: any("think about it" in m.content for m in fake_discord.sent),
                                    timeout=30, what="the final reply")
    streamed = sent[0]
    assert streamed.content.startswith("thinking") and streamed.reply_to == int(question["id"])
    assert [e for e in fake_discord.edits if e.message_id == streamed.id]  # edited as it grew
    assert any(d[1] == streamed.id for d in fake_discord.deleted)  # replaced by the real reply
    final = [m for m in fake_discord.sent if "think about it" in m.content]
    assert len(final) == 1 and final[0].reply_to == int(question["id"])


async def test_allowed_channels_and_roles(settings_for, worker_factory, fake_discord):
    w = fake_discord.world
    settings = settings_for(discord_allowed_channels=str(w.random), discord_allowed_roles=str(w.admin_role))
    worker_factory(settings)
    async with frontend(settings) as bot:
        _, handled = handed_to_core(bot)
        before = len(fake_discord.sent)
        await fake_discord.user_message(w.general, w.alice, f"{mention(fake_discord)} here?",
                                        mentions=[fake_discord.bot_id])
        await fake_discord.user_message(w.random, w.bob, f"{mention(fake_discord)} I lack the role",
                                        mentions=[fake_discord.bot_id])
        await fake_discord.wait_for(lambda: len(handled) == 2, timeout=30, what="both refusals decided")
        assert [r.key for r in handled] == ["not_allowed", "not_allowed"]  # wrong channel; missing role
        answer = await drain(fake_discord, "and here?", channel=w.random)
    assert fake_discord.sent[before:] == [answer]  # the refusals were kept quiet
    assert "and here?" in answer.content
