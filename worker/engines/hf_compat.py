"""Load Qwen-VL processors on machines without torchvision.

transformers' Qwen-VL processors insist on a video processor, and the video
processors need torchvision. Our worker never sends video, and the CPU wheel
of torch has no matching torchvision (the registry's build is CUDA-only and
breaks ``import transformers`` models once installed). The subclasses here take
no video processor; everything else is the library's own code.
"""

from __future__ import annotations

import logging
from pathlib import Path

from transformers import (
    AutoConfig,
    AutoProcessor,
    Qwen2_5_VLConfig,
    Qwen2_5_VLProcessor,
    Qwen2VLConfig,
    Qwen2VLProcessor,
    Qwen3VLConfig,
    Qwen3VLProcessor,
)
from transformers.utils import is_torchvision_available

log = logging.getLogger(__name__)


# Each __init__ lists only image_processor and tokenizer: ProcessorMixin reads
# its sub-processors from this signature, so the parent's video_processor
# argument (None) is dropped instead of being required.
class Qwen2VLImageOnlyProcessor(Qwen2VLProcessor):
    """``Qwen2VLProcessor`` without a video processor."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kwargs)


class Qwen2_5_VLImageOnlyProcessor(Qwen2_5_VLProcessor):
    """``Qwen2_5_VLProcessor`` without a video processor."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kwargs)


class Qwen3VLImageOnlyProcessor(Qwen3VLProcessor):
    """``Qwen3VLProcessor`` without a video processor."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kwargs)


IMAGE_ONLY_PROCESSORS = {
    "qwen2_vl": (Qwen2VLConfig, Qwen2VLImageOnlyProcessor),
    "qwen2_5_vl": (Qwen2_5_VLConfig, Qwen2_5_VLImageOnlyProcessor),
    "qwen3_vl": (Qwen3VLConfig, Qwen3VLImageOnlyProcessor),
}


def register_image_only_processors() -> None:
    """Make ``AutoProcessor`` pick the image-only processors for Qwen-VL configs.

    This covers checkpoints whose files name no processor class; checkpoints
    that name one (all published ones do) need :func:`load_processor`.
    """
    for config_class, processor_class in IMAGE_ONLY_PROCESSORS.values():
        AutoProcessor.register(config_class, processor_class, exist_ok=True)


def load_processor(path: str | Path):
    """Return the processor of the checkpoint at ``path``.

    With torchvision this is plain ``AutoProcessor``; without it (or when
    that fails), the image-only subclass of the checkpoint's own processor. Raises ``ValueError``
    for a model type that is not Qwen2-VL, Qwen2.5-VL or Qwen3-VL (only without
    torchvision), and whatever ``from_pretrained`` raises for unreadable files.
    """
    if is_torchvision_available():
        try:
            return AutoProcessor.from_pretrained(path)
        except (ImportError, OSError, ValueError) as exc:  # e.g. no video processor config
            log.warning("AutoProcessor failed (%s); loading an image-only processor", exc)
    register_image_only_processors()
    model_type = AutoConfig.from_pretrained(path).model_type
    if model_type not in IMAGE_ONLY_PROCESSORS:
        raise ValueError(f"no torchvision-free processor for model type {model_type!r}")
    # Called directly, not through AutoProcessor: published checkpoints name
    # e.g. "Qwen2VLProcessor" in preprocessor_config.json, and AutoProcessor
    # would build that class, which fails without torchvision.
    return IMAGE_ONLY_PROCESSORS[model_type][1].from_pretrained(path)
