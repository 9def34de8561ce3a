"""Draw grounding boxes with their labels on a picture."""

from __future__ import annotations

from collections.abc import Iterable

from PIL import Image, ImageDraw

from worker.grounding.fonts import label_font
from worker.grounding.pixels import Box

# Tableau 10, as the model card's draw_bbox_on_latest_picture uses; picked in label order
# instead of at random so the same answer always looks the same.
PALETTE = (
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
)


def colours(boxes: Iterable[Box]) -> dict[str | None, tuple[int, int, int]]:
    """One colour per distinct label, in the order labels first appear."""
    out: dict[str | None, tuple[int, int, int]] = {}
    for box in boxes:
        if box.label not in out:
            out[box.label] = PALETTE[len(out) % len(PALETTE)]
    return out


def line_width(size: tuple[int, int]) -> int:
    """Box outline width: about 0.4 % of the shorter side, at least 2 pixels."""
    return max(2, round(min(size) / 250))


def draw_boxes(image: Image.Image, boxes: Iterable[Box]) -> Image.Image:
    """Return a copy of ``image`` (RGB) with ``boxes`` and their labels drawn."""
    boxes = list(boxes)
    out = image.convert("RGB") if image.mode != "RGB" else image.copy()
    if not boxes:
        return out
    draw = ImageDraw.Draw(out)
    width = line_width(out.size)
    font = label_font(max(12, round(min(out.size) / 30)))
    palette = colours(boxes)
    for box in boxes:
        x1, y1, x2, y2 = box.box
        colour = palette[box.label]
        # Pillow's rectangle includes its far edge: keep it inside the picture.
        draw.rectangle((x1, y1, min(x2, out.width) - 1, min(y2, out.height) - 1),
                       outline=colour, width=width)
    for box in boxes:  # labels after all outlines, so no outline crosses a label
        if box.label:
            _draw_label(draw, box, palette[box.label], font, out.size)
    return out


def _draw_label(draw, box: Box, colour, font, size: tuple[int, int]) -> None:
    x1, y1, _, _ = box.box
    left, top, right, bottom = draw.textbbox((0, 0), box.label, font=font)
    pad = max(2, (bottom - top) // 6)
    tw, th = right - left + 2 * pad, bottom - top + 2 * pad
    x = min(max(0, x1), max(0, size[0] - tw))
    y = y1 - th if y1 - th >= 0 else y1  # above the box, or just inside it at the top edge
    draw.rectangle((x, y, x + tw, y + th), fill=colour)
    draw.text((x + pad - left, y + pad - top), box.label, fill=(255, 255, 255), font=font)
