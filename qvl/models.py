"""The models qvl knows: which engine runs each, which box format it writes, what it needs.

``QVL_MODEL`` is the one setting a person changes; engine and family follow from it
(the catalogue, a local directory's ``config.json``, or the name), unless overridden.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ModelInfo:
    id: str
    engine: str  # transformers | qwen-vl | openai
    family: str  # qwen-vl | qwen2-vl | qwen2.5-vl | qwen3-vl
    memory: str  # what it takes to serve, as published or estimated (bf16 weights + activations)
    source: str


_HUBS = "Hugging Face, or modelscope:"
_PINNED = "Hugging Face or modelscope:, at the revision QVL_QWEN_VL_TRUSTED pins"
CATALOGUE: tuple[ModelInfo, ...] = (
    ModelInfo("Qwen/Qwen3-VL-2B-Instruct", "transformers", "qwen3-vl", "~6 GB GPU (bf16); runs on CPU", _HUBS),
    ModelInfo("Qwen/Qwen3-VL-4B-Instruct", "transformers", "qwen3-vl", "~10 GB GPU (bf16)", _HUBS),
    ModelInfo("Qwen/Qwen3-VL-8B-Instruct", "transformers", "qwen3-vl", "~18 GB GPU (bf16)", _HUBS),
    ModelInfo("Qwen/Qwen2.5-VL-3B-Instruct", "transformers", "qwen2.5-vl", "~8 GB GPU (bf16)", _HUBS),
    ModelInfo("Qwen/Qwen2.5-VL-7B-Instruct", "transformers", "qwen2.5-vl", "~17 GB GPU (bf16)", _HUBS),
    ModelInfo("Qwen/Qwen2.5-VL-72B-Instruct", "transformers", "qwen2.5-vl", "~150 GB GPU (bf16)", _HUBS),
    ModelInfo("Qwen/Qwen2-VL-2B-Instruct", "transformers", "qwen2-vl", "~5 GB GPU (bf16)", _HUBS),
    ModelInfo("Qwen/Qwen2-VL-7B-Instruct", "transformers", "qwen2-vl", "~17 GB GPU (bf16)", _HUBS),
    ModelInfo("Qwen/Qwen-VL-Chat", "qwen-vl", "qwen-vl", "22.6 GB GPU (BF16, model card)", _PINNED),
    ModelInfo("Qwen/Qwen-VL-Chat-Int4", "qwen-vl", "qwen-vl", "11.8 GB GPU (Int4, model card)", _PINNED),
    ModelInfo("qwen-vl-plus", "openai", "qwen-vl", "none here (DashScope API)", "DashScope compatible mode"),
    ModelInfo("qwen-vl-max", "openai", "qwen-vl", "none here (DashScope API)", "DashScope compatible mode"),
)

_MODEL_TYPES = {"qwen2_vl": "qwen2-vl", "qwen2_5_vl": "qwen2.5-vl", "qwen3_vl": "qwen3-vl"}
_NAMES = ((r"qwen3[-_.]?vl", "qwen3-vl"), (r"qwen2\.5[-_]?vl", "qwen2.5-vl"), (r"qwen2[-_]?vl", "qwen2-vl"),
          (r"qwen[-_]?vl", "qwen-vl"))


def known(model: str) -> ModelInfo | None:
    bare = model.split(":", 1)[-1].split("://", 1)[-1].lower()
    return next((m for m in CATALOGUE if m.id.lower() == bare), None)


def infer(model: str) -> tuple[str | None, str | None]:
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
            return "transformers", _MODEL_TYPES[data["model_type"]]
        if data.get("model_type") == "qwen" and "visual" in data:
            return "qwen-vl", "qwen-vl"
    for pattern, family in _NAMES:
        if re.search(pattern, model, re.IGNORECASE):
            return ("qwen-vl" if family == "qwen-vl" else "transformers"), family
    return None, None


def table() -> str:
    """The catalogue as a text table for ``qvl models``."""
    rows = [("model", "engine", "family", "memory", "weights from")]
    rows += [(m.id, m.engine, m.family, m.memory, m.source) for m in CATALOGUE]
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)
