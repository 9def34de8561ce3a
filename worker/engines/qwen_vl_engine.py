"""Qwen-VL-Chat and Qwen-VL-Chat-Int4 through their own code (``trust_remote_code``).

Loaded as the model card does it (bf16 or fp16 as the GPU allows, ``device_map="auto"``;
NF4 through bitsandbytes on request; the Int4 checkpoint's GPTQ config applies by itself).
Answers go through ``model.chat``, the model's own prompt builder and decoder, which
keeps ``<ref>``/``<box>`` in the answer; a streamer passed through it shows the text
as it grows (``chat_stream`` is not used: it drops those tags and needs
transformers_stream_generator's generate, which recent transformers broke).

Pictures reach the model only as the worker's own content-addressed PNG files: the
remote tokenizer opens every ``<img>`` path (and downloads URLs) on every turn, so
all other text is defused first (:mod:`worker.prompt.qwen_vl`).

Call :func:`worker.engines.remote_code.check_transformers` and the trust checks
before constructing this (``load_engine`` does).
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import re
import tempfile
import time
import unicodedata
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from PIL import Image
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.generation.streamers import BaseStreamer

from worker.engines.base import ChatTurn, Engine, EngineError, one_line
from worker.prompt.qwen_vl import IMAGE_TOKENS, VLTurn, chatml_prompt, history_pairs

log = logging.getLogger(__name__)

# Special tokens model.chat's decoder keeps besides the grounding tags: never shown to a user.
_CONTROL = re.compile(r"<\|(?:extra_\d+|endoftext|im_start|im_end)\|>|</?img>|<imgpad>")

# The model card's NF4 set-up: double quantisation, fp16 compute, the output layer and
# the visual resampler's attention kept in full precision. Plus one layer the card
# misses: the vision tower casts each picture to the dtype of its first MLP weight,
# which NF4 packs into uint8 ("expected scalar type Byte but found Half", the failure
# reported in QwenLM/Qwen-VL#28 and #494); keeping that one 11M-parameter layer in fp16
# makes pictures go through.
PICTURE_MAX_AGE_S = 24 * 3600  # picture files unused this long are deleted when a worker starts
NF4_SKIP_MODULES = ["lm_head", "attn_pool.attn", "transformer.visual.transformer.resblocks.0.mlp.c_fc"]


class QwenVLEngine(Engine):
    """Qwen-VL-Chat on one GPU (or the CPU), greedy decoding."""

    name = "qwen-vl"
    family = "qwen-vl"

    def __init__(self, model_path: str | Path, *, image_dir: Path, device: str = "auto",
                 quantize: str = "none", system: str = "You are a helpful assistant.") -> None:
        """Load the tokenizer and model from ``model_path`` (a local, trusted directory).

        ``image_dir`` receives the pictures as PNG files named by their SHA-256; keep it
        short (the tokenizer takes paths of at most 256 bytes). Raises :class:`EngineError`
        when the model cannot be loaded.
        """
        if quantize not in ("none", "nf4"):
            raise EngineError(f"QVL_QUANTIZE must be none or nf4, not {quantize!r}.")
        self.image_dir = Path(image_dir)
        self.image_dir.mkdir(parents=True, exist_ok=True)
        _sweep(self.image_dir, PICTURE_MAX_AGE_S)
        self.system = system
        device_map = _device_map(device)
        cuda = device_map != "cpu"
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(model_path, trust_remote_code=True,
                                                           **_without_special_entries(model_path))
            self.model = AutoModelForCausalLM.from_pretrained(
                model_path, trust_remote_code=True, device_map=device_map,
                **_precision(cuda, quantize, _quantized(model_path))).eval()
        except torch.OutOfMemoryError as exc:
            raise EngineError(f"Qwen-VL-Chat at {model_path} does not fit in memory; try QVL_QUANTIZE=nf4 "
                              "or the Int4 checkpoint.") from exc
        except (OSError, ValueError, ImportError, KeyError, RuntimeError, AttributeError) as exc:
            raise EngineError(f"Could not load Qwen-VL-Chat at {model_path}: {one_line(exc)}") from exc
        self._stop_ids = {self.tokenizer.im_start_id, self.tokenizer.im_end_id, self.tokenizer.eod_id}
        self._window = int(getattr(self.model.generation_config, "max_window_size", 6144))

    def generate(self, turns: Sequence[ChatTurn], *, max_new_tokens: int,
                 on_text: Callable[[str], None] | None = None) -> str:
        # NFC first: the model's tokenizer normalises text, and model.chat cuts the answer out of
        # the decoded whole at the length of the text before normalising; a decomposed "é"
        # anywhere in the window would cost the answer its first characters.
        system = _nfc(next((t.text for t in turns if t.role == "system"), self.system))
        try:
            vl_turns = [VLTurn(t.role, _nfc(t.text), tuple(self._picture_path(i) for i in t.images))
                        for t in turns if t.role != "system"]
            history, query = history_pairs(vl_turns)
        except ValueError as exc:
            raise EngineError.of("model_cannot_read", detail=str(exc)[:200]) from exc
        prompt = chatml_prompt(history, query, system=system, max_window_tokens=self._window,
                               count_tokens=self.count_tokens)
        if prompt.dropped_pairs:
            log.info("qwen-vl: %d oldest exchange(s) left out to fit %d tokens", prompt.dropped_pairs, self._window)
        config = copy.deepcopy(self.model.generation_config)
        config.update(do_sample=False, top_p=None, top_k=None, temperature=None, max_new_tokens=max_new_tokens)
        streamer = _Streamer(self.tokenizer, self._stop_ids, on_text)
        try:
            with torch.inference_mode():
                answer, _ = self.model.chat(self.tokenizer, query, history=list(history[prompt.dropped_pairs:]),
                                            system=system, append_history=False, generation_config=config,
                                            streamer=streamer)
        except torch.OutOfMemoryError as exc:
            raise EngineError.of("model_out_of_memory") from exc
        except (ValueError, AssertionError) as exc:  # the remote code's own checks (paths, tags)
            if not streamer.ids:
                raise EngineError.of("model_cannot_read", detail=one_line(exc)) from exc
            # The answer itself opened an <img> it never closed: its decoder refuses that.
            log.warning("qwen-vl: answer not decodable as a whole (%s); decoded without picture tags", exc)
            answer = streamer.text()
        return _CONTROL.sub("", answer)

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer.tokenize(text, allowed_special="all"))  # text is defused upstream

    def image_tokens(self, width: int, height: int) -> int:
        return IMAGE_TOKENS

    def _picture_path(self, image: Image.Image) -> str:
        """Write ``image`` as PNG under ``image_dir``, named by its pixels; return the path.

        Every picture in the window comes through here on every turn: the name is a hash
        of the pixels, and the PNG is encoded only when the file is not there yet.
        """
        rgb = image.convert("RGB")
        digest = hashlib.sha256(f"{rgb.width}x{rgb.height}:".encode() + rgb.tobytes()).hexdigest()
        path = self.image_dir / f"{digest[:32]}.png"
        try:
            os.utime(path)  # still in use: the start-up sweep leaves it
        except FileNotFoundError:  # several workers may write the same picture: each its own temporary file
            fd, partial = tempfile.mkstemp(dir=self.image_dir, suffix=".tmp")
            with os.fdopen(fd, "wb") as out:
                rgb.save(out, format="PNG")
            os.replace(partial, path)
        return str(path)


class _Streamer(BaseStreamer):
    """Keeps the answer's token ids and calls ``on_text`` (if any) with the text so far,
    grounding tags kept, as tokens arrive."""

    def __init__(self, tokenizer, stop_ids: set[int], on_text: Callable[[str], None] | None) -> None:
        self.tokenizer, self.stop_ids, self.on_text = tokenizer, stop_ids, on_text
        self.ids: list[int] = []
        self.prompt_seen = False
        self.stopped = False
        self._picture_ids = {tokenizer.img_start_id, tokenizer.img_end_id, tokenizer.img_pad_id}

    def text(self) -> str:
        """The answer so far without picture tags (which the decoder insists be closed)."""
        ids = [i for i in self.ids if i not in self._picture_ids]
        return self.tokenizer.decode(ids, errors="replace")

    def put(self, value) -> None:
        if not self.prompt_seen:  # generate's first call hands over the prompt
            self.prompt_seen = True
            return
        for token in value.reshape(-1).tolist():
            if self.stopped or token in self.stop_ids:
                self.stopped = True
                return
            self.ids.append(token)
        if self.on_text is None:
            return
        try:  # as model.chat decodes the final answer
            text = self.tokenizer.decode(self.ids, errors="replace")
        except ValueError:  # an <img> not closed (yet)
            text = self.text()
        self.on_text(_CONTROL.sub("", text.rstrip("\ufffd")))  # a character still missing bytes waits

    def end(self) -> None:
        pass


def _sweep(directory: Path, max_age_s: float) -> None:
    """Delete picture files not used for ``max_age_s`` (they are copies: the database keeps the
    pictures, and a turn that needs one again writes it again)."""
    cutoff = time.time() - max_age_s
    for file in directory.iterdir():
        try:
            if file.stat().st_mtime < cutoff:
                file.unlink()
        except FileNotFoundError:  # another worker swept it first
            pass


def _device_map(device: str) -> str | dict:
    """``auto``: every GPU there is (accelerate splits the model), else the CPU; ``cuda:N``: that GPU."""
    if device in ("auto", "cuda"):
        return "auto" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda:") and not torch.cuda.is_available():
        raise EngineError(f"QVL_DEVICE={device}, but torch sees no GPU here.")
    return "cpu" if device == "cpu" else {"": device}


def _nfc(text: str) -> str:
    return unicodedata.normalize("NFC", text)


def _precision(cuda: bool, quantize: str, prequantized: bool) -> dict:
    """The remote code's precision flags (it casts itself; exactly one may be set, so all
    three are given) and the NF4 config. A GPTQ checkpoint (Int4) runs in fp16."""
    if quantize == "nf4" and not prequantized:
        from transformers import BitsAndBytesConfig

        return {"bf16": False, "fp16": True, "fp32": False, "quantization_config": BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.float16, llm_int8_skip_modules=NF4_SKIP_MODULES)}
    if prequantized:
        dtype = "fp16"
    elif not cuda:
        dtype = "fp32"
    else:
        dtype = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return {name: name == dtype for name in ("bf16", "fp16", "fp32")}


def _without_special_entries(model_path: str | Path) -> dict:
    """Overrides that drop ``tokenizer_config.json``'s special-token entries.

    Fine-tunes saved with ``save_pretrained`` carry them; from transformers 4.44 on, the
    base tokenizer's constructor then reaches for ``IMAGE_ST`` before the remote
    ``QWenTokenizer`` has set it ("no attribute 'IMAGE_ST'"). The tokenizer defines its
    own special tokens, so the entries are not needed.
    """
    try:
        config = json.loads((Path(model_path) / "tokenizer_config.json").read_text())
    except (OSError, ValueError):
        return {}
    return {key: None for key in _SPECIAL_ENTRIES if key in config}


_SPECIAL_ENTRIES = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token",
                    "additional_special_tokens")


def _quantized(model_path: str | Path) -> bool:
    """Whether the checkpoint carries its own quantisation (Qwen-VL-Chat-Int4's GPTQ)."""
    try:
        return "quantization_config" in json.loads((Path(model_path) / "config.json").read_text())
    except (OSError, ValueError):
        return False
