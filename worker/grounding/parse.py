"""Parse grounding boxes out of a Qwen-VL model's answer, for every generation.

Pure functions: text in, values out. Nothing here raises on any string; what
cannot be a box is reported in ``skipped`` with a reason.

The four formats:

- ``qwen-vl``: ``<ref>label</ref><box>(x1,y1),(x2,y2)</box>`` (also ``<quad>``), 0–1000;
- ``qwen2-vl``: the same shape with ``<|object_ref_start|>``…``<|box_start|>`` tokens, 0–1000;
- ``qwen2.5-vl``: JSON ``{"bbox_2d": [x1, y1, x2, y2], "label": …}`` in pixels of the
  processor-resized image;
- ``qwen3-vl``: the same JSON, 0–1000.
"""

from __future__ import annotations

import json
import re
import unicodedata
from dataclasses import dataclass

from qvl.models import Family

FAMILIES = tuple(Family)


@dataclass(frozen=True)
class Tags:
    ref: tuple[str, str]
    box: tuple[str, str]
    quad: tuple[str, str]


TAGS = {
    "qwen-vl": Tags(("<ref>", "</ref>"), ("<box>", "</box>"), ("<quad>", "</quad>")),
    "qwen2-vl": Tags(
        ("<|object_ref_start|>", "<|object_ref_end|>"),
        ("<|box_start|>", "<|box_end|>"),
        ("<|quad_start|>", "<|quad_end|>"),
    ),
}
JSON_FAMILIES = (Family.QWEN25_VL, Family.QWEN3_VL)

_NUM = r"-?\d+(?:\.\d+)?"
_POINT = re.compile(rf"\(\s*({_NUM})\s*,\s*({_NUM})\s*\)")
# "Picture 2", "Image 2", "图2", "图片2", "第2张" — how an answer names one of several pictures.
_PICTURE = re.compile(r"(?:Picture|Image|picture|image|图片|图像|图)\s*(\d{1,2})|第\s*(\d{1,2})\s*张")
_LABEL_QUOTES = "\"'“”‘’「」『』 \t\n"


@dataclass(frozen=True)
class RawBox:
    """A box as the model wrote it: model coordinates, not yet mapped to pixels."""

    label: str | None
    coords: tuple[float, float, float, float]  # x1, y1, x2, y2 as written (quads: their bounds)
    picture: int | None = None  # "Picture N" the answer named before this box, 1-based


@dataclass(frozen=True)
class Parsed:
    """What :func:`parse` found: the cleaned text, the raw boxes in order, what was skipped."""

    text: str
    boxes: tuple[RawBox, ...] = ()
    skipped: tuple[str, ...] = ()
    markup: bool = False  # the answer held grounding markup at all


def parse(text: str, family: str) -> Parsed:
    """Find the boxes in ``text`` written in ``family``'s format; never raises."""
    if not isinstance(text, str):
        return Parsed(text="", skipped=("answer is not text",))
    if family in JSON_FAMILIES:
        return _parse_json(text)
    return _parse_tags(text, TAGS.get(family, TAGS["qwen-vl"]))


def clean_label(label: str | None) -> str | None:
    """A label as it should be drawn: quotes and surrounding space stripped; None if empty."""
    if label is None:
        return None
    label = label.strip(_LABEL_QUOTES)
    return label or None


# --- tag formats (Qwen-VL, Qwen2-VL) -------------------------------------------------


def _wide(char: str) -> bool:
    """Whether ``char`` is written in a script without spaces between words (CJK)."""
    return unicodedata.east_asian_width(char) in ("W", "F")


def _parse_tags(text: str, tags: Tags) -> Parsed:
    opens = {tags.ref[0]: "ref", tags.box[0]: "box", tags.quad[0]: "quad"}
    closes = {"ref": tags.ref[1], "box": tags.box[1], "quad": tags.quad[1]}
    all_tags = list(opens) + list(closes.values())
    token = re.compile("|".join(re.escape(t) for t in sorted(all_tags, key=len, reverse=True)))

    out: list[str] = []
    boxes: list[RawBox] = []
    skipped: list[str] = []
    label: str | None = None  # the label boxes take: the last <ref>, until other text follows
    unboxed = False  # a <ref> still waiting for its first box
    markup = False
    pos = 0
    for match in token.finditer(text):
        if match.start() < pos:
            continue
        markup = True
        between = text[pos : match.start()]
        out.append(between)
        if between.strip():
            label, unboxed = _end_ref(label, unboxed, skipped), False
        pos = match.end()
        kind = opens.get(match.group())
        if kind is None:  # a stray closing tag: drop it
            continue
        end = text.find(closes[kind], pos)
        body = text[pos:] if end < 0 else text[pos:end]
        pos = len(text) if end < 0 else end + len(closes[kind])
        if kind == "ref":
            _end_ref(label, unboxed, skipped)
            before, after = "".join(out)[-1:], body[:1]
            if before.strip() and after.strip() and not (_wide(before) or _wide(after)):
                out.append(" ")  # "<ref>a</ref><box>…</box><ref>b</ref>" reads "a b", not "ab";
                # Chinese and Japanese are written without spaces, so none next to them
            out.append(body if end >= 0 else _strip_partial_tag(body, all_tags))
            label, unboxed = clean_label(body), True
            continue
        coords, reason = _coords(body, kind, truncated=end < 0)
        if coords is None:
            skipped.append(f"{kind} {body[:40]!r}: {reason}")
            unboxed = False
            continue
        boxes.append(RawBox(label, coords, _last_picture("".join(out))))
        unboxed = False
    out.append(_strip_partial_tag(text[pos:], all_tags))
    _end_ref(label, unboxed, skipped)
    cleaned = _tidy("".join(out))
    if markup and not boxes and not skipped:
        skipped.append("markup without any box")
    return Parsed(cleaned, tuple(boxes), tuple(skipped), markup)


def _end_ref(label: str | None, unboxed: bool, skipped: list[str]) -> None:
    if unboxed:
        skipped.append(f"ref {label!r} has no box")
    return None


def _coords(body: str, kind: str, *, truncated: bool) -> tuple[tuple[float, ...] | None, str]:
    points = [(float(x), float(y)) for x, y in _POINT.findall(body)]
    wanted = 2 if kind == "box" else 4
    if truncated and len(points) < wanted:
        return None, "truncated"
    if len(points) < wanted:
        return None, f"needs {wanted} points, found {len(points)}"
    xs = [p[0] for p in points[:wanted]]
    ys = [p[1] for p in points[:wanted]]
    return (min(xs), min(ys), max(xs), max(ys)), ""


def _last_picture(text: str) -> int | None:
    found = None
    for match in _PICTURE.finditer(text):
        found = int(match.group(1) or match.group(2))
    return found if found else None


def _strip_partial_tag(tail: str, tags: list[str]) -> str:
    """Drop a tag cut off at the end of a stream (``…<|box_st``, ``…<re``)."""
    cut = tail.rfind("<")
    if cut >= 0 and any(t.startswith(tail[cut:]) for t in tags):
        return tail[:cut]
    return tail


def _tidy(text: str) -> str:
    text = re.sub(r"[ \t]+([,.;:!?，。；：！？])", r"\1", text)
    text = re.sub(r"[ \t]{2,}", " ", text)
    return text.strip()


# --- JSON formats (Qwen2.5-VL, Qwen3-VL) ---------------------------------------------

_FENCE = re.compile(r"```(?:json|JSON)?\s*\n?(.*?)(?:```|$)", re.S)


def _parse_json(text: str) -> Parsed:
    boxes: list[RawBox] = []
    skipped: list[str] = []
    spans: list[tuple[int, int, list[str]]] = []  # (start, end, labels) of each JSON block
    decoder = json.JSONDecoder()
    markup = False
    i = 0
    while i < len(text):
        if text[i] not in "[{":
            i += 1
            continue
        try:
            value, end = decoder.raw_decode(text, i)
        except (ValueError, RecursionError):
            i += 1
            continue
        items = _json_items(value)
        if not items:
            i = end
            continue
        markup = True
        labels: list[str] = []
        picture = _last_picture(text[:i])
        for item in items:
            label = _item_label(item)
            coords, reason = _json_coords(item)
            if coords is None:
                skipped.append(f"{json.dumps(item, ensure_ascii=False)[:60]}: {reason}")
                continue
            boxes.append(RawBox(label, coords, picture))
            if label and label not in labels:
                labels.append(label)
        spans.append((i, end, labels))
        i = end
    tail_start = spans[-1][1] if spans else 0
    broken = text.find("bbox_2d", tail_start)
    if broken >= 0:
        markup = True
        skipped.append("bbox_2d JSON that could not be read (truncated?)")
        # Drop the unreadable block from what the user reads: from its fence or bracket on.
        block = max(text.rfind("```", tail_start, broken), text.rfind("[", tail_start, broken))
        block = block if block >= 0 else text.rfind("{", tail_start, broken)
        spans.append((max(block, tail_start), len(text), []))
    cleaned = _clean_json_text(text, spans)
    if markup and not boxes and not skipped:
        skipped.append("markup without any box")
    return Parsed(cleaned, tuple(boxes), tuple(skipped), markup)


def _json_items(value: object) -> list[dict]:
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list):
        return []
    items = [v for v in value if isinstance(v, dict) and ("bbox_2d" in v or "bbox" in v)]
    return items


def _item_label(item: dict) -> str | None:
    for key in ("label", "text_content", "name", "category"):
        if isinstance(item.get(key), str):
            return clean_label(item[key])
    return None


def _json_coords(item: dict) -> tuple[tuple[float, ...] | None, str]:
    raw = item.get("bbox_2d", item.get("bbox"))
    if not isinstance(raw, list) or len(raw) != 4:
        return None, "bbox_2d is not four numbers"
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in raw):
        return None, "bbox_2d is not four numbers"
    if not all(abs(v) < 1e9 for v in raw):  # also rejects inf and nan
        return None, "bbox_2d out of range"
    x1, y1, x2, y2 = (float(v) for v in raw)
    return (min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2)), ""


def _clean_json_text(text: str, spans: list[tuple[int, int, list[str]]]) -> str:
    """Replace each JSON block (and its code fence) by its labels, in reading order."""
    out: list[str] = []
    pos = 0
    for start, end, labels in spans:
        before = text[pos:start]
        fence = before.rfind("```")
        if fence >= 0 and before[fence + 3 :].strip().lower() not in ("", "json"):
            fence = -1
        out.append(before[:fence] if fence >= 0 else before)
        out.append(", ".join(labels))
        pos = end
        after = text[pos:]
        stripped = after.lstrip()
        if stripped.startswith("```"):
            pos += len(after) - len(stripped) + 3
    out.append(text[pos:])
    return _tidy("".join(out))
