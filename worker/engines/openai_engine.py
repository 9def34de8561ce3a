"""An engine that asks an OpenAI-compatible chat-completions server (vLLM, SGLang, LMDeploy,
DashScope's compatible mode) instead of running a model in this process.

Synchronous on purpose: each turn runs on a worker thread of its own (the threads pool
keeps up to ``QVL_WORKER_CONCURRENCY`` turns in flight, and the server batches them).
One deadline, ``timeout_s``, bounds a whole ``generate`` call — connecting, waiting,
streaming and every retry — so a server that accepts and then hangs cannot hold a
worker thread longer than that.
"""

from __future__ import annotations

import base64
import io
import json
import time
from collections.abc import Callable, Iterator, Sequence

import requests
import requests.adapters
import urllib3
from PIL import Image

from qvl.models import Family
from worker.engines.base import ChatTurn, Engine, EngineError, one_line
from worker.grounding.pixels import smart_resize

RETRY_AFTER_CAP_S = 30.0
QWEN_PATCH_FAMILIES = (Family.QWEN2_VL, Family.QWEN25_VL, Family.QWEN3_VL)


class _Retryable(Exception):
    """One attempt failed in a way another attempt may fix; carries the error the user
    reads if no attempt succeeds."""

    def __init__(self, error: EngineError, wait_s: float | None = None, operator: str = ""):
        super().__init__(error.message)
        self.error = error
        self.wait_s = wait_s
        self.operator = operator or error.message  # what happened, for the log


def image_part(image: Image.Image) -> dict:
    """An ``image_url`` content part holding ``image`` as a data URL (JPEG, PNG if it has alpha)."""
    buf = io.BytesIO()
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        image.save(buf, format="PNG")
        mime = "image/png"
    else:
        image.convert("RGB").save(buf, format="JPEG", quality=90)
        mime = "image/jpeg"
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return {"type": "image_url", "image_url": {"url": f"data:{mime};base64,{data}"}}


def to_messages(turns: Sequence[ChatTurn]) -> list[dict]:
    """Chat-completions ``messages`` for ``turns``; a user turn's pictures come before its text."""
    messages: list[dict] = []
    for turn in turns:
        if turn.role == "user" and turn.images:
            parts = [image_part(img) for img in turn.images]
            parts.append({"type": "text", "text": turn.text})
            messages.append({"role": "user", "content": parts})
        else:
            messages.append({"role": turn.role, "content": turn.text})
    return messages


def server_message(body: bytes | str) -> str | None:
    """The server's own error message from an OpenAI-shaped JSON body, else None."""
    try:
        data = json.loads(body)
    except (ValueError, TypeError):
        return None
    error = data.get("error") if isinstance(data, dict) else None
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return error["message"][:300]
    if isinstance(error, str):  # some servers answer {"error": "..."}
        return error[:300]
    return None


class OpenAIEngine(Engine):
    name = "openai"

    def __init__(self, base_url: str, model: str, *, family: str, api_key: str | None = None,
                 timeout_s: float = 120, retries: int = 3, backoff_s: float = 1.0,
                 stream: bool = True):
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.family = family
        self.api_key = api_key
        self.timeout_s = timeout_s
        self.retries = max(1, retries)
        self.backoff_s = backoff_s
        self.stream = stream
        self._http = requests.Session()
        # One worker keeps many turns in flight (QVL_WORKER_CONCURRENCY, 32 by default),
        # each on a thread of its own: keep a connection for each instead of urllib3's 10.
        adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=128)
        self._http.mount("http://", adapter)
        self._http.mount("https://", adapter)

    def generate(self, turns: Sequence[ChatTurn], *, max_new_tokens: int,
                 on_text: Callable[[str], None] | None = None) -> str:
        """POST the turns to ``{base_url}/chat/completions``; return the answer's text.

        Retries 429, 5xx and connection failures with exponential backoff (honouring
        ``Retry-After``) within ``timeout_s`` in all. Raises :class:`EngineError` with a short
        message, the server's own where it sent one, when no attempt succeeds.
        """
        payload = {"model": self.model, "messages": to_messages(turns),
                   "max_tokens": max_new_tokens, "stream": self.stream, "temperature": 0}
        deadline = time.monotonic() + self.timeout_s
        seen: list[str] = []  # what each failed attempt got, for the operator's log
        for attempt in range(self.retries):
            try:
                return self._attempt(payload, deadline, on_text)
            except _Retryable as err:
                last = err
                seen.append(err.operator)
            if attempt == self.retries - 1:
                break
            wait = last.wait_s if last.wait_s is not None else self.backoff_s * 2 ** attempt
            if time.monotonic() + wait >= deadline:
                break
            time.sleep(wait)
        raise last.error from RuntimeError(f"{len(seen)} attempt(s): {'; '.join(seen)}")

    def _attempt(self, payload: dict, deadline: float,
                 on_text: Callable[[str], None] | None) -> str:
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        left = _left(deadline)
        try:
            resp = self._http.post(f"{self.base_url}/chat/completions", json=payload,
                                   headers=headers, stream=True, timeout=(min(left, 10), left))
        except requests.Timeout as err:
            raise EngineError.of("server_timeout") from err
        except requests.ConnectionError as err:
            raise _Retryable(EngineError.of("server_unreachable"), operator=one_line(err)) from err
        with resp:
            if resp.status_code != 200:
                self._refuse(resp, deadline)
            try:
                if self.stream and resp.headers.get("content-type", "").startswith(
                        "text/event-stream"):
                    return self._read_stream(resp, deadline, on_text)
                text = _content(json.loads(_read_all(resp, deadline)))
            except requests.RequestException as err:
                if _timed_out(err):
                    raise EngineError.of("server_timeout") from err
                raise EngineError.of("server_broke_off") from err
            except (ValueError, KeyError, IndexError, TypeError) as err:
                raise EngineError.of("server_unreadable") from err
        if on_text and text:
            on_text(text)
        return text

    def _refuse(self, resp: requests.Response, deadline: float) -> None:
        """Raise for a non-200 answer: retryable for 429 and 5xx, final for the rest."""
        try:
            said = server_message(_read_all(resp, deadline))
        except requests.RequestException:
            said = None
        code = resp.status_code
        if code == 429:
            raise _Retryable(EngineError.of("server_busy"), _retry_after(resp), f"HTTP 429: {said or ''}")
        if code >= 500:
            raise _Retryable(EngineError.of("server_failed", detail=f"{code}: {said}" if said else code),
                             _retry_after(resp), f"HTTP {code}: {said or ''}")
        raise EngineError.of("server_refused", detail=said or f"HTTP {code}")

    def _read_stream(self, resp: requests.Response, deadline: float,
                     on_text: Callable[[str], None] | None) -> str:
        text, finished = "", False
        for line in _lines(resp, deadline):
            if not line.startswith("data:"):
                continue  # SSE comments, event names, keep-alives
            data = line[5:].strip()
            if data == "[DONE]":
                finished = True
                break
            chunk = json.loads(data)
            if chunk.get("error"):
                said = server_message(data) or "unknown error"
                raise EngineError.of("server_failed", detail=said)
            choices = chunk.get("choices") or [{}]
            finished = finished or bool(choices[0].get("finish_reason"))
            piece = (choices[0].get("delta") or {}).get("content")
            if piece:
                text += piece
                if on_text:
                    on_text(text)
        if not finished:  # the connection ended before the answer did: not a whole answer
            raise EngineError.of("server_broke_off")
        return text

    def count_tokens(self, text: str) -> int:
        """An estimate (about three characters a token); the server's tokenizer is not here."""
        return max(1, len(text) // 3)

    def image_tokens(self, width: int, height: int) -> int:
        """Qwen2/2.5/3-VL: one token per 28×28 of the resized picture; others: 256."""
        if self.family in QWEN_PATCH_FAMILIES:
            w, h = smart_resize(width, height)
            return w * h // (28 * 28)
        return 256

    def input_size(self, width: int, height: int) -> tuple[int, int]:
        """The picture size Qwen2.5-VL's server-side processor feeds the model."""
        if self.family == "qwen2.5-vl":
            return smart_resize(width, height)
        return width, height


def _left(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise EngineError.of("server_timeout")
    return left


def _chunks(resp: requests.Response, deadline: float) -> Iterator[bytes]:
    # The read timeout only bounds each wait; checking the deadline between chunks also
    # bounds a server that trickles bytes forever.
    for chunk in resp.iter_content(chunk_size=None):
        _left(deadline)
        yield chunk


def _read_all(resp: requests.Response, deadline: float) -> bytes:
    return b"".join(_chunks(resp, deadline))


def _lines(resp: requests.Response, deadline: float) -> Iterator[str]:
    pending = b""
    for chunk in _chunks(resp, deadline):
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for line in lines:
            yield line.rstrip(b"\r").decode("utf-8")
    if pending.strip():
        yield pending.decode("utf-8")


def _timed_out(err: requests.RequestException) -> bool:
    # iter_content wraps a read timeout in a ConnectionError; look inside.
    return isinstance(err, requests.Timeout) or any(
        isinstance(arg, urllib3.exceptions.TimeoutError) for arg in err.args)


def _content(data: dict) -> str:
    return data["choices"][0]["message"]["content"] or ""


def _retry_after(resp: requests.Response) -> float | None:
    value = resp.headers.get("Retry-After")
    try:
        return min(max(0.0, float(value)), RETRY_AFTER_CAP_S) if value is not None else None
    except ValueError:
        return None  # an HTTP date: fall back to our own backoff
