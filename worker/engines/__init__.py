"""Engines, one per file; :func:`load_engine` picks one from the settings."""

from __future__ import annotations

import importlib

from qvl.errors import UserFacingError
from qvl.settings import Settings
from worker.engines.base import ChatTurn, Engine, EngineError

__all__ = ["ChatTurn", "Engine", "EngineError", "load_engine"]


DASHSCOPE = "https://dashscope.aliyuncs.com/compatible-mode/v1"


def engine_and_family(settings: Settings) -> tuple[str, str | None]:
    """The engine and box format in force: the settings', else inferred from the model."""
    from qvl.models import infer

    engine, family = infer(settings.model)
    if settings.engine != "auto":
        engine = settings.engine
    return engine or "transformers", settings.family or family


def load_engine(settings: Settings) -> Engine:
    """Build the engine the settings name; loads the model (slow: call it lazily).

    Raises ``ModelUnavailable`` (a :class:`UserFacingError`) when weights cannot be had.
    """
    kind, family = engine_and_family(settings)
    if kind == "echo":
        from worker.engines.echo import EchoEngine

        return EchoEngine(family=family or "qwen2-vl")
    if kind == "transformers":
        from worker.engines.transformers_engine import TransformersEngine
        from worker.engines.weights import resolve_model

        path = resolve_model(settings.model, cache_dir=settings.data_dir / "models")
        return TransformersEngine(path, family=family, device=settings.device)
    if kind == "openai":
        from worker.engines.openai_engine import OpenAIEngine

        base = settings.openai_base_url or (DASHSCOPE if settings.model.startswith("qwen-vl-") else None)
        if not base:
            raise UserFacingError("QVL_ENGINE=openai needs QVL_OPENAI_BASE_URL (e.g. http://vllm:8000/v1).")
        key = settings.openai_api_key.get_secret_value() if settings.openai_api_key else None
        return OpenAIEngine(base, settings.model, family=family or "qwen2.5-vl", api_key=key)
    if kind == "qwen-vl":
        raise UserFacingError(
            "Qwen-VL-Chat's own engine is not in this release yet. Serve the model with vLLM <= 0.23 "
            "(--trust-remote-code --hf-overrides '{\"architectures\": [\"QwenVLForConditionalGeneration\"]}') "
            "and set QVL_ENGINE=openai QVL_OPENAI_BASE_URL=http://HOST:8000/v1 QVL_FAMILY=qwen-vl.")
    if ":" in kind:  # an operator's own engine: "package.module:ClassName"
        module, _, attr = kind.partition(":")
        cls = getattr(importlib.import_module(module), attr)
        return cls(settings)
    raise UserFacingError(f"unknown engine {kind!r}: use auto, transformers, openai, echo or module:Class")
