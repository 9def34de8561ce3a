"""The web frontend's pure parts: signed sessions and picture links, the page's palette,
how OpenAI histories are told apart, the exposure check."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from bots.web.app import is_loopback
from bots.web.auth import Signer, base_url, load_secret
from bots.web.turns import history_digest
from qvl.protocol import TextPart
from qvl.settings import Settings
from worker.grounding.draw import PALETTE

ROOT = Path(__file__).resolve().parents[2]


def test_a_session_speaks_for_its_key_until_it_expires_and_cannot_be_forged():
    signer = Signer(b"secret")
    token = signer.session(7)
    assert signer.session_key(token) == 7
    tag, key, expires, mac = token.split(".")
    assert signer.session_key(f"{tag}.8.{expires}.{mac}") is None  # another key
    assert signer.session_key(f"{tag}.{key}.{int(expires) + 1}.{mac}") is None  # a longer life
    assert Signer(b"other").session_key(token) is None
    assert signer.session_key(signer.session(7, days=-1)) is None  # expired
    for junk in ("", "qs1", "qs1.a.b.c", "qs2.7.9999999999.x"):
        assert signer.session_key(junk) is None


def test_a_picture_link_is_for_one_key_and_one_picture():
    signer = Signer(b"secret")
    sig = signer.file_sig(3, "ab" * 32)
    assert signer.file_ok(3, "ab" * 32, sig)
    assert not signer.file_ok(4, "ab" * 32, sig) and not signer.file_ok(3, "cd" * 32, sig)


def test_the_secret_is_made_once_and_kept(tmp_path):
    settings = Settings(data_dir=tmp_path)
    first = load_secret(settings)
    assert len(first) >= 32 and load_secret(settings) == first
    assert (tmp_path / "web.secret").stat().st_mode & 0o777 == 0o600
    assert load_secret(Settings(data_dir=tmp_path, web_secret="configured")) == b"configured"
    assert "QVL_WEB_SECRET" not in Settings(data_dir=tmp_path).as_env()
    assert Settings(web_secret="s3").as_env()["QVL_WEB_SECRET"] == "s3"  # a child gets the real value


def test_the_page_draws_with_the_annotated_pictures_palette():
    script = (ROOT / "bots/web/static/app.js").read_text()
    found = re.search(r"const PALETTE = (\[.*?\]);", script, re.S)
    assert found and [tuple(c) for c in json.loads(found[1])] == list(PALETTE)


def test_the_page_needs_nothing_from_the_internet():
    for name in ("index.html", "app.js", "app.css"):
        text = (ROOT / "bots/web/static" / name).read_text()
        assert not re.search(r"""(src|href)=["']?(https?:)?//""", text), name
        assert "@import" not in text and "cdn" not in text.lower(), name


def test_histories_differ_by_role_text_and_picture():
    one = [("user", [TextPart("hi")]), ("assistant", [TextPart("hello")])]
    assert history_digest(one) == history_digest([(r, list(p)) for r, p in one])
    assert history_digest(one) != history_digest([("user", [TextPart("hi")]), ("assistant", [TextPart("hello!")])])
    assert history_digest([("user", [b"picture one"])]) != history_digest([("user", [b"picture two"])])
    assert history_digest([("user", [TextPart("a")])]) != history_digest([("assistant", [TextPart("a")])])


@pytest.mark.parametrize(("host", "loopback"), [("127.0.0.1", True), ("::1", True), ("localhost", True),
                                                 ("127.0.0.2", True), ("0.0.0.0", False), ("::", False),
                                                 ("192.168.1.5", False), ("example.org", False)])
def test_loopback_addresses(host, loopback):
    assert is_loopback(host) is loopback


def test_the_login_link_names_an_address_a_browser_can_open():
    assert base_url(Settings(web_host="0.0.0.0", web_port=8000)) == "http://127.0.0.1:8000"
    assert base_url(Settings(web_host="::1", web_port=9000)) == "http://[::1]:9000"
