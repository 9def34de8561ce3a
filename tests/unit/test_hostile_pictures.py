"""Hostile pictures at the door (bots.pictures.inspect) and in the worker (decode_image).

Crafted bytes: an EPS (must never reach Ghostscript), a progressive-JPEG scan bomb, a
1×50,000 strip, a PNG whose header claims 60,000×60,000, PNGs with huge text chunks;
and the four accepted formats, which pass.
"""

from __future__ import annotations

import io
import re
import struct
import subprocess
import zlib
from types import SimpleNamespace

import pytest
from PIL import EpsImagePlugin, Image

from bots.pictures import inspect
from qvl.messages import MESSAGES, say
from qvl.settings import Settings
from worker.images import BadImage, Limits, decode_image, jpeg_scans

SETTINGS = SimpleNamespace(image_max_bytes=20 * 1024 * 1024, image_max_pixels=50_000_000,
                           image_max_aspect=200.0, image_max_scans=100)

EPS = (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 100 100\n%%EndComments\n"
       b"newpath 0 0 moveto 100 100 lineto stroke showpage\n%%EOF\n")


@pytest.fixture(autouse=True)
def no_ghostscript(monkeypatch):
    """Fail the test if anything tries to run Ghostscript (or any program)."""
    def forbidden(*args, **kwargs):
        raise AssertionError(f"a program was run: {args!r}")

    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", forbidden)
    monkeypatch.setattr(EpsImagePlugin, "has_ghostscript", forbidden)
    monkeypatch.setattr(subprocess, "Popen", forbidden)
    monkeypatch.setattr(subprocess, "run", forbidden)
    monkeypatch.setattr(subprocess, "check_call", forbidden)


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **options)
    return buf.getvalue()


def chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header says ``width``×``height``, with one tiny (bogus) IDAT."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + chunk(b"IEND", b""))


def png_with_text(kind: bytes, payload: bytes) -> bytes:
    """A real 16×16 PNG with a text chunk ``kind`` inserted before its IDAT."""
    data = encode(Image.new("RGB", (16, 16), "red"), "PNG")
    at = data.index(b"IDAT") - 4
    return data[:at] + chunk(kind, payload) + data[at:]


def scan_bomb(copies: int, size=(1024, 1024)) -> bytes:
    """A progressive JPEG (Pillow's own) with its last scan repeated ``copies`` more times:
    tiny on disk, each scan decoded over every block."""
    data = encode(Image.new("RGB", size, (120, 130, 140)), "JPEG", progressive=True, quality=90)
    last = data.rfind(b"\xff\xda")
    end = data.rfind(b"\xff\xd9")
    return data[:end] + data[last:end] * copies + data[end:]


def accepted() -> dict[str, bytes]:
    picture = Image.effect_noise((64, 48), 40).convert("RGB")
    return {
        "image/png": encode(picture, "PNG"),
        "image/jpeg": encode(picture, "JPEG"),
        "image/jpeg ": encode(picture, "JPEG", progressive=True),  # a normal progressive JPEG
        "image/gif": encode(picture, "GIF"),
        "image/webp": encode(picture, "WEBP"),
    }


def english(key: str, values: dict) -> str:
    return say(key, "en", **values)


# -- the door -----------------------------------------------------------------------------

def test_the_door_passes_png_jpeg_gif_webp_with_their_sizes():
    pictures = accepted()
    sniffed, problem, values = inspect(tuple(pictures.values()), SETTINGS)
    assert problem is None and values == {}
    assert sniffed == [(mime.strip(), 64, 48) for mime in pictures]


def test_the_door_works_with_real_settings():
    sniffed, problem, _ = inspect((accepted()["image/png"],), Settings())
    assert problem is None and sniffed == [("image/png", 64, 48)]


def test_the_door_refuses_eps_and_says_which_formats_it_accepts():
    sniffed, problem, values = inspect((accepted()["image/png"], EPS), SETTINGS)
    assert sniffed == [("image/png", 64, 48)]  # the pictures before the bad one
    assert problem == "picture_format"
    assert "PNG, JPEG, WebP, GIF" in english(problem, values)
    assert "PNG, JPEG, WebP, GIF" in say(problem, "zh", **values)


@pytest.mark.parametrize("data", [b"", b"hello, world", encode(Image.new("RGB", (8, 8)), "BMP"),
                                  encode(Image.new("RGB", (8, 8)), "TIFF"), b"%PDF-1.4\n"])
def test_the_door_refuses_other_formats(data):
    assert inspect((data,), SETTINGS)[1] == "picture_format"


def test_the_door_counts_jpeg_scans():
    bomb = scan_bomb(200)
    assert jpeg_scans(bomb) > 200
    assert len(bomb) < 100_000  # small on disk: the bytes limit alone would let it in
    sniffed, problem, values = inspect((bomb,), SETTINGS)
    assert problem == "picture_too_many_scans" and sniffed == []
    assert values == {"scans": jpeg_scans(bomb), "limit": 100}
    assert "too many progressive scans" in english(problem, values)
    assert str(values["scans"]) in say(problem, "zh", **values)


def test_the_door_refuses_a_strip_too_long_and_thin():
    strip = encode(Image.new("L", (1, 50_000), 128), "PNG")
    problem, values = inspect((strip,), SETTINGS)[1:]
    assert problem == "picture_aspect"
    assert values == {"width": 1, "height": 50_000, "ratio": "200"}
    assert "1×50000" in english(problem, values) and "200" in say(problem, "zh", **values)
    square_enough = encode(Image.new("L", (10, 2000), 128), "PNG")  # exactly 200: fine
    assert inspect((square_enough,), SETTINGS)[1] is None


def test_the_door_says_a_pixel_bomb_is_too_large_not_the_wrong_format():
    problem, values = inspect((png_claiming(60_000, 60_000),), SETTINGS)[1:]
    assert problem == "picture_too_big_pixels"
    assert values == {"width": 60_000, "height": 60_000, "mp": "50"}
    assert "too large" in english(problem, values)
    assert "PNG, JPEG" not in english(problem, values)


@pytest.mark.parametrize("kind", [b"tEXt", b"iTXt"])
def test_the_door_says_a_huge_text_chunk_is_too_large(kind):
    data = png_with_text(kind, b"Comment\0" + b"A" * (2 * 1024 * 1024))
    problem, values = inspect((data,), SETTINGS)[1:]
    assert problem == "picture_metadata_too_large"
    assert "too much embedded text" in english(problem, values)


def test_the_door_says_a_ztxt_that_inflates_to_64_mb_is_too_large():
    bomb = png_with_text(b"zTXt", b"Comment\0\0" + zlib.compress(b"A" * (64 * 1024 * 1024), 9))
    assert len(bomb) < 200_000
    assert inspect((bomb,), SETTINGS)[1] == "picture_metadata_too_large"


def test_the_door_refuses_over_the_byte_limit_first():
    limits = SimpleNamespace(**{**vars(SETTINGS), "image_max_bytes": 1_048_576})
    problem, values = inspect((b"\x89PNG\r\n\x1a\n" + b"\0" * 2_000_000,), limits)[1:]
    assert problem == "image_too_large" and "1 MB" in english(problem, values)


def test_the_door_calls_a_broken_header_damaged():
    data = accepted()["image/png"][:20]
    assert inspect((data,), SETTINGS)[1] == "picture_damaged"


# -- the worker ---------------------------------------------------------------------------

@pytest.mark.parametrize("mime", sorted(accepted()))
def test_the_worker_decodes_the_accepted_formats(mime):
    image, found = decode_image(accepted()[mime])
    assert image.mode == "RGB" and image.size == (64, 48) and found == mime.strip()


def test_the_worker_never_hands_eps_to_ghostscript():
    with pytest.raises(BadImage) as caught:
        decode_image(EPS)
    assert caught.value.message == say("picture_format", "en", formats="PNG, JPEG, WebP, GIF")
    assert "PNG, JPEG, WebP, GIF" in caught.value.text("zh")


def test_the_worker_refuses_a_scan_bomb_before_decoding():
    with pytest.raises(BadImage) as caught:
        decode_image(scan_bomb(200))
    assert caught.value.message == say("picture_too_many_scans", "en", scans=jpeg_scans(scan_bomb(200)),
                                       limit=100)


def test_the_worker_stops_a_slow_decode_at_its_time_budget(monkeypatch):
    """Under the scan budget, the clock still bounds the decoding: it is read after each scan."""
    import worker.images as images

    readings = []

    def clock() -> float:  # each reading of the clock is one more second
        readings.append(None)
        return float(len(readings))

    monkeypatch.setattr(images.time, "monotonic", clock)
    with pytest.raises(BadImage) as caught:
        decode_image(scan_bomb(90), Limits(decode_s=5))
    assert caught.value.message == say("picture_too_slow", "en", s="5")
    assert len(readings) < 60  # the header's reads, then about five scans: not ninety


def test_the_worker_time_budget_holds_for_real():
    import time

    started = time.monotonic()
    with pytest.raises(BadImage, match="took too long"):
        decode_image(scan_bomb(3000, size=(2048, 2048)), Limits(max_scans=10**6, decode_s=0.5))
    assert time.monotonic() - started < 5  # unbounded, this one takes half a minute


def test_the_worker_refuses_a_strip_too_long_and_thin():
    with pytest.raises(BadImage) as caught:
        decode_image(encode(Image.new("L", (1, 50_000), 128), "PNG"))
    assert caught.value.message == say("picture_aspect", "en", width=1, height=50_000, ratio="200")


@pytest.mark.parametrize("side", [8_000, 60_000])
def test_the_worker_says_a_pixel_bomb_is_too_large(side):
    with pytest.raises(BadImage, match="too large|too many pixels") as caught:
        decode_image(png_claiming(side, side))
    assert caught.value.message in (say("picture_unsafe", "en"),  # past Pillow's own bomb limit
                                    say("too_many_pixels", "en", width=side, height=side))


def test_the_worker_says_a_text_chunk_inflating_to_64_mb_is_too_large():
    bomb = png_with_text(b"zTXt", b"Comment\0\0" + zlib.compress(b"A" * (64 * 1024 * 1024), 9))
    with pytest.raises(BadImage) as caught:
        decode_image(bomb)
    assert caught.value.message == say("picture_metadata_too_large", "en", kb=1024)


def test_new_messages_have_both_languages_and_the_same_placeholders():
    fields = re.compile(r"\{(\w*)\}")
    for key in ("picture_format", "picture_too_big_pixels", "picture_aspect", "picture_too_many_scans",
                "picture_metadata_too_large", "picture_too_slow"):
        table = MESSAGES[key]
        assert sorted(fields.findall(table["en"])) == sorted(fields.findall(table["zh"])), key


def test_the_turn_task_has_a_hard_time_limit(tmp_path):
    from qvl.protocol import TASK_NAME
    from worker.app import create_app

    app = create_app(Settings(data_dir=tmp_path, turn_time_limit_s=120), "redis://127.0.0.1:1/0")
    task = app.tasks[TASK_NAME]
    assert task.time_limit == 120  # prefork: the stalled child is killed and replaced
    assert 0 < task.soft_time_limit < 120  # first: SoftTimeLimitExceeded fails the turn with a message


def test_the_pipeline_skips_bad_history_pictures_and_fails_on_this_turns():
    from worker.pipeline import _decode_all

    good, bad = SimpleNamespace(data=accepted()["image/png"]), SimpleNamespace(data=EPS)
    images = _decode_all({"good": good, "bad": bad, "gone": None}, current=("good",), limits=Limits())
    assert set(images) == {"good"}  # the refused picture from history is left out
    with pytest.raises(BadImage, match="not a picture"):
        _decode_all({"good": good, "bad": bad}, current=("bad",), limits=Limits())


def test_the_pipeline_fails_a_turn_out_of_time_while_decoding_with_a_short_message(monkeypatch):
    from celery.exceptions import SoftTimeLimitExceeded

    import worker.pipeline as pipeline

    def stalled(data, limits):
        raise SoftTimeLimitExceeded

    monkeypatch.setattr(pipeline, "decode_image", stalled)
    with pytest.raises(BadImage) as caught:
        pipeline._decode_all({"a": SimpleNamespace(data=b"")}, current=(), limits=Limits(decode_s=30))
    assert caught.value.message == say("picture_too_slow", "en", s="30")


def test_the_transformers_engine_refuses_a_strip_in_the_users_words():
    engine = pytest.importorskip("worker.engines.transformers_engine")
    from worker.engines.base import EngineError

    with pytest.raises(EngineError) as caught:
        engine._check_aspect(1, 50_000)
    assert caught.value.message == say("picture_aspect", "en", width=1, height=50_000, ratio=200)
    engine._check_aspect(10, 2000)


def test_a_stalled_turn_stops_claiming_its_job_after_the_time_limit(monkeypatch):
    """On the solo pool Celery cannot stop a stalled turn: its heartbeat stops instead, so
    another worker redoes the turn (and QVL_MAX_ATTEMPTS bounds how often)."""
    from types import SimpleNamespace

    import storage.repo
    from worker.pipeline import _Heartbeat

    beats = []
    monkeypatch.setattr(storage.repo, "heartbeat", lambda **kw: beats.append(kw["job_id"]))

    class Session:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def commit(self):
            pass

    rt = SimpleNamespace(settings=SimpleNamespace(heartbeat_s=0.01, turn_time_limit_s=0.1), sessions=Session)
    with _Heartbeat(rt, 7) as beat:
        beat._thread.join(timeout=5)  # ends by itself while the turn still "runs"
        assert not beat._thread.is_alive()
    assert 0 < len(beats) < 50 and set(beats) == {7}
