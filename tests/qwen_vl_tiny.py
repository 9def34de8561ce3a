"""A tiny random-weight Qwen-VL-Chat built from the model's own published code.

qvl cannot ship that code (it belongs to the model repository), and no hub is reachable
here, so this is opt-in: point ``QVL_TEST_QWEN_VL_CODE`` at a directory holding the
repository's ``configuration_qwen.py``, ``modeling_qwen.py``, ``qwen_generation_utils.py``,
``tokenization_qwen.py``, ``visual.py``, ``config.json`` and ``generation_config.json``
(e.g. from ``hf download Qwen/Qwen-VL-Chat --exclude '*.safetensors' '*.bin'``), in an
environment with the ``qwen-vl`` extra. The vocabulary is 256 byte tokens plus the
model's own special tokens, so its ids differ from the real ones but the code paths match.
"""

from __future__ import annotations

import base64
import json
import shutil
import sys
from pathlib import Path

CODE_FILES = ("configuration_qwen.py", "modeling_qwen.py", "qwen_generation_utils.py",
              "tokenization_qwen.py", "visual.py")
STAND_IN = Path(__file__).parent / "fakes" / "torchvision_stand_in"
SPECIAL_TOKENS = 3 + 205 + 9  # endoftext, im_start, im_end, extra_0..204, the 9 image/box tags


def use_torchvision_stand_in() -> None:
    """Make ``import torchvision`` work on a CPU box, after transformers decided it has none."""
    try:
        import torchvision  # noqa: F401
        return
    except ImportError:
        pass
    import transformers.image_utils  # noqa: F401  (computes "no torchvision" first)
    import transformers.modeling_utils  # noqa: F401

    sys.path.insert(0, str(STAND_IN))


def build(code_dir: Path, out: Path) -> Path:
    """Write a tiny Qwen-VL-Chat (2 layers, 128 wide, 56-pixel pictures) to ``out``."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    out.mkdir(parents=True, exist_ok=True)
    for name in CODE_FILES:
        shutil.copy(code_dir / name, out / name)
    ranks = {bytes([b]): b for b in range(256)}
    (out / "qwen.tiktoken").write_bytes(b"".join(base64.b64encode(k) + b" %d\n" % v for k, v in ranks.items()))
    eod = len(ranks)
    config = json.loads((code_dir / "config.json").read_text())
    config.pop("quantization_config", None)
    config.update(hidden_size=128, intermediate_size=256, kv_channels=32, num_attention_heads=4,
                  num_hidden_layers=2, vocab_size=eod + SPECIAL_TOKENS, fp16=False, bf16=False, fp32=True,
                  use_flash_attn=False, torch_dtype="float32")
    config["visual"] = {"heads": 2, "image_size": 56, "image_start_id": eod + 3 + 205 + 6, "layers": 1,
                        "mlp_ratio": 2.0, "output_dim": 128, "patch_size": 14, "width": 64}
    (out / "config.json").write_text(json.dumps(config, indent=2))
    (out / "tokenizer_config.json").write_text(json.dumps({
        "model_max_length": 8192, "tokenizer_class": "QWenTokenizer",
        "auto_map": {"AutoTokenizer": ["tokenization_qwen.QWenTokenizer", None]}}))
    generation = json.loads((code_dir / "generation_config.json").read_text())
    generation.update(eos_token_id=eod, pad_token_id=eod)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(out, trust_remote_code=True),
                                             trust_remote_code=True)
    model.save_pretrained(out, safe_serialization=True)
    (out / "generation_config.json").write_text(json.dumps(generation, indent=2))  # save_pretrained's has no chat_format
    return out
