"""The context window: which stored turns and pictures the model sees."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from PIL import Image

from worker.prompt.sanitize import defuse
from worker.prompt.turns import ChatTurn

CUT_MARK = " […]"  # ends a text cut to fit the token budget


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
    pictures once ``max_images`` are in. The current turn is always kept, but never
    over the budget: when it alone does not fit, its pictures that do not fit go
    (oldest first) and its text is cut to what fits, the start kept and the cut
    marked with :data:`CUT_MARK`; so the window never holds more than
    ``token_budget`` tokens. All text is defused here, so no stored text can become a
    control token.
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
        if i == 0 and cost > budget:  # the current turn alone is over the budget: cut it to fit
            turn, shown = _fit(turn, shown, budget - 4, images=images, count_tokens=count_tokens,
                               image_tokens=image_tokens)
            n_images = len(shown)
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


def _fit(turn: StoredTurn, shown: list[str], budget: int, *, images: dict[str, Image.Image],
         count_tokens: Callable[[str], int], image_tokens: Callable[[int, int], int],
         ) -> tuple[StoredTurn, list[str]]:
    """``turn`` cut to ``budget`` tokens: the newest of its pictures that fit, then as much
    of the start of its text as fits in what is left, marked as cut (no text if not even
    the mark fits)."""
    kept: list[str] = []
    for sha in reversed(shown):
        cost = image_tokens(*images[sha].size)
        if cost <= budget:
            kept.insert(0, sha)
            budget -= cost
    text = turn.text
    if count_tokens(defuse(text)) > budget:
        text = _cut(text, budget, count_tokens)
    return replace(turn, text=text, images=tuple(kept)), kept


def _cut(text: str, budget: int, count_tokens: Callable[[str], int]) -> str:
    """The longest start of ``text`` that, with :data:`CUT_MARK`, counts at most ``budget``
    tokens once defused; "" when not even the mark fits. A binary search over prefixes:
    the first counts are of the longest ones, so the total counted is about twice the text."""
    def fits(n: int) -> bool:
        return count_tokens(defuse(text[:n] + CUT_MARK)) <= budget

    if budget <= 0 or not fits(0):
        return ""
    lo, hi = 0, len(text)  # text[:lo] fits; text[:hi] does not (the whole text is over budget)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid
    return text[:lo] + CUT_MARK
