"""The turns a model is shown: what the pure prompt code hands the engines."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from PIL import Image


@dataclass(frozen=True)
class ChatTurn:
    """One turn of the context window, oldest first.

    ``text`` is already defused (no control tokens); ``images`` are decoded RGB
    pictures that belong to this turn, shown before its text.
    """

    role: Literal["system", "user", "assistant"]
    text: str
    images: tuple[Image.Image, ...] = field(default=())
