"""The engine interface: what the worker's pipeline asks of a model backend."""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence

from qvl.errors import UserFacingError
from qvl.models import Family
from worker.prompt.turns import ChatTurn

__all__ = ["ChatTurn", "Engine", "EngineError", "one_line"]


class EngineError(UserFacingError):
    """The engine failed in a way the user should hear about: build it with
    ``EngineError.of(key, **values)`` from the message table, so the user reads it in
    their language; the cause (``raise … from exc``) goes to the operator's log."""


def one_line(exc: BaseException) -> str:
    """``Type: first line of the message``, at most 200 characters: an error fit for a reply."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[0]}"[:200] if lines else type(exc).__name__


class Engine(ABC):
    """A model backend. Implementations live one per file in ``worker/engines``."""

    name: str
    family: Family

    @abstractmethod
    def generate(
        self,
        turns: Sequence[ChatTurn],
        *,
        max_new_tokens: int,
        on_text: Callable[[str], None] | None = None,
    ) -> str:
        """Answer the last user turn; return the raw answer, grounding markup kept.

        ``on_text`` is called with the text generated so far, as it grows.
        Raises :class:`EngineError` for failures the user should be told about.
        """

    def coming(self) -> contextlib.AbstractContextManager:
        """Entered for the whole of a turn on its worker thread, before its context is read:
        a batching engine waits a moment for turns on their way. Others ignore it."""
        return contextlib.nullcontext()

    def count_tokens(self, text: str) -> int:
        """Roughly how many tokens ``text`` costs; engines with a tokenizer do better."""
        return max(1, len(text) // 3)

    def image_tokens(self, width: int, height: int) -> int:
        """Roughly how many tokens one picture costs in the prompt."""
        return 256

    def input_size(self, width: int, height: int) -> tuple[int, int]:
        """The size the model sees a ``width``×``height`` picture at (for absolute boxes)."""
        return width, height
