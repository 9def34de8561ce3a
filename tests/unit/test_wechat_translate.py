"""WeChat specifics: pictures sent before the question, quoting replies, rooms vs. DMs."""

from bots.wechat.translate import PictureBuffer, incoming, split_quote, strip_trigger
from qvl.protocol import Where

SEPARATOR = "- - - - - - - - - - - - - - -"


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_pictures_sent_within_the_window_join_the_question_oldest_first():
    clock = Clock()
    buf = PictureBuffer(60, clock=clock)
    buf.hold("alice", b"old")
    clock.now += 50
    buf.hold("alice", b"new")
    buf.hold("bob", b"bobs")
    clock.now += 20  # "old" is now 70 s old, "new" 20 s
    assert buf.take("alice") == (b"new",)
    assert buf.take("bob") == (b"bobs",)


def test_take_forgets_and_the_limit_keeps_the_newest():
    buf = PictureBuffer(60, clock=Clock(), limit=2)
    for data in (b"1", b"2", b"3"):
        buf.hold("alice", data)
    assert buf.take("alice") == (b"2", b"3")
    assert buf.take("alice") == ()
    assert buf.take("nobody") == ()


def test_last_picture_of_a_member_for_quoting_replies_within_the_hour():
    clock = Clock()
    buf = PictureBuffer(60, clock=clock)
    buf.hold("room1:alice", b"pic", place="room1", name="Alice")
    buf.take("room1:alice")  # taking the held pictures does not forget the last one
    clock.now += 3000
    assert buf.last_of("room1", "Alice") == b"pic"
    assert buf.last_of("room2", "Alice") is None
    assert buf.last_of("room1", "Bob") is None
    clock.now += 700
    assert buf.last_of("room1", "Alice") is None


def test_split_quote_reads_wechats_quote_format():
    text = f"「Alice：这是什么花？」\n{SEPARATOR}\n框出花"
    assert split_quote(text) == ("Alice", "这是什么花？", "框出花")
    assert split_quote(f"「Bob: [图片]」\n{SEPARATOR}\nwhat is it?") == ("Bob", "[图片]", "what is it?")


def test_split_quote_leaves_plain_text_alone():
    assert split_quote("hello 「not a quote」") == (None, None, "hello 「not a quote」")
    assert split_quote("第一行\n第二行") == (None, None, "第一行\n第二行")


def test_strip_trigger():
    assert strip_trigger("  /q 这是什么", "/q") == ("这是什么", True)
    assert strip_trigger("这是什么", "/q") == ("这是什么", False)
    assert strip_trigger("/q hi", "") == ("/q hi", False)


def test_a_room_message_is_in_the_room_space_and_channel():
    msg = incoming(room_id="r1", user_id="wxid_a", user_name="Alice", message_id="m1",
                   text="what is this?", images=(b"x",))
    assert msg.platform == "wechat"
    assert msg.where == Where(space_id="r1", channel_id="r1")
    assert msg.chat_id == "r1" and msg.user_id == "wxid_a" and msg.user_name == "Alice"
    assert msg.images == (b"x",)
    assert msg.language is None


def test_a_private_message_has_no_space_and_chinese_is_detected():
    msg = incoming(room_id=None, user_id="wxid_a", user_name=None, message_id="m2",
                   text="这是什么", images=())
    assert msg.where.space_id is None
    assert msg.chat_id == "wxid_a"
    assert msg.language == "zh"
