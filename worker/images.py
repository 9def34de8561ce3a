"""Decode pictures from users safely: size limits, bombs, corrupt files."""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

from PIL import Image, ImageOps, UnidentifiedImageError

from qvl.errors import UserFacingError


class BadImage(UserFacingError):
    """A picture that cannot be used; the message says why, briefly."""


@dataclass(frozen=True)
class Limits:
    max_bytes: int = 20 * 1024 * 1024
    max_pixels: int = 50_000_000


def decode_image(data: bytes, limits: Limits = Limits()) -> tuple[Image.Image, str]:
    """Decode ``data`` into an upright RGB picture and its MIME type.

    Raises :class:`BadImage` for files over the size limit, files that are not
    pictures, corrupt pictures and decompression bombs. GIFs give their first frame.
    """
    if len(data) > limits.max_bytes:
        raise BadImage.of("picture_too_large_mb", size=len(data) // 1_048_576, mb=limits.max_bytes // 1_048_576)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            fmt = image.format or ""
            if image.width * image.height > limits.max_pixels:
                raise BadImage.of("too_many_pixels", width=image.width, height=image.height)
            image.seek(0)
            image.load()
            image = ImageOps.exif_transpose(image)
            image = image.convert("RGB")
    except BadImage:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise BadImage.of("picture_unsafe") from exc
    except UnidentifiedImageError as exc:
        raise BadImage.of("picture_unreadable") from exc
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise BadImage.of("picture_damaged") from exc
    return image, Image.MIME.get(fmt, "application/octet-stream")
