"""Map raw model coordinates to pixels of the original picture."""

from __future__ import annotations

import math

from qvl.protocol import Box
from worker.grounding.parse import Parsed, RawBox

# Qwen2.5-VL's published processor (preprocessor_config.json of the Instruct checkpoints):
# 14-pixel patches merged 2×2, between 56×56 and 12,845,056 pixels.
QWEN25_FACTOR = 28
QWEN25_MIN_PIXELS = 56 * 56
QWEN25_MAX_PIXELS = 12_845_056


def smart_resize(
    width: int,
    height: int,
    *,
    factor: int = QWEN25_FACTOR,
    min_pixels: int = QWEN25_MIN_PIXELS,
    max_pixels: int = QWEN25_MAX_PIXELS,
) -> tuple[int, int]:
    """The (width, height) a Qwen2/2.5-VL processor resizes a picture to.

    The same rule as ``qwen_vl_utils.smart_resize`` and transformers' Qwen2-VL
    image processor: both sides multiples of ``factor``, area within bounds,
    aspect ratio kept as well as that allows.
    """
    width, height = max(1, width), max(1, height)
    h_bar = max(factor, round(height / factor) * factor)
    w_bar = max(factor, round(width / factor) * factor)
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return w_bar, h_bar


def to_pixels(
    parsed: Parsed,
    family: str,
    *,
    size: tuple[int, int],
    input_size: tuple[int, int] | None = None,
) -> tuple[list[Box], list[str]]:
    """Map ``parsed`` boxes to pixels of a ``size`` picture; return (boxes, skipped).

    Boxes are clamped to the picture and their corners ordered; a box that is
    empty after clamping is skipped with a reason. ``input_size`` is the size
    the model saw (Qwen2.5-VL's absolute coordinates); by default it follows
    :func:`smart_resize`.
    """
    width, height = size
    if family == "qwen2.5-vl":
        in_w, in_h = input_size or smart_resize(width, height)
        sx, sy = width / max(1, in_w), height / max(1, in_h)
    else:
        sx, sy = width / 1000, height / 1000
    boxes: list[Box] = []
    skipped: list[str] = []
    for raw in parsed.boxes:
        box = _scale(raw, sx, sy, width, height)
        if box is None:
            skipped.append(f"{raw.label!r} {list(raw.coords)}: empty or outside the picture")
        else:
            boxes.append(box)
    return boxes, skipped


def _scale(raw: RawBox, sx: float, sy: float, width: int, height: int) -> Box | None:
    x1, y1, x2, y2 = raw.coords
    if not all(math.isfinite(v * s) for v, s in ((x1, sx), (y1, sy), (x2, sx), (y2, sy))):
        return None
    # int() like the model card's draw_bbox_on_latest_picture, after clamping.
    xa, xb = sorted(_clamp(int(x * sx), width) for x in (x1, x2))
    ya, yb = sorted(_clamp(int(y * sy), height) for y in (y1, y2))
    if xa >= xb or ya >= yb:
        return None
    return Box(raw.label, (xa, ya, xb, yb), raw.picture)


def _clamp(value: int, limit: int) -> int:
    return min(max(value, 0), limit)
