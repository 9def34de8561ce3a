"""The models qvl knows: which engine runs each, which box format it writes, what it needs.

``QVL_MODEL`` is the one setting a person changes; engine and family follow from it
(the catalogue, a local directory's ``config.json``, or the name), unless overridden.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from qvl.settings import Settings


class Family(StrEnum):
    """A Qwen-VL generation: decides the prompt and the box format."""

    QWEN_VL = "qwen-vl"  # <ref>…</ref><box>(x1,y1),(x2,y2)</box>, 0-1000
    QWEN2_VL = "qwen2-vl"  # the same with <|box_start|> tokens, 0-1000
    QWEN25_VL = "qwen2.5-vl"  # JSON bbox_2d in pixels of the resized picture
    QWEN3_VL = "qwen3-vl"  # JSON bbox_2d, 0-1000


class EngineKind(StrEnum):
    """The built-in engines (an operator's own is ``package.module:Class``)."""

    AUTO = "auto"
    TRANSFORMERS = "transformers"
    QWEN_VL = "qwen-vl"
    OPENAI = "openai"
    ECHO = "echo"


@dataclass(frozen=True)
class ModelInfo:
    id: str
    engine: EngineKind
    family: Family
    memory: str  # what it takes to serve, as published or estimated (bf16 weights + activations)
    source: str


_HUBS = "Hugging Face, or modelscope:"
_PINNED = "Hugging Face or modelscope:, at the revision QVL_QWEN_VL_TRUSTED pins"
CATALOGUE: tuple[ModelInfo, ...] = (
    ModelInfo("Qwen/Qwen3-VL-2B-Instruct", EngineKind("transformers"), Family("qwen3-vl"), "~6 GB GPU (bf16); runs on CPU", _HUBS),
    ModelInfo("Qwen/Qwen3-VL-4B-Instruct", EngineKind("transformers"), Family("qwen3-vl"), "~10 GB GPU (bf16)", _HUBS),
    ModelInfo("Qwen/Qwen3-VL-8B-Instruct", EngineKind("transformers"), Family("qwen3-vl"), "~18 GB GPU (bf16)", _HUBS),
    ModelInfo("Qwen/Qwen2.5-VL-3B-Instruct", EngineKind("transformers"), Family("qwen2.5-vl"), "~8 GB GPU (bf16)", _HUBS),
    ModelInfo("Qwen/Qwen2.5-VL-7B-Instruct", EngineKind("transformers"), Family("qwen2.5-vl"), "~17 GB GPU (bf16)", _HUBS),
    ModelInfo("Qwen/Qwen2.5-VL-72B-Instruct", EngineKind("transformers"), Family("qwen2.5-vl"), "~150 GB GPU (bf16)", _HUBS),
    ModelInfo("Qwen/Qwen2-VL-2B-Instruct", EngineKind("transformers"), Family("qwen2-vl"), "~5 GB GPU (bf16)", _HUBS),
    ModelInfo("Qwen/Qwen2-VL-7B-Instruct", EngineKind("transformers"), Family("qwen2-vl"), "~17 GB GPU (bf16)", _HUBS),
    ModelInfo("Qwen/Qwen-VL-Chat", EngineKind("qwen-vl"), Family("qwen-vl"), "22.6 GB GPU (BF16, model card)", _PINNED),
    ModelInfo("Qwen/Qwen-VL-Chat-Int4", EngineKind("qwen-vl"), Family("qwen-vl"), "11.8 GB GPU (Int4, model card)", _PINNED),
    ModelInfo("qwen-vl-plus", EngineKind("openai"), Family("qwen-vl"), "none here (DashScope API)", "DashScope compatible mode"),
    ModelInfo("qwen-vl-max", EngineKind("openai"), Family("qwen-vl"), "none here (DashScope API)", "DashScope compatible mode"),
)

_MODEL_TYPES = {"qwen2_vl": Family.QWEN2_VL, "qwen2_5_vl": Family.QWEN25_VL, "qwen3_vl": Family.QWEN3_VL}
_NAMES = ((r"qwen3[-_.]?vl", Family.QWEN3_VL), (r"qwen2\.5[-_]?vl", Family.QWEN25_VL),
          (r"qwen2[-_]?vl", Family.QWEN2_VL), (r"qwen[-_]?vl", Family.QWEN_VL))


def known(model: str) -> ModelInfo | None:
    bare = model.split(":", 1)[-1].split("://", 1)[-1].lower()
    return next((m for m in CATALOGUE if m.id.lower() == bare), None)


def infer(model: str) -> tuple[EngineKind | None, Family | None]:
    """(engine, family) for a model id or local directory; None where it cannot tell."""
    info = known(model)
    if info:
        return info.engine, info.family
    config = Path(model).expanduser() / "config.json"
    if config.is_file():
        try:
            data = json.loads(config.read_text())
        except (OSError, ValueError):
            data = {}
        if data.get("model_type") in _MODEL_TYPES:
            return EngineKind.TRANSFORMERS, _MODEL_TYPES[data["model_type"]]
        if data.get("model_type") == "qwen" and "visual" in data:
            return EngineKind.QWEN_VL, Family.QWEN_VL
    for pattern, family in _NAMES:
        if re.search(pattern, model, re.IGNORECASE):
            return (EngineKind.QWEN_VL if family == Family.QWEN_VL else EngineKind.TRANSFORMERS), family
    return None, None


def engine_and_family(settings: Settings) -> tuple[str, Family | None]:
    """The engine and box format in force: the settings', else inferred from the model.

    The engine is an :class:`EngineKind` value or an operator's ``module:Class``.
    """
    engine, family = infer(settings.model)
    chosen: str = engine or EngineKind.TRANSFORMERS
    if settings.engine != EngineKind.AUTO:
        chosen = settings.engine
    return chosen, settings.family or family


def table() -> str:
    """The catalogue as a text table for ``qvl models``."""
    rows = [("model", "engine", "family", "memory", "weights from")]
    rows += [(m.id, m.engine, m.family, m.memory, m.source) for m in CATALOGUE]
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)
