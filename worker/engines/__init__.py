"""Engines, one per file; :func:`load_engine` picks one from the settings."""

from __future__ import annotations

import importlib
import importlib.metadata
from pathlib import Path

from qvl.errors import UserFacingError
from qvl.models import EngineKind, Family, engine_and_family
from qvl.settings import Settings
from worker.engines.base import ChatTurn, Engine, EngineError

__all__ = ["ChatTurn", "Engine", "EngineError", "engine_and_family", "fetch_model", "load_engine"]


DASHSCOPE = "https://dashscope.aliyuncs.com/compatible-mode/v1"


def fetch_model(settings: Settings) -> Path | None:
    """Check that this environment can run the model, then find or fetch its weights.

    Cheap checks first (the remote-code allowlist, the transformers version), so a
    worker that cannot serve fails at start-up, never halfway through a turn. Returns
    the weights' directory, or None for engines that need none here. Raises
    :class:`UserFacingError` (including ``ModelUnavailable``) with what to do.
    """
    kind, _ = engine_and_family(settings)
    if kind not in (EngineKind.TRANSFORMERS, EngineKind.QWEN_VL):
        return None
    from worker.engines import remote_code
    from worker.engines.weights import is_local, resolve_model

    cache = settings.data_dir / "models"
    if kind == EngineKind.TRANSFORMERS:
        _require_transformers_5()
        return resolve_model(settings.model, cache_dir=cache)
    if is_local(settings.model):
        path = resolve_model(settings.model)
        remote_code.check_directory(path, settings.qwen_vl_trusted)
        remote_code.check_transformers()
        return path
    revision = remote_code.pinned_revision(settings.model, settings.qwen_vl_trusted)
    remote_code.check_transformers()
    path = resolve_model(settings.model, cache_dir=cache, revision=revision)
    remote_code.check_directory(path, settings.qwen_vl_trusted, pinned=True)
    return path


def _require_transformers_5() -> None:
    version = importlib.metadata.version("transformers")
    if int(version.split(".")[0]) < 5:
        raise UserFacingError(
            f"The transformers engine needs transformers 5 (this environment has {version}, perhaps from the "
            "qwen-vl extra, which pins the old release Qwen-VL-Chat's code needs). Run Qwen2/2.5/3-VL workers "
            "in an environment installed without that extra.")


def load_engine(settings: Settings) -> Engine:
    """Build the engine the settings name; loads the model (slow: call it lazily).

    Raises ``ModelUnavailable`` (a :class:`UserFacingError`) when weights cannot be had.
    """
    kind, family = engine_and_family(settings)
    if kind == EngineKind.ECHO:
        from worker.engines.echo import EchoEngine

        return EchoEngine(family=family or Family.QWEN2_VL)
    if kind == EngineKind.TRANSFORMERS:
        path = fetch_model(settings)
        from worker.engines.transformers_engine import TransformersEngine

        return TransformersEngine(path, family=family, device=settings.device, batch_max=settings.batch_max,
                                  batch_wait_s=settings.batch_wait_ms / 1000, cpu_threads=settings.cpu_threads)
    if kind == EngineKind.OPENAI:
        from worker.engines.openai_engine import OpenAIEngine

        base = settings.openai_base_url or (DASHSCOPE if settings.model.startswith("qwen-vl-") else None)
        if not base:
            raise UserFacingError("QVL_ENGINE=openai needs QVL_OPENAI_BASE_URL (e.g. http://vllm:8000/v1).")
        key = settings.openai_api_key.get_secret_value() if settings.openai_api_key else None
        return OpenAIEngine(base, settings.model, family=family or Family.QWEN25_VL, api_key=key)
    if kind == EngineKind.QWEN_VL:
        path = fetch_model(settings)
        from worker.engines.qwen_vl_engine import QwenVLEngine

        return QwenVLEngine(path, image_dir=settings.data_dir / "qwen-vl-pictures", device=settings.device,
                            quantize=settings.quantize, system=settings.system_prompt)
    if ":" in kind:  # an operator's own engine: "package.module:ClassName"
        module, _, attr = kind.partition(":")
        cls = getattr(importlib.import_module(module), attr)
        return cls(settings)
    raise UserFacingError(f"unknown engine {kind!r}: use auto, transformers, qwen-vl, openai, echo or module:Class")
