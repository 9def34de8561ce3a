"""Grounding: find the boxes in a model's answer, map them to pixels, draw them."""

from __future__ import annotations

from dataclasses import dataclass

from worker.grounding.parse import FAMILIES, Parsed, RawBox, clean_label, parse
from worker.grounding.pixels import Box, smart_resize, to_pixels

__all__ = [
    "FAMILIES",
    "Box",
    "Grounding",
    "Parsed",
    "RawBox",
    "clean_label",
    "ground",
    "parse",
    "smart_resize",
    "to_pixels",
]


@dataclass(frozen=True)
class Grounding:
    """The cleaned text a user reads, the boxes in pixels, and what was skipped and why."""

    text: str
    boxes: tuple[Box, ...]
    skipped: tuple[str, ...]

    def as_json(self) -> dict:
        out: dict = {"text": self.text, "boxes": [b.as_json() for b in self.boxes]}
        if self.skipped:
            out["skipped"] = list(self.skipped)
        return out


def ground(
    text: str,
    family: str,
    *,
    size: tuple[int, int],
    input_size: tuple[int, int] | None = None,
) -> Grounding:
    """Parse ``text`` and map its boxes onto a picture of ``size`` (width, height)."""
    parsed = parse(text, family)
    boxes, skipped = to_pixels(parsed, family, size=size, input_size=input_size)
    return Grounding(parsed.text, tuple(boxes), parsed.skipped + tuple(skipped))
