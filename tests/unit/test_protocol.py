"""The records that cross boundaries, and the message table users read."""

import json
import re

import pytest

from qvl.messages import MESSAGES, language_of, say
from qvl.protocol import (
    Box,
    BoxesPart,
    Event,
    ImagePart,
    JobState,
    Scope,
    TextPart,
    decode_parts,
    encode_parts,
)

SHA = "ab" * 32
PARTS = (
    TextPart("a dog", raw="<ref>a dog</ref><box>(1,2),(3,4)</box>"),
    TextPart("plain"),
    ImagePart(SHA),
    ImagePart("cd" * 32, annotated=True),
    BoxesPart(SHA, (Box("dog", (1, 2, 30, 40)), Box(None, (0, 0, 5, 5), picture=2))),
)


def test_parts_survive_a_round_trip_through_json():
    data = json.loads(json.dumps(encode_parts(PARTS)))
    assert decode_parts(data) == PARTS


def test_encode_refuses_what_is_not_a_part():
    with pytest.raises(ValueError):
        encode_parts(["hello"])


@pytest.mark.parametrize("bad", [
    {"type": "text", "text": "not in a list"},
    "text",
    None,
    [{"type": "video", "sha256": SHA}],
    ["just a string"],
    [{"type": "image"}],
    [{"type": "image", "sha256": ""}],
    [{"type": "text", "text": 3}],
    [{"type": "boxes", "image": SHA, "boxes": [{"label": "x", "box": [1, 2, 3]}]}],
    [{"type": "boxes", "image": SHA, "boxes": [{"label": "x"}]}],
])
def test_decode_refuses_malformed_parts(bad):
    with pytest.raises(ValueError):
        decode_parts(bad)


def test_events_round_trip_and_garbage_is_none():
    for state in JobState:
        assert Event.decode(Event(7, state).encode()) == Event(7, state)
    assert Event.decode(Event(7, JobState.DONE).encode().encode()) == Event(7, JobState.DONE)
    for garbage in ("", "not json", "[]", '{"job_id": 1}', '{"job_id": "x", "state": "done"}',
                    '{"job_id": 1, "state": "exploded"}', b"\xff\xfe"):
        assert Event.decode(garbage) is None, garbage


def test_scope_words_and_aliases():
    assert Scope.parse("user") is Scope.USER
    assert Scope.parse(" Shared ") is Scope.SHARED
    assert Scope.parse("channel") is Scope.SHARED
    assert Scope.parse("room") is Scope.SHARED
    assert Scope.parse("共享") is Scope.SHARED
    assert Scope.parse("个人") is Scope.USER
    assert Scope.parse("话题") is Scope.THREAD
    assert Scope.parse("everyone") is None


def test_say_speaks_the_users_language_and_falls_back_to_english():
    assert say("reset", "zh") == MESSAGES["reset"]["zh"]
    assert say("reset", None) == MESSAGES["reset"]["en"]
    assert say("reset", "fr") == MESSAGES["reset"]["en"]
    assert "5" in say("too_many_images", "zh", n=5)
    assert say("help", "zh") != say("help", None)


def test_every_message_has_english_and_chinese_with_the_same_placeholders():
    fields = re.compile(r"\{(\w*)\}")
    for key, table in MESSAGES.items():
        assert set(table) >= {"en", "zh"}, key
        assert sorted(fields.findall(table["en"])) == sorted(fields.findall(table["zh"])), key


def test_language_of():
    assert language_of("这是什么") == "zh"
    assert language_of("what is this? 狗") == "zh"
    assert language_of("what is this?") is None
    assert language_of("") is None
