"""WeCom's callbacks read into records, and what goes back: pure functions, and the TLS set-up."""

import base64
import hashlib
import io
import ssl

import pytest
from PIL import Image

from bots.text import split_message
from bots.wecom import sdk
from bots.wecom.bot import check_credentials
from bots.wecom.translate import (
    MAX_CHARS,
    Callback,
    PictureRef,
    incoming,
    language,
    parse,
    picture_item,
    question,
    strip_mentions,
)
from qvl.errors import UserFacingError
from qvl.protocol import ReplyImage
from qvl.settings import Settings

PIC = {"url": "https://wework.example/p1", "aeskey": "a2V5"}


def body(msgtype, payload, *, group=True, **extra):
    out = {"msgid": "m1", "aibotid": "b", "chattype": "group" if group else "single",
           "from": {"userid": "alice"}, "msgtype": msgtype, msgtype: payload, **extra}
    if group:
        out["chatid"] = "g1"
    return out


def test_text_in_a_group_loses_its_mention_and_a_direct_one_has_no_chat():
    cb = parse(body("text", {"content": "@qvl\u2005这是什么？"}))
    assert cb == Callback(msgid="m1", user_id="alice", chat_id="g1", text="这是什么？")
    assert parse(body("text", {"content": "hello @bob"}, group=False)).chat_id is None
    assert strip_mentions("@qvl @小助手 box the dog @bob") == "box the dog @bob"


def test_pictures_mixed_quotes_and_voice():
    assert parse(body("image", PIC)).pictures == (PictureRef(PIC["url"], "a2V5"),)
    mixed = parse(body("mixed", {"msg_item": [{"msgtype": "text", "text": {"content": "@qvl 比较"}},
                                              {"msgtype": "image", "image": PIC},
                                              {"msgtype": "image", "image": {"url": "https://x/2"}}]}))
    assert mixed.text == "比较" and mixed.pictures == (PictureRef(PIC["url"], "a2V5"), PictureRef("https://x/2"))
    quoted = parse(body("text", {"content": "@qvl 这个呢"}, quote={"msgtype": "image", "image": PIC}))
    assert quoted.quoted_pictures == (PictureRef(PIC["url"], "a2V5"),) and question(quoted) == "这个呢"
    quoted = parse(body("text", {"content": "/reset"}, quote={"msgtype": "text", "text": {"content": "a\nb"}}))
    assert question(quoted) == "/reset\n\n> a\n> b"  # the command stays first
    assert parse(body("voice", {"content": "这是什么"})).text == "这是什么"


@pytest.mark.parametrize("bad", [
    None, [], {}, body("file", {"url": "https://x"}), body("text", {"content": ""}),
    {**body("text", {"content": "hi"}), "from": {}}, {**body("text", {"content": "hi"}), "chatid": None},
    body("mixed", {"msg_item": "nonsense"}), body("image", {"aeskey": "k"}),
])
def test_what_the_bot_cannot_use_is_none(bad):
    assert parse(bad) is None


def test_incoming_keys_a_group_as_its_space_and_a_direct_chat_as_the_user():
    group = incoming(parse(body("text", {"content": "@qvl hi"})), text="hi")
    assert (group.platform, group.chat_id, group.where.space_id, group.where.channel_id) == ("wecom", "g1", "g1", "g1")
    direct = incoming(parse(body("text", {"content": "你好"}, group=False)), text="你好")
    assert direct.chat_id == "alice" and direct.where.space_id is None and direct.language == "zh"
    assert language("what is this?") is None and language("") == "zh" and language("/help") == "zh"


def _picture(fmt: str) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (8, 8), (1, 2, 3)).save(out, fmt)
    return out.getvalue()


@pytest.mark.parametrize("fmt,mime,kept", [("JPEG", "image/jpeg", True), ("PNG", "image/png", True),
                                           ("WEBP", "image/webp", False)])
def test_final_frame_pictures_are_jpeg_or_png_with_their_md5(fmt, mime, kept):
    data = _picture(fmt)
    item = picture_item(ReplyImage(data, mime, "boxes.x"))
    sent = base64.b64decode(item["image"]["base64"])
    assert item["msgtype"] == "image" and hashlib.md5(sent).hexdigest() == item["image"]["md5"]
    assert (sent == data) is kept and sent[:4] in (b"\xff\xd8\xff\xe0", b"\x89PNG")


def test_parts_fit_wecom_s_byte_limit_whatever_the_characters():
    for char in ("a", "长", "😀"):
        parts = split_message(char * 12_000, MAX_CHARS)
        assert len(parts) == 3 and all(len(p.encode()) <= 20480 for p in parts)


def test_credentials_are_required_and_placeholders_refused():
    with pytest.raises(UserFacingError, match="WECOM_BOT_ID and WECOM_BOT_SECRET"):
        check_credentials(Settings(wecom_bot_id="b"))
    with pytest.raises(UserFacingError, match="placeholder") as caught:
        check_credentials(Settings(wecom_bot_id="b", wecom_secret="change-me"))
    assert "change-me" not in str(caught.value)
    check_credentials(Settings(wecom_bot_id="b", wecom_secret="s" * 40))


def test_trusting_a_ca_file_adds_to_the_sdk_s_checks_and_never_weakens_them(tmp_path):
    bad = tmp_path / "ca.pem"
    bad.write_text("not a certificate")
    with pytest.raises(UserFacingError, match="QVL_WECOM_CA_FILE"):
        sdk.trust(bad)
    sdk.trust(None)
    context = sdk.tls_context()
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
