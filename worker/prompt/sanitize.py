"""Keep user text plain: no string a user types may become a model control token.

Every Qwen-VL generation parses some markup inside text into special tokens:
ChatML (``<|im_start|>``), vision and grounding tokens (``<|vision_start|>``,
``<|box_start|>``), Qwen-VL's tags (``<img>``, ``<ref>``, ``<box>``, ``<quad>``) and added
tokens such as ``<think>`` and ``<tool_call>``. A zero-width space after the ``<``
breaks the match for every tokenizer while the text reads the same.
"""

from __future__ import annotations

import re

ZWSP = "\u200b"
_CONTROL = re.compile(
    r"<(?=\|[^<>|\s]{1,64}\|>)"  # <|im_start|>, <|box_start|>, <|extra_12|>, <|endoftext|> …
    r"|<(?=/?(?:img|ref|box|quad|imgpad|think|tool_call|tool_response)>)",
    re.IGNORECASE,
)


def defuse(text: str) -> str:
    """``text`` with every control-token spelling broken by a zero-width space."""
    return _CONTROL.sub("<" + ZWSP, text)


def undefuse(text: str) -> str:
    """Remove what :func:`defuse` added (for showing text back to people)."""
    return text.replace("<" + ZWSP, "<")
