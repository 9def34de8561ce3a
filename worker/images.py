"""Decode pictures from users safely: formats, size limits, bombs, corrupt files, work.

Only the formats the README promises are ever opened (PNG, JPEG, WebP, GIF): never
EPS (Ghostscript), PDF or any other of Pillow's plugins. The work is bounded, not only
the pixels: a JPEG's scans are counted before it is decoded, and the decoding itself
stops once it has taken ``Limits.decode_s`` (checked each time the decoder reads, and
for a JPEG after each scan): this holds on any pool, solo included.
"""

from __future__ import annotations

import io
import time
import warnings
from dataclasses import dataclass

from PIL import Image, ImageOps, UnidentifiedImageError

from qvl.errors import UserFacingError

FORMATS = ("PNG", "JPEG", "WEBP", "GIF")  # Pillow's names of the formats we accept
FORMAT_NAMES = "PNG, JPEG, WebP, GIF"  # as the user reads them
METADATA_KB = 1024  # Pillow's own MAX_TEXT_CHUNK: larger text chunks are refused


class BadImage(UserFacingError):
    """A picture that cannot be used; the message says why, briefly."""


@dataclass(frozen=True)
class Limits:
    max_bytes: int = 20 * 1024 * 1024
    max_pixels: int = 50_000_000
    max_aspect: float = 200.0
    max_scans: int = 100
    decode_s: float = 30.0


class _OutOfTime(Exception):
    """The decoding took longer than its budget."""


class _Deadline(io.BytesIO):
    """The picture's bytes; a read after ``deadline`` (monotonic) raises :class:`_OutOfTime`.

    With ``per_scan`` (a JPEG being decoded), a read stops at the next scan marker, so the
    decoder comes back for more, and the clock is read, after each scan it decodes."""

    deadline = float("inf")
    per_scan = False

    def __init__(self, data: bytes):
        super().__init__(data)
        self._data = data

    def read(self, size: int | None = -1, /) -> bytes:
        if time.monotonic() > self.deadline:
            raise _OutOfTime
        if self.per_scan:
            at = self.tell()
            following = self._data.find(b"\xff\xda", at + 1)
            if following != -1 and (size is None or size < 0 or following - at < size):
                size = following - at
        return super().read(size)


def jpeg_scans(data: bytes) -> int:
    """How many scans (SOS markers, FF DA) a JPEG has: a progressive JPEG's decoding work
    grows with them. In entropy-coded data FF is always followed by 00 or a marker, so
    counting the byte pair over-counts only markers inside metadata (an EXIF thumbnail)."""
    return data.count(b"\xff\xda")


def decode_image(data: bytes, limits: Limits = Limits()) -> tuple[Image.Image, str]:
    """Decode ``data`` into an upright RGB picture and its MIME type.

    Raises :class:`BadImage` for files over the size limit, files that are not
    PNG, JPEG, WebP or GIF, corrupt pictures, decompression bombs, pictures too long
    and thin for the model, JPEGs with too many scans and decoding that takes too long.
    GIFs give their first frame.
    """
    if len(data) > limits.max_bytes:
        raise BadImage.of("picture_too_large_mb", size=len(data) // 1_048_576, mb=limits.max_bytes // 1_048_576)
    if data[:3] == b"\xff\xd8\xff" and (scans := jpeg_scans(data)) > limits.max_scans:
        raise BadImage.of("picture_too_many_scans", scans=scans, limit=limits.max_scans)
    fp = _Deadline(data)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(fp, formats=FORMATS)
            fmt = image.format or ""
            width, height = image.size
            if width <= 0 or height <= 0:
                raise BadImage.of("picture_damaged")
            if width * height > limits.max_pixels:
                raise BadImage.of("too_many_pixels", width=width, height=height)
            if max(width, height) / min(width, height) > limits.max_aspect:
                raise BadImage.of("picture_aspect", width=width, height=height, ratio=f"{limits.max_aspect:g}")
            fp.per_scan = fmt in ("JPEG", "MPO")
            fp.deadline = time.monotonic() + limits.decode_s
            image.seek(0)
            image.load()
            fp.deadline = float("inf")
            image = ImageOps.exif_transpose(image)
            image = image.convert("RGB")
    except BadImage:
        raise
    except _OutOfTime as exc:
        raise BadImage.of("picture_too_slow", s=f"{limits.decode_s:g}") from exc
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise BadImage.of("picture_unsafe") from exc
    except UnidentifiedImageError as exc:
        raise BadImage.of("picture_format", formats=FORMAT_NAMES) from exc
    except ValueError as exc:
        if "too large" in str(exc).lower():  # PngImagePlugin: a text chunk over MAX_TEXT_CHUNK
            raise BadImage.of("picture_metadata_too_large", kb=METADATA_KB) from exc
        raise BadImage.of("picture_damaged") from exc
    except (OSError, SyntaxError, EOFError) as exc:
        raise BadImage.of("picture_damaged") from exc
    return image, Image.MIME.get(fmt, "application/octet-stream")
