"""Qwen2-VL, Qwen2.5-VL and Qwen3-VL through Hugging Face transformers.

This is the only module of the engine that imports torch and transformers;
the worker imports it lazily, in the process that will run the model.
"""

from __future__ import annotations

import copy
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from transformers import AutoModelForImageTextToText, StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

from qvl.models import Family
from worker.engines.base import ChatTurn, Engine, EngineError, one_line
from worker.engines.batching import Batcher, Request
from worker.engines.hf_compat import load_processor

log = logging.getLogger(__name__)

FAMILY_OF_MODEL_TYPE = {"qwen2_vl": Family.QWEN2_VL, "qwen2_5_vl": Family.QWEN25_VL, "qwen3_vl": Family.QWEN3_VL}
# Grounding markup the pipeline parses: decoded as text even though the
# tokenizer marks these tokens special.
GROUNDING_TOKENS = (
    "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>",
    "<|quad_start|>", "<|quad_end|>",
)
# Where an answer ends. <|im_start|> too: a model that opens a new turn has
# finished its own and must not speak for the user.
STOP_TOKENS = ("<|im_end|>", "<|endoftext|>", "<|im_start|>")
STREAM_EVERY_S = 0.02  # the least time between two partial answers handed to on_text
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class TransformersEngine(Engine):
    """A Qwen-VL checkpoint on one device, answering with greedy decoding; turns that
    arrive while it is busy are answered together (:mod:`worker.engines.batching`)."""

    name = "transformers"

    def __init__(
        self,
        model_path: str | Path,
        *,
        family: str | None = None,
        device: str = "auto",
        dtype: str = "auto",
        batch_max: int = 8,
        batch_wait_s: float = 0.01,
        cpu_threads: int = 0,
    ) -> None:
        """Load the processor and the model from ``model_path`` (a local directory).

        ``family`` defaults to the one of ``config.model_type``; ``device`` "auto"
        means CUDA when available, and ``dtype`` "auto" bfloat16 (float16 on old
        GPUs) on CUDA and float32 on the CPU. Up to ``batch_max`` turns are answered
        in one ``generate``. On the CPU the model computes with ``cpu_threads`` threads
        (0: :func:`spare_cores`). Raises :class:`EngineError` when the checkpoint cannot be
        read, is not a Qwen2/2.5/3-VL model, or does not fit.
        """
        self._tokenizer_lock = threading.Lock()  # fast tokenizers refuse concurrent use
        self._batcher = Batcher(self._run_batch, max_size=batch_max, wait_s=batch_wait_s)
        path = Path(model_path)
        if family is not None and family not in FAMILY_OF_MODEL_TYPE.values():
            known = ", ".join(FAMILY_OF_MODEL_TYPE.values())
            raise EngineError(f"The transformers engine runs {known}, not {family!r}.")
        self.device = _pick_device(device)
        if self.device == "cpu":
            torch.set_num_threads(cpu_threads or spare_cores())
        try:
            self.processor = load_processor(path)
            self.model = AutoModelForImageTextToText.from_pretrained(
                path,
                dtype=_pick_dtype(dtype, self.device),
                device_map=None if self.device == "cpu" else self.device,
            ).eval()
        except torch.OutOfMemoryError as exc:
            raise EngineError(f"The model at {path} does not fit in memory.") from exc
        except (OSError, ValueError, ImportError, KeyError, RuntimeError) as exc:
            raise EngineError(f"Could not load the model at {path}: {one_line(exc)}") from exc
        model_type = self.model.config.model_type
        self.family = family or FAMILY_OF_MODEL_TYPE.get(model_type, "")
        if not self.family:
            raise EngineError(f"Model type {model_type!r} is not a Qwen2-VL, Qwen2.5-VL or Qwen3-VL.")
        self.tokenizer = self.processor.tokenizer
        self._protect_added_tokens()
        ids = self.tokenizer.convert_tokens_to_ids
        keep = {ids(t) for t in GROUNDING_TOKENS if t in self.tokenizer.get_vocab()}
        self._stop_ids = {ids(t) for t in STOP_TOKENS if t in self.tokenizer.get_vocab()}
        self._drop_ids = set(self.tokenizer.all_special_ids) - keep
        self._generation_config = self._greedy_config()

    def _protect_added_tokens(self) -> None:
        # sanitize_control_tokens encodes control tokens found in messages as
        # text. By default "control" means special tokens plus added tokens the
        # template mentions; <think>, <|fim_prefix|> and the like are added
        # tokens too, so every added token counts here.
        added = [token.content for token in self.tokenizer.added_tokens_decoder.values()]
        self.tokenizer.chat_control_tokens = added

    def _greedy_config(self):
        config = copy.deepcopy(self.model.generation_config)
        # Published checkpoints ship sampling settings (top_k=1, temperature
        # 0.01...); cleared so greedy decoding runs without warnings.
        config.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        config.eos_token_id = sorted(self._stop_ids | set(_as_list(config.eos_token_id)))
        if config.pad_token_id is None:
            config.pad_token_id = self.tokenizer.pad_token_id
        return config

    def encode(self, turns: Sequence[ChatTurn]):
        """Tokenise ``turns`` with the chat template, ready for ``model.generate``.

        Control tokens inside the turns' text are encoded as plain text. Returns
        the processor's ``BatchFeature`` (on the CPU). Raises :class:`EngineError`
        for a conversation or picture the processor refuses.
        """
        messages = [_message(turn) for turn in turns]
        try:
            with self._tokenizer_lock:
                return self.processor.apply_chat_template(
                    messages,
                    add_generation_prompt=True,
                    tokenize=True,
                    return_dict=True,
                    return_tensors="pt",
                    sanitize_control_tokens=True,
                )
        except ValueError as exc:
            raise EngineError.of("model_cannot_read", detail=one_line(exc)) from exc

    def generate(
        self,
        turns: Sequence[ChatTurn],
        *,
        max_new_tokens: int,
        on_text: Callable[[str], None] | None = None,
    ) -> str:
        """Answer the last user turn greedily; return the answer, grounding markup kept.

        The turn joins the next batch of the model (other conversations' turns waiting
        at the same time); its answer is the same as if it were answered alone.
        ``on_text`` runs on the calling thread with the answer so far (stripped,
        never ending in half a character); its last call gets the returned text.
        An exception raised by ``on_text`` stops generating this answer and propagates.
        Raises :class:`EngineError` for a conversation or picture the processor refuses
        (this turn alone fails), or when the model runs out of memory or fails.
        """
        request = self._batcher.submit(Request(self.encode(turns), max_new_tokens))
        try:
            answer = self._stream(request.tokens, on_text)
        except BaseException:
            request.cancel.set()  # on_text or a signal (a time limit) stopped us: stop our row too
            raise
        if request.error is not None:
            raise _engine_error(request.error, self.device)
        return answer

    def coming(self):
        """A turn is on its way to :meth:`generate`: the next batch waits for it a moment."""
        return self._batcher.coming()

    def _run_batch(self, requests: list[Request]) -> None:
        """Generate for ``requests`` in one padded ``generate`` (on the batcher's thread)."""
        inputs = requests[0].inputs if len(requests) == 1 else collate(
            [r.inputs for r in requests], pad_id=self._generation_config.pad_token_id)
        inputs = inputs.to(self.model.device, dtype=self.model.dtype)
        config = copy.deepcopy(self._generation_config)
        config.max_new_tokens = max(r.max_new_tokens for r in requests)
        with torch.inference_mode():
            self.model.generate(
                **inputs,
                generation_config=config,
                streamer=_BatchStreamer(requests, self._stop_ids),
                stopping_criteria=StoppingCriteriaList([_Over(requests)]),
            )

    def _stream(self, ids_queue: queue.SimpleQueue, on_text: Callable[[str], None] | None) -> str:
        ids: list[int] = []
        shown: str | None = None
        finished = False
        decoded_at = 0.0
        while not finished:
            batch = [ids_queue.get()]
            while not ids_queue.empty():  # on_text was slow: catch up in one call
                batch.append(ids_queue.get())
            for item in batch:
                if item is None:
                    finished = True
                    break
                ids.extend(item)
            # Decoding the whole answer at every token costs more than a small model's step,
            # and a crowd's answers are decoded side by side: at most every STREAM_EVERY_S.
            if not on_text or finished or (shown is not None and time.monotonic() - decoded_at < STREAM_EVERY_S):
                continue
            text = self.decode(ids)
            decoded_at = time.monotonic()
            # A byte-level token can end inside a UTF-8 character: wait for the rest.
            if text and text != shown and not text.endswith("\ufffd"):
                on_text(text)
                shown = text
        answer = self.decode(ids)
        if on_text and answer != shown and (answer or shown is not None):
            on_text(answer)
        return answer

    def decode(self, ids: Sequence[int]) -> str:
        """The answer text of generated ``ids``: up to the first stop token, grounding
        markup kept, other special tokens dropped, outer whitespace stripped."""
        kept: list[int] = []
        for token_id in ids:
            if token_id in self._stop_ids:
                break
            if token_id not in self._drop_ids:
                kept.append(token_id)
        text = self.tokenizer.decode(kept, skip_special_tokens=False,
                                     clean_up_tokenization_spaces=False)
        return text.strip()

    def count_tokens(self, text: str) -> int:
        """How many tokens ``text`` costs as plain text."""
        with self._tokenizer_lock:
            return len(self.tokenizer.encode(text, add_special_tokens=False, split_special_tokens=True))

    def image_tokens(self, width: int, height: int) -> int:
        """Tokens one ``width``×``height`` picture costs: its pads plus vision start/end.
        Raises :class:`EngineError` for a picture too long and thin for the processor."""
        _check_aspect(width, height)
        patches = self.processor.image_processor.get_number_of_image_patches(height, width, {})
        return patches // self.processor.image_processor.merge_size**2 + 2

    def input_size(self, width: int, height: int) -> tuple[int, int]:
        """The (width, height) the processor resizes a picture to; Qwen2.5-VL's absolute
        boxes are in these pixels. Raises :class:`EngineError` for extreme aspect ratios."""
        _check_aspect(width, height)
        processor = self.processor.image_processor
        try:
            resized_height, resized_width = smart_resize(
                height,
                width,
                factor=processor.patch_size * processor.merge_size,
                min_pixels=processor.size["shortest_edge"],
                max_pixels=processor.size["longest_edge"],
            )
        except ValueError as exc:
            raise EngineError.of("model_cannot_read_picture", detail=one_line(exc)) from exc
        return resized_width, resized_height


MAX_ASPECT = 200  # smart_resize's MAX_RATIO: "absolute aspect ratio must be smaller than 200"


def _check_aspect(width: int, height: int) -> None:
    """Refuse, in the user's words, a picture Qwen2-VL's processor cannot resize (the door
    refuses these too: QVL_IMAGE_MAX_ASPECT)."""
    if min(width, height) <= 0 or max(width, height) / min(width, height) > MAX_ASPECT:
        raise EngineError.of("picture_aspect", width=width, height=height, ratio=MAX_ASPECT)


def collate(features: list, *, pad_id: int):
    """One batch of single-sample processor outputs: per-token tensors (ids, mask, token
    types) left-padded to the longest prompt, picture tensors concatenated in order."""
    from transformers import BatchFeature

    length = max(f["input_ids"].shape[1] for f in features)
    batch = {}
    for key in dict.fromkeys(k for f in features for k in f.keys()):
        present = [f for f in features if key in f]
        if all(f[key].shape == f["input_ids"].shape for f in present) and len(present) == len(features):
            pad = pad_id if key == "input_ids" else 0
            batch[key] = torch.cat([torch.nn.functional.pad(f[key], (length - f[key].shape[1], 0), value=pad)
                                    for f in features])
        else:  # pixel_values, image_grid_thw: rows of every picture, sample after sample
            batch[key] = torch.cat([f[key] for f in present])
    return BatchFeature(batch)


class _BatchStreamer(BaseStreamer):
    """Hands each row's new token ids to its request, through the request's queue."""

    def __init__(self, requests: list[Request], stop_ids: set[int]) -> None:
        self.requests, self.stop_ids = requests, stop_ids
        self._prompt_skipped = False

    def put(self, value) -> None:
        if not self._prompt_skipped:  # generate() first puts the whole prompt
            self._prompt_skipped = True
            return
        rows = value.reshape(len(self.requests), -1).tolist()
        for request, ids in zip(self.requests, rows, strict=True):
            request.emit(ids, self.stop_ids)

    def end(self) -> None:
        for request in self.requests:
            request.end()


class _Over(StoppingCriteria):
    """Stops each row whose request is over (cancelled, or at its own length)."""

    def __init__(self, requests: list[Request]) -> None:
        self.requests = requests

    def __call__(self, input_ids, scores, **kwargs):
        over = [r.over or r.cancel.is_set() for r in self.requests]
        return torch.tensor(over, device=input_ids.device)


def _message(turn: ChatTurn) -> dict:
    content = [{"type": "image", "image": image} for image in turn.images]
    content.append({"type": "text", "text": turn.text})
    return {"role": turn.role, "content": content}


def spare_cores() -> int:
    """The threads a model on the CPU computes with by default: every core this process may
    use but one. With all of them, each step's threads wait for the one whose core the
    frontend, Redis or the database has just taken (8 conversations at once on 2 cores:
    209 ms a batch with 2 threads, 89 ms with 1)."""
    return max(1, len(os.sched_getaffinity(0)) - 1)


def _pick_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def _pick_dtype(dtype: str, device: str) -> torch.dtype:
    if dtype == "auto":
        if device.startswith("cuda"):
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32  # half precision on CPU is slow or unsupported
    if dtype not in _DTYPES:
        raise EngineError(f"Unknown dtype {dtype!r}; use auto, {', '.join(_DTYPES)}.")
    return _DTYPES[dtype]


def _engine_error(exc: BaseException, device: str) -> EngineError:
    if isinstance(exc, torch.OutOfMemoryError):
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
        error = EngineError.of("model_out_of_memory")
    else:
        log.error("generation failed", exc_info=exc)
        error = EngineError.of("model_failed")
    error.__cause__ = exc
    return error


def _as_list(value) -> list[int]:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]

