"""The context window: which stored turns and pictures the model sees."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from PIL import Image

from worker.prompt.sanitize import defuse
from worker.prompt.turns import ChatTurn


@dataclass(frozen=True)
class StoredTurn:
    """A message as the pipeline reads it from SQL: role, text, pictures by hash."""

    role: str
    text: str
    images: tuple[str, ...] = ()


@dataclass(frozen=True)
class Window:
    """The turns to send, and the pictures in them in order ("Picture 1" first)."""

    turns: list[ChatTurn]
    pictures: list[str]  # sha256 of each picture in the window, oldest first


def build_window(
    history: Sequence[StoredTurn],
    *,
    images: dict[str, Image.Image],
    system: str | None,
    max_images: int,
    token_budget: int,
    count_tokens: Callable[[str], int],
    image_tokens: Callable[[int, int], int],
) -> Window:
    """Bound ``history`` (oldest first, the current user turn last) to a window.

    Newest turns are kept: older turns go once the token budget is spent, older
    pictures once ``max_images`` are in. The current turn is always kept. All
    text is defused here, so no stored text can become a control token.
    """
    budget = token_budget - (count_tokens(defuse(system)) if system else 0)  # counted as sent
    kept: list[tuple[StoredTurn, tuple[str, ...]]] = []
    n_images = 0
    for i, turn in enumerate(reversed(history)):
        shown = []
        for sha in reversed(turn.images):
            if sha in images and n_images < max_images:
                shown.append(sha)
                n_images += 1
        shown.reverse()
        cost = count_tokens(defuse(turn.text)) + sum(image_tokens(*images[s].size) for s in shown) + 4
        if i > 0 and cost > budget:
            break
        budget -= cost
        kept.append((turn, tuple(shown)))
    kept.reverse()
    while len(kept) > 1 and kept[0][0].role != "user":  # a window starts with the user
        kept.pop(0)
    turns = [ChatTurn("system", defuse(system))] if system else []
    turns += [ChatTurn(t.role, defuse(t.text), tuple(images[s] for s in shown)) for t, shown in kept]
    pictures = [s for _, shown in kept for s in shown]
    return Window(turns, pictures)
