"""The door check of pictures: what the core refuses before a turn is queued.

From the bytes and headers alone, cheaply, and without handing the file to any
Pillow plugin but the four formats the README promises (PNG, JPEG, WebP, GIF): an
EPS, PDF or other file is refused here and never reaches Ghostscript or the worker.
Besides the size in bytes it bounds the work a picture can cause: pixels, aspect
ratio (Qwen2-VL refuses over 200), a JPEG's scans (a progressive scan bomb) and the
size of a PNG's text chunks. The worker checks again when it decodes for real
(``worker/images.py``).
"""

from __future__ import annotations

import io
import struct

from PIL import GifImagePlugin, Image, JpegImagePlugin, PngImagePlugin, WebPImagePlugin

FORMAT_NAMES = "PNG, JPEG, WebP, GIF"  # as the user reads them
METADATA_KB = 1024  # Pillow's own MAX_TEXT_CHUNK: a larger text chunk is refused
_TEXT_CHUNKS = (b"tEXt", b"zTXt", b"iTXt")

Sniffed = tuple[str, int, int]  # MIME type, width, height
Problem = tuple[str, dict]  # the message key and its format values


def inspect(images: tuple[bytes, ...], settings) -> tuple[list[Sniffed], str | None, dict]:
    """(MIME type, width, height) of each picture from its header, the message-table key
    of the first problem one has on its face (None if none has) and the values that key's
    message is formatted with (``say(key, language, **values)``).

    ``settings`` is a :class:`qvl.settings.Settings` (``image_max_bytes``,
    ``image_max_pixels``, ``image_max_aspect``, ``image_max_scans``).
    """
    sniffed: list[Sniffed] = []
    for data in images:
        found = check(data, settings)
        if isinstance(found[1], dict):  # a problem
            key, values = found  # type: ignore[misc]
            return sniffed, key, values
        sniffed.append(found)  # type: ignore[arg-type]
    return sniffed, None, {}


def check(data: bytes, settings) -> Sniffed | Problem:
    """One picture: its (MIME type, width, height), or (message key, values) if refused."""
    max_bytes = settings.image_max_bytes
    if len(data) > max_bytes:
        return "image_too_large", {"mb": max_bytes // 1_048_576}
    factory = _factory(data)
    if factory is None:
        return "picture_format", {"formats": FORMAT_NAMES}
    if factory is JpegImagePlugin.JpegImageFile:
        scans = data.count(b"\xff\xda")  # FF DA: start of scan (see worker.images.jpeg_scans)
        if scans > settings.image_max_scans:
            return "picture_too_many_scans", {"scans": scans, "limit": settings.image_max_scans}
    if factory is PngImagePlugin.PngImageFile and _png_text_too_large(data):
        return "picture_metadata_too_large", {"kb": METADATA_KB}
    try:
        # The plugin itself, not Image.open: no other format is tried, and a bomb is
        # measured here (Image.open would raise DecompressionBombError without the size).
        with factory(io.BytesIO(data)) as image:
            width, height = image.size
            mime = Image.MIME.get(image.format or "", "application/octet-stream")
    except ValueError as exc:
        if "too large" in str(exc).lower():  # a zTXt/iTXt that inflates past MAX_TEXT_CHUNK
            return "picture_metadata_too_large", {"kb": METADATA_KB}
        return "picture_damaged", {}
    except (OSError, SyntaxError, EOFError, IndexError, TypeError, struct.error):
        return "picture_damaged", {}
    if width <= 0 or height <= 0:
        return "picture_damaged", {}
    if width * height > settings.image_max_pixels:
        return "picture_too_big_pixels", {"width": width, "height": height,
                                          "mp": f"{settings.image_max_pixels / 1e6:g}"}
    if max(width, height) / min(width, height) > settings.image_max_aspect:
        return "picture_aspect", {"width": width, "height": height, "ratio": f"{settings.image_max_aspect:g}"}
    return mime, width, height


def _factory(data: bytes):
    """The Pillow image class of ``data``'s format, if it is one we accept (by magic bytes)."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return PngImagePlugin.PngImageFile
    if data.startswith(b"\xff\xd8\xff"):
        return JpegImagePlugin.JpegImageFile
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return GifImagePlugin.GifImageFile
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return WebPImagePlugin.WebPImageFile
    return None


def _png_text_too_large(data: bytes) -> bool:
    """Whether a text chunk of the PNG is over ``METADATA_KB``: chunk
    headers only, CRCs unchecked (the worker's decoder checks them)."""
    limit = METADATA_KB * 1024
    at, end = 8, len(data)
    while at + 8 <= end:
        length, kind = struct.unpack(">I4s", data[at:at + 8])
        if kind in _TEXT_CHUNKS and length > limit:
            return True
        if kind == b"IEND":
            break
        at += 12 + length
    return False
