"""Delivery on WeCom without a server: which path a finished reply takes, and that a part
sent is not sent again when a later one fails (a recording client, a clock in the test's hand)."""

import io

import pytest
from PIL import Image

from bots.wecom.replies import NotConnected, Replies
from qvl.protocol import Reply, ReplyImage
from qvl.settings import Settings


class Client:
    def __init__(self, fail_sends: int = 0):
        self.frames, self.fail_sends = [], fail_sends

    async def reply_stream(self, frame, stream_id, content, finish=False, msg_item=None):
        self.frames.append(("stream", stream_id, content, finish, msg_item))
        return {"headers": frame["headers"], "errcode": 0}

    async def send_message(self, chatid, body):
        if self.fail_sends:
            self.fail_sends -= 1
            raise RuntimeError("WebSocket not connected, unable to send data")
        self.frames.append(("send", chatid, body["markdown"]["content"]))
        return {"headers": {"req_id": f"send{len(self.frames)}"}, "errcode": 0}


class Clock:
    now = 100.0

    def __call__(self):
        return self.now


def jpeg() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (4, 4)).save(out, "JPEG")
    return out.getvalue()


@pytest.fixture
def parts():
    client, clock, recorded = Client(), Clock(), []

    class RecordingCore:
        async def sent(self, reply, platform_id):
            recorded.append((reply.job_id, platform_id))

    replies = Replies(Settings(wecom_stream_window_s=60), RecordingCore(), lambda: client, clock=clock)
    return replies, client, clock, recorded


def reply(text="answer", images=()):
    return Reply(platform="wecom", chat_id="g1", text=text, images=images, job_id=7, reply_to_message_id="m1",
                 user_id="alice")


async def test_an_open_stream_ends_with_the_text_and_the_picture(parts):
    replies, client, clock, recorded = parts
    stream = replies.open(client, {"headers": {"req_id": "r1"}}, "m1", "zh")
    clock.now += 59
    await replies.deliver(reply(images=(ReplyImage(jpeg(), "image/jpeg", "b.jpg"),)))
    [(kind, stream_id, content, finish, items)] = client.frames
    assert (kind, stream_id, content, finish, len(items)) == ("stream", stream.stream_id, "answer", True, 1)
    assert recorded == [(7, stream.stream_id)] and replies.streams == {}


async def test_past_the_window_the_reply_is_sent_anew_with_a_line_for_the_picture(parts):
    replies, client, clock, recorded = parts
    replies.open(client, {"headers": {"req_id": "r1"}}, "m1", "zh")
    clock.now += 61
    await replies.deliver(reply(images=(ReplyImage(jpeg(), "image/jpeg", "b.jpg"),)))
    [(kind, chat, content)] = client.frames
    assert kind == "send" and chat == "g1" and content.startswith("answer\n\n（") and "请重新提问" in content
    assert recorded == [(7, "send1")]


async def test_a_long_reply_resumes_where_it_failed_and_never_repeats_a_part(parts):
    replies, client, clock, recorded = parts
    replies.open(client, {"headers": {"req_id": "r1"}}, "m1", None)
    client.fail_sends = 1
    long = "a" * 4999 + "\n\n" + "b" * 4999
    with pytest.raises(RuntimeError):
        await replies.deliver(reply(long))
    assert [f[0] for f in client.frames] == ["stream"] and recorded == []
    await replies.deliver(reply(long))  # offered again by the core
    assert [f[0] for f in client.frames] == ["stream", "send"] and client.frames[1][2] == "b" * 4999
    assert len(recorded) == 1


async def test_no_connection_means_offer_it_again_later(parts):
    replies, client, clock, recorded = parts
    replies.client = lambda: None
    with pytest.raises(NotConnected):
        await replies.deliver(reply())
    assert client.frames == [] and recorded == []
