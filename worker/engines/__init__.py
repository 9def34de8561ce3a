"""Engines, one per file; :func:`load_engine` picks one from the settings."""

from __future__ import annotations

import importlib

from qvl.errors import UserFacingError
from qvl.settings import Settings
from worker.engines.base import ChatTurn, Engine, EngineError

__all__ = ["ChatTurn", "Engine", "EngineError", "load_engine"]


def load_engine(settings: Settings) -> Engine:
    """Build the engine the settings name; loads the model (slow: call it lazily).

    Raises ``ModelUnavailable`` (a :class:`UserFacingError`) when weights cannot be had.
    """
    kind = settings.engine
    if kind == "echo":
        from worker.engines.echo import EchoEngine

        return EchoEngine(family=settings.family or "qwen2-vl")
    if kind == "transformers":
        from worker.engines.transformers_engine import TransformersEngine
        from worker.engines.weights import resolve_model

        path = resolve_model(settings.model, cache_dir=settings.data_dir / "models")
        return TransformersEngine(path, family=settings.family, device=settings.device)
    if ":" in kind:  # an operator's own engine: "package.module:ClassName"
        module, _, attr = kind.partition(":")
        cls = getattr(importlib.import_module(module), attr)
        return cls(settings)
    raise UserFacingError(f"unknown engine {kind!r}: use transformers, echo or module:Class")
