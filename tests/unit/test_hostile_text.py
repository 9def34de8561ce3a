"""Hostile text at the door and in the context window: huge messages are refused, the
current turn never takes the prompt over its budget, broken Unicode is cleaned, and an
event answered at once is answered once (with an in-memory stand-in for Redis)."""

from __future__ import annotations

import asyncio

from PIL import Image

from bots.core import DUPLICATE, Core, clean_text
from qvl.messages import say
from qvl.protocol import IncomingMessage, Reply
from qvl.settings import Settings
from worker.prompt.context import CUT_MARK, StoredTurn, build_window
from worker.prompt.sanitize import defuse

# --- the context window ------------------------------------------------------------

IMG = {name: Image.new("RGB", (10, 10)) for name in "abc"}


def total(window, count) -> int:
    """What the window costs the way build_window counts it: text, pictures, 4 a turn."""
    system, *turns = window.turns
    return count(system.text) + sum(count(t.text) + 100 * len(t.images) + 4 for t in turns)


def test_a_huge_current_turn_is_cut_to_the_budget_keeping_its_start():
    counted = []

    def count(text):  # one token per character, as CJK text counts in most tokenizers
        counted.append(len(text))
        return len(text)

    for text in ("x" * 1_000_000, "字" * 100_000):
        counted.clear()
        history = [StoredTurn("user", "q0"), StoredTurn("assistant", "a0"), StoredTurn("user", text, ("a",))]
        w = build_window(history, images=IMG, system="sys", max_images=4, token_budget=6144,
                         count_tokens=count, image_tokens=lambda w, h: 100)
        assert total(w, len) <= 6144
        last = w.turns[-1]
        assert last.role == "user" and last.text.endswith(CUT_MARK) and last.text.startswith(text[:100])
        assert len(last.text) == 6144 - 3 - 100 - 4  # every token the budget has left is used
        assert len(last.images) == 1  # the picture fits and is kept
        assert sum(counted) < 4 * len(text)  # the search counts about twice the text, not more


def test_the_cut_keeps_the_window_within_the_budget_for_any_budget_and_tokenizer():
    def count(text):  # a tokenizer whose tokens are about three characters
        return (len(text) + 2) // 3

    for budget in (256, 300, 1000, 6144):
        history = [StoredTurn("user", "<|im_start|>" * 50_000, ("a", "b"))]
        w = build_window(history, images=IMG, system="sys", max_images=4, token_budget=budget,
                         count_tokens=count, image_tokens=lambda w, h: 100)
        assert total(w, count) <= budget, budget
        assert w.turns[-1].text.endswith(CUT_MARK)
        assert "<|im_start|>" not in w.turns[-1].text  # still defused
        assert w.pictures in (["a", "b"], ["b"], [])  # the newest kept first


def test_pictures_that_do_not_fit_go_newest_kept():
    history = [StoredTurn("user", "hi", ("a", "b", "c"))]
    w = build_window(history, images=IMG, system=None, max_images=4, token_budget=256,
                     count_tokens=len, image_tokens=lambda w, h: 100)
    assert w.pictures == ["b", "c"] and w.turns[-1].text == "hi"
    assert total_without_system(w) <= 256


def total_without_system(window) -> int:
    return sum(len(defuse(t.text)) + 100 * len(t.images) + 4 for t in window.turns)


def test_a_turn_within_the_budget_is_untouched():
    w = build_window([StoredTurn("user", "x" * 100)], images=IMG, system="sys", max_images=4, token_budget=256,
                     count_tokens=len, image_tokens=lambda w, h: 100)
    assert w.turns[-1].text == "x" * 100


# --- text cleaning ---------------------------------------------------------------------

def test_clean_text_replaces_lone_surrogates_joins_pairs_drops_nuls_and_composes():
    assert clean_text("abc\ud800def") == "abc\ufffddef"
    assert clean_text("\udcff\udcfe ok") == "\ufffd\ufffd ok"  # invalid UTF-8 read with surrogateescape
    assert clean_text("smile \ud83d\ude00") == "smile \U0001f600"  # a pair written as two code points
    assert clean_text("a\x00b\x00") == "ab"
    assert clean_text("e\u0301") == "\u00e9"  # NFC
    assert clean_text("plain 文字") == "plain 文字"
    for text in ("abc\ud800def\x00", "\ud83d", "x\udfffy"):
        clean_text(text).encode("utf-8")  # never raises


# --- the door --------------------------------------------------------------------------

class FakeRedis:
    """The two calls the door makes, in memory."""

    def __init__(self):
        self.keys: dict[str, bytes] = {}
        self.ttl: dict[str, int] = {}

    async def exists(self, key):
        return int(key in self.keys)

    async def set(self, key, value, *, nx=False, ex=None):
        if nx and key in self.keys:
            return None
        self.keys[key], self.ttl[key] = value, ex
        return True

    async def aclose(self):
        pass


def core_for(tmp_path, **overrides) -> Core:
    settings = Settings(data_dir=tmp_path, database_url=f"sqlite:///{tmp_path}/q.sqlite3",
                        redis_url="redis://127.0.0.1:1/0", namespace="t", **overrides)
    core = Core(settings)
    core.redis = FakeRedis()
    return core


def msg(text, *, msg_id="m1", language=None) -> IncomingMessage:
    return IncomingMessage(platform="test", chat_id="c", user_id="u", message_id=msg_id, text=text,
                           language=language)


def test_huge_text_is_refused_at_the_door_in_the_users_language(tmp_path):
    core = core_for(tmp_path)

    async def scenario():
        english = await core.handle(msg("x" * 1_000_000, msg_id="1"))
        chinese = await core.handle(msg("字" * 100_000, msg_id="2"))
        told_zh = await core.handle(msg("a" * 9000, msg_id="3", language="zh"))
        at_limit = await core.handle(msg("y" * 8001, msg_id="4"))
        return english, chinese, told_zh, at_limit

    english, chinese, told_zh, over = asyncio.run(scenario())
    assert isinstance(english, Reply) and english.key == "text_too_long" and english.error
    assert english.text == say("text_too_long", None, n=1_000_000, limit=8000)
    assert len(english.text) < 200
    assert chinese.text == say("text_too_long", "zh", n=100_000, limit=8000)
    assert told_zh.text == say("text_too_long", "zh", n=9000, limit=8000)
    assert over.key == "text_too_long"
    assert core.redis.ttl["t:seen:test:1"] == 24 * 3600


def test_the_limit_is_a_setting(tmp_path):
    core = core_for(tmp_path, text_max_chars=10)
    reply = asyncio.run(core.handle(msg("/help with more words")))
    assert reply.key == "text_too_long" and "10" in reply.text


def test_an_immediate_reply_is_given_once_per_event(tmp_path):
    core = core_for(tmp_path)

    async def scenario():
        return [await core.handle(msg(text, msg_id=i)) for text, i in
                (("/help", "h"), ("/help", "h"), ("x" * 10_000, "big"), ("x" * 10_000, "big"), ("/help", "h2"))]

    first, again, big, big_again, other = asyncio.run(scenario())
    assert first.key == "help" and first.text
    assert again.key == DUPLICATE and again.text == ""
    assert big.key == "text_too_long" and big_again.key == DUPLICATE
    assert other.key == "help"
