"""Write boxes back as a family's markup (the inverse of :mod:`parse`)."""

from __future__ import annotations

import json

from worker.grounding.parse import JSON_FAMILIES, TAGS, RawBox


def render(boxes: list[RawBox] | tuple[RawBox, ...], family: str) -> str:
    """The markup ``family`` would write for ``boxes`` (model coordinates kept)."""
    if family in JSON_FAMILIES:
        items = []
        for b in boxes:
            item: dict = {"bbox_2d": [_num(v) for v in b.coords]}
            if b.label is not None:
                item["label"] = b.label
            items.append(item)
        return "```json\n" + json.dumps(items, ensure_ascii=False) + "\n```"
    tags = TAGS[family]
    parts = []
    for b in boxes:
        x1, y1, x2, y2 = (_num(v) for v in b.coords)
        ref = f"{tags.ref[0]}{b.label}{tags.ref[1]}" if b.label is not None else ""
        parts.append(f"{ref}{tags.box[0]}({x1},{y1}),({x2},{y2}){tags.box[1]}")
    return " ".join(parts)


def _num(value: float) -> int | float:
    return int(value) if float(value).is_integer() else value
