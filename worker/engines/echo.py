"""An engine without a model: answers at once with what it was given.

For smoke tests, the queue benchmark (everything but the model's own time) and
operators checking the plumbing. Asked to box or frame something, it answers
with one box around the middle of the latest picture in the family's format.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

from worker.engines.base import ChatTurn, Engine
from worker.grounding.parse import RawBox
from worker.grounding.render import render

BOX_WORDS = ("box", "frame", "框", "detect", "where", "locate")
# "box the dog", "where is the red car?", "框出狗": what follows the box word is the label
_ASKED = re.compile(r"(?:box|frame|detect|locate|where(?:'s| is| are)?|框出|框选|框)\s*(?:the |a |an )?([^?.!,，。？！\n]+)",
                    re.IGNORECASE)


class EchoEngine(Engine):
    name = "echo"

    def __init__(self, family: str = "qwen2-vl"):
        self.family = family

    def generate(self, turns: Sequence[ChatTurn], *, max_new_tokens: int,
                 on_text: Callable[[str], None] | None = None) -> str:
        last = turns[-1]
        pictures = sum(len(t.images) for t in turns)
        talk = sum(1 for t in turns if t.role != "system")
        # Echoes the text exactly as a model would receive it (defused), to make that visible.
        answer = (f"You said: “{last.text}”. I see {pictures} picture(s) "
                  f"in {talk} turn(s).")
        if pictures and any(w in last.text.lower() for w in BOX_WORDS):
            latest = next(img for t in reversed(turns) for img in reversed(t.images))
            answer += " " + render([RawBox(asked_for(last.text), self._middle(*latest.size))], self.family)
        if on_text:
            on_text(answer)
        return answer

    def _middle(self, width: int, height: int) -> tuple[float, float, float, float]:
        if self.family == "qwen2.5-vl":
            w, h = self.input_size(width, height)
            return (w // 4, h // 4, 3 * w // 4, 3 * h // 4)
        return (250, 250, 750, 750)

    def input_size(self, width: int, height: int) -> tuple[int, int]:
        from worker.grounding import smart_resize

        return smart_resize(width, height)


def asked_for(text: str) -> str:
    """What the question asks to box ("box the dog" → "dog"), at most 40 characters."""
    match = _ASKED.search(text)
    label = match[1].strip() if match else ""
    return label[:40] or "object"
