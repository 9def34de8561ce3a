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
        raise BadImage(
            f"That picture is too large ({len(data) // 1_048_576} MB; the limit is "
            f"{limits.max_bytes // 1_048_576} MB).",
            zh=f"图片太大（上限 {limits.max_bytes // 1_048_576} MB）。",
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            fmt = image.format or ""
            if image.width * image.height > limits.max_pixels:
                raise BadImage(
                    f"That picture has too many pixels ({image.width}×{image.height}).",
                    zh="图片像素过多。",
                )
            image.seek(0)
            image.load()
            image = ImageOps.exif_transpose(image)
            image = image.convert("RGB")
    except BadImage:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise BadImage("That picture is too large to open safely.", zh="图片过大，无法安全打开。") from exc
    except UnidentifiedImageError as exc:
        raise BadImage("That file is not a picture I can read.", zh="无法识别这个文件的图片格式。") from exc
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise BadImage("That picture seems to be damaged.", zh="图片似乎已损坏。") from exc
    return image, Image.MIME.get(fmt, "application/octet-stream")
