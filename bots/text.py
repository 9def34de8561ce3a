"""Split a reply into messages a platform accepts, at the most natural boundaries."""

from __future__ import annotations

import re

_FENCE = re.compile(r"^\s*(```|~~~)")
# Zero-width split points: after a newline, after a sentence's end, after a space.
_BREAKS = (re.compile(r"(?<=\n)"), re.compile(r"(?<=[.!?;。！？；])"), re.compile(r"(?<=\s)"))


def split_message(text: str, limit: int = 2000) -> list[str]:
    """Chunks of at most ``limit`` characters, split at paragraphs, then lines, then
    sentences, then spaces; a code block is never cut without being closed and reopened."""
    if limit < 20:
        raise ValueError("limit too small")
    text = text.strip()
    if not text:
        return []
    chunks: list[str] = []
    current = ""
    for block in _blocks(text):
        is_code = bool(_FENCE.match(block))
        piece = "\n\n" + block if current else block
        if len(current) + len(piece) <= limit:
            current += piece
            continue
        if current:
            chunks.append(current)
            current = ""
        if len(block) <= limit:
            current = block
        else:
            parts = _split_code(block, limit) if is_code else _split_prose(block, limit)
            chunks.extend(parts[:-1])
            current = parts[-1]
    if current:
        chunks.append(current)
    return chunks


def _blocks(text: str) -> list[str]:
    """Paragraphs, with each fenced code block kept whole as one block."""
    blocks: list[str] = []
    lines: list[str] = []
    in_code = False
    for line in text.split("\n"):
        if _FENCE.match(line):
            if not in_code and lines and any(x.strip() for x in lines):
                blocks.extend(_paragraphs("\n".join(lines)))
                lines = []
            lines.append(line)
            if in_code:
                blocks.append("\n".join(lines))
                lines = []
            in_code = not in_code
            continue
        lines.append(line)
    if lines:
        rest = "\n".join(lines)
        if in_code:
            blocks.append(rest + "\n```")  # an unclosed fence (a truncated answer): close it
        else:
            blocks.extend(_paragraphs(rest))
    return [b for b in blocks if b.strip()]


def _paragraphs(text: str) -> list[str]:
    return [p.strip("\n") for p in re.split(r"\n\s*\n", text) if p.strip()]


def _split_code(block: str, limit: int) -> list[str]:
    lines = block.split("\n")
    opener, closer = lines[0], "```"
    body = lines[1:-1] if len(lines) > 1 and _FENCE.match(lines[-1]) else lines[1:]
    if len(opener) > limit // 4:  # an info string too long to repeat on every chunk: keep it as text
        fence = _FENCE.match(opener).group(1)
        rest = opener.strip()[len(fence):]
        opener, body = fence, [rest.lstrip("`~"), *body] if rest.strip("`~") else body
    room = limit - len(opener) - len(closer) - 2
    chunks, current = [], []
    for line in body:
        while len(line) > room:  # a single overlong line: cut it hard
            if current:
                chunks.append(current)
                current = []
            chunks.append([line[:room]])
            line = line[room:]
        if sum(len(x) + 1 for x in current) + len(line) > room:
            chunks.append(current)
            current = []
        current.append(line)
    if current or not chunks:
        chunks.append(current)
    return [f"{opener}\n" + "\n".join(c) + f"\n{closer}" for c in chunks]


def _split_prose(block: str, limit: int) -> list[str]:
    for pattern in _BREAKS:
        pieces = [p for p in pattern.split(block) if p]
        if len(pieces) > 1 and all(len(p) <= limit for p in pieces):
            return _pack(pieces, limit)
    return [block[i:i + limit] for i in range(0, len(block), limit)]


def _pack(pieces: list[str], limit: int) -> list[str]:
    out, current = [], ""
    for piece in pieces:
        if len(current) + len(piece) <= limit:
            current += piece
        else:
            out.append(current.strip())
            current = piece
    if current.strip():
        out.append(current.strip())
    return out
