"""Qwen-VL-Chat's own prompt format (the first Qwen-VL, remote code ``model.chat``).

Qwen-VL-Chat takes no message list: ``model.chat(tokenizer, query, history)`` gets the
new query and the earlier ``(query, response)`` string pairs, and its ``make_context``
writes ChatML around them. Pictures live *inside* the query text as
``<img>PATH</img>``; the tokenizer reads PATH (a local file here: the worker writes
it) and pads its UTF-8 bytes to 256 with ``<imgpad>``, so each picture costs 258
tokens and a longer path raises.

Picture labels follow Qwen-VL's **web demo** (``web_demo_mm.py``):
``Picture N: <img>PATH</img>\\n`` with a space after the colon and N numbered across
the whole conversation. The model card's ``tokenizer.from_list_format`` instead writes
``Picture N:<img>`` with no space and restarts N at 1 on every call; we do not use it,
because "Picture 2" must mean the same picture in every turn of a conversation.

Text is defused upstream already; it is defused again here (defence in depth),
because ``model.chat`` turns ``<img>``/``<ref>``/``<box>``/``<quad>`` typed by a user into
real tags, and ``<img>URL</img>`` makes the remote code fetch the URL. The only
``<img>`` elements in a prompt built here come from the worker's paths.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from worker.prompt.sanitize import defuse

DEFAULT_SYSTEM = "You are a helpful assistant."
DEFAULT_MAX_WINDOW_TOKENS = 6144  # Qwen-VL-Chat's generation_config max_window_size
IMAGE_TOKENS = 258  # <img> + path padded to 256 with <imgpad> + </img>
MAX_PATH_BYTES = 256

_IMG_ELEMENT = re.compile(r"<img>.*?</img>", re.DOTALL)
_FORBIDDEN_IN_PATH = re.compile(r"[<>\x00-\x1f\x7f]")


@dataclass(frozen=True)
class VLTurn:
    """One turn for Qwen-VL-Chat, oldest first: ``image_paths`` are local files."""

    role: str  # "user" | "assistant"
    text: str
    image_paths: tuple[str, ...] = ()


@dataclass(frozen=True)
class ChatMLPrompt:
    """The prompt ``model.chat`` would build, and what the window cost."""

    text: str
    dropped_pairs: int  # oldest history pairs left out to fit the window
    tokens: int  # count_tokens(text); may exceed the window if the query alone does


def default_count_tokens(text: str) -> int:
    """Rough token count: 258 per ``<img>…</img>`` element, a third of a token per other char."""
    pictures = len(_IMG_ELEMENT.findall(text))
    rest = _IMG_ELEMENT.sub("", text)
    return len(rest) // 3 + IMAGE_TOKENS * pictures


def _check_path(path: str) -> None:
    if not path:
        raise ValueError("Qwen-VL picture path is empty")
    if _FORBIDDEN_IN_PATH.search(path):
        raise ValueError(
            f"Qwen-VL picture path may not contain '<', '>' or control characters: {path!r}"
        )
    size = len(path.encode("utf-8"))
    if size > MAX_PATH_BYTES:
        raise ValueError(
            f"Qwen-VL picture path is {size} bytes in UTF-8; its tokenizer takes at most "
            f"{MAX_PATH_BYTES}: use a shorter path"
        )


def query_text(turn: VLTurn, first_picture: int) -> str:
    """The query string for one user turn: ``Picture N: <img>PATH</img>\\n`` per picture
    (N from ``first_picture`` on), then the defused text.

    Raises ``ValueError`` if a path is empty, over 256 UTF-8 bytes, or contains
    ``<``, ``>`` or a control character (a newline would end the element early for a reader).
    """
    parts = []
    for n, path in enumerate(turn.image_paths, start=first_picture):
        _check_path(path)
        parts.append(f"Picture {n}: <img>{path}</img>\n")
    parts.append(defuse(turn.text))
    return "".join(parts)


def _join(first: str, second: str) -> str:
    if not first or first.endswith("\n"):
        return first + second
    return first + "\n" + second


def history_pairs(turns: Sequence[VLTurn]) -> tuple[list[tuple[str, str]], str]:
    """Qwen-VL-Chat's ``history`` (``(query, response)`` pairs) and the final query.

    Pictures are numbered 1, 2, … across the whole conversation. Consecutive user
    turns are merged into one query (and consecutive assistant turns into one
    response), joined by a newline. Assistant turns before the first user turn have
    no query to pair with (the window cut it off) and are left out. All text is defused.

    Raises ``ValueError`` if the last turn is not a user turn, a role is not
    ``user``/``assistant``, an assistant turn carries pictures, or a path is invalid.
    """
    if not turns or turns[-1].role != "user":
        raise ValueError("Qwen-VL history must end with a user turn")
    pairs: list[tuple[str, str]] = []
    query: str | None = None  # the user text waiting for its reply
    reply: str | None = None  # the reply being gathered for ``query``
    picture = 1
    for turn in turns:
        if turn.role == "user":
            if reply is not None:
                pairs.append((query or "", reply))
                query, reply = None, None
            text = query_text(turn, picture)
            picture += len(turn.image_paths)
            query = text if query is None else _join(query, text)
        elif turn.role == "assistant":
            if turn.image_paths:
                raise ValueError("Qwen-VL assistant turns cannot carry pictures")
            if query is None:
                continue
            text = defuse(turn.text)
            reply = text if reply is None else _join(reply, text)
        else:
            raise ValueError(f"Qwen-VL turns must be 'user' or 'assistant', not {turn.role!r}")
    assert query is not None and reply is None  # the last turn is a user turn
    return pairs, query


def _render(system: str, history: Sequence[tuple[str, str]], query: str) -> str:
    parts = [f"<|im_start|>system\n{system}<|im_end|>\n"]
    for q, r in history:
        parts.append(f"<|im_start|>user\n{q}<|im_end|>\n<|im_start|>assistant\n{r}<|im_end|>\n")
    parts.append(f"<|im_start|>user\n{query}<|im_end|>\n<|im_start|>assistant\n")
    return "".join(parts)


def chatml_prompt(
    history: Sequence[tuple[str, str]],
    query: str,
    *,
    system: str = DEFAULT_SYSTEM,
    max_window_tokens: int = DEFAULT_MAX_WINDOW_TOKENS,
    count_tokens: Callable[[str], int] = default_count_tokens,
) -> ChatMLPrompt:
    """The exact ChatML text Qwen-VL-Chat's ``make_context`` builds, as a :class:`ChatMLPrompt`.

    ``history`` and ``query`` come from :func:`history_pairs` (already defused; their
    ``<img>`` elements are kept). The system text is defused. The oldest pairs are
    dropped while ``count_tokens(prompt) > max_window_tokens``; the final query is
    never dropped, so ``tokens`` may still exceed the window when it alone is too big.
    Raises nothing.
    """
    system = defuse(system)
    dropped = 0
    while True:
        text = _render(system, history[dropped:], query)
        tokens = count_tokens(text)
        if tokens <= max_window_tokens or dropped == len(history):
            return ChatMLPrompt(text=text, dropped_pairs=dropped, tokens=tokens)
        dropped += 1
