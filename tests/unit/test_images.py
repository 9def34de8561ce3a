"""Decoding pictures from users: formats, GIF's first frame, EXIF rotation, limits."""

import io

import pytest
from PIL import Image

from worker.images import BadImage, Limits, decode_image


def encode(image: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kw)
    return buf.getvalue()


@pytest.mark.parametrize("fmt,mime", [("PNG", "image/png"), ("JPEG", "image/jpeg"), ("WEBP", "image/webp")])
def test_common_formats(fmt, mime):
    image, got = decode_image(encode(Image.new("RGB", (30, 20), (10, 200, 30)), fmt))
    assert got == mime and image.size == (30, 20) and image.mode == "RGB"


def test_gif_gives_its_first_frame():
    frames = [Image.new("RGB", (16, 16), c) for c in ((255, 0, 0), (0, 0, 255))]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    image, mime = decode_image(data)
    assert mime == "image/gif" and image.getpixel((8, 8))[0] > 200


def test_exif_orientation_is_applied():
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    image, _ = decode_image(encode(Image.new("RGB", (40, 20)), "JPEG", exif=exif))
    assert image.size == (20, 40)


def test_limits_and_damage():
    with pytest.raises(BadImage, match="too large"):
        decode_image(b"x" * 2000, Limits(max_bytes=1000))
    with pytest.raises(BadImage, match="too many pixels"):
        decode_image(encode(Image.new("RGB", (200, 200)), "PNG"), Limits(max_pixels=10_000))
    with pytest.raises(BadImage, match="not a picture"):
        decode_image(b"hello, world")
    with pytest.raises(BadImage, match="damaged"):
        decode_image(encode(Image.effect_noise((64, 64), 50).convert("RGB"), "PNG")[:400])
