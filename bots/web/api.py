"""``/v1/chat/completions`` and ``/v1/models``, OpenAI-compatible, plus ``/v1/files``.

Standard clients work unchanged; qvl's own value rides in a ``qvl`` field they ignore:
the cleaned text, the boxes in pixels of the original picture with its 1-based index
among the request's pictures, and a signed link to each annotated picture.

Multi-turn: a client sends the whole history each time. The history before the last
user message picks the conversation (a hash of it, within the key), and a new one is
recorded as finished turns first, so the worker builds its context as for any chat.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from bots.fetch import fetch_image
from bots.web.app import ApiError, Caller, body_limit, read_json, refusal
from bots.web.auth import Principal
from bots.web.turns import Web, history_digest, progress
from qvl.messages import language_of
from qvl.protocol import Accepted, Part, TextPart

router = APIRouter()


def model_id(web: Web) -> str:
    return "echo" if web.settings.engine == "echo" else web.settings.model


@router.get("/v1/models")
async def models(request: Request, principal: Caller):
    web: Web = request.app.state.web
    return {"object": "list", "data": [{"id": model_id(web), "object": "model", "created": 0, "owned_by": "qvl"}]}


@router.get("/v1/files/{sha256}")
async def file(request: Request, sha256: str, key: int, sig: str, download: bool = False):
    """A stored picture, for whoever holds its signed link (links go to one key only)."""
    web: Web = request.app.state.web
    if not web.signer.file_ok(key, sha256, sig):
        raise ApiError(404, "No such picture.", code="not_found")
    found = await web.picture(key, sha256)
    if found is None:
        raise ApiError(404, "No such picture.", code="not_found")
    data, mime = found
    ext = {"image/png": "png", "image/webp": "webp", "image/gif": "gif"}.get(mime, "jpg")
    headers = {"Cache-Control": "private, max-age=31536000, immutable"}
    if download:
        headers["Content-Disposition"] = f'attachment; filename="qvl-{sha256[:12]}.{ext}"'
    return Response(data, media_type=mime, headers=headers)


@router.post("/v1/chat/completions")
async def chat_completions(request: Request, principal: Caller):
    web: Web = request.app.state.web
    body = await read_json(request, body_limit(web.settings))
    if not isinstance(body, dict) or not isinstance(body.get("messages"), list) or not body["messages"]:
        raise ApiError(400, "'messages' must be a non-empty list.", code="invalid_messages")
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    if max_tokens is not None and (not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1):
        raise ApiError(400, "'max_tokens' must be a positive integer.", code="invalid_max_tokens")
    turns = [await _turn(web, m) for m in body["messages"]]
    turns = [(role, parts) for role, parts in turns if role in ("user", "assistant")]
    if not turns or turns[-1][0] != "user":
        raise ApiError(400, "The last message must be the user's.", code="invalid_messages")
    earlier, (_, last) = turns[:-1], turns[-1]
    pictures = [hashlib.sha256(p).hexdigest() for _, parts in turns for p in parts if isinstance(p, bytes)]
    if await web.workers_alive() == 0:
        raise ApiError(503, "No worker is running: start `qvl worker` (or `qvl up`) and try again.",
                       code="no_worker", retry_after_s=10)
    channel = await web.claim_channel(principal, history_digest(earlier)) if earlier else None
    if channel is None:  # a new conversation, holding the client's history as finished turns
        channel = "a" + uuid.uuid4().hex
        await web.import_history(principal, channel, earlier)
    text = "\n".join(p.text for p in last if isinstance(p, TextPart))
    images = tuple(p for p in last if isinstance(p, bytes))
    result = await web.submit(principal, channel=channel, message_id=uuid.uuid4().hex, text=text,
                              images=images, language=language_of(text), max_new_tokens=max_tokens)
    base = str(request.base_url).rstrip("/")
    model = model_id(web)
    if not isinstance(result, Accepted):
        if result.error:
            raise refusal(result)
        answer = {"type": "done", "job_id": None, "text": result.text, "error": False, "boxes": [],
                  "annotated": [], "originals": {}}
        events = _once(answer)
        job = f"chatcmpl-{uuid.uuid4().hex[:12]}"
    else:
        events = _remembered(web, principal, channel, turns,
                             progress(web, principal, result.job_id, base=base, pictures=pictures))
        job = f"chatcmpl-{result.job_id}"
    if body.get("stream"):
        return StreamingResponse(_sse(events, job, model), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    done = [e async for e in events if e["type"] == "done"][-1]
    return JSONResponse(_completion(job, model, done))


async def _remembered(web: Web, principal: Principal, channel: str, turns: list,
                      events: AsyncIterator[dict]) -> AsyncIterator[dict]:
    """``events``; once the answer is in, the history it completes continues ``channel``."""
    async for event in events:
        if event["type"] == "done" and not event["error"]:
            whole = [*turns, ("assistant", [TextPart(event["text"])])]
            await web.remember_channel(principal, history_digest(whole), channel)
        yield event


async def _once(event: dict) -> AsyncIterator[dict]:
    yield event


def _completion(job: str, model: str, done: dict[str, Any]) -> dict[str, Any]:
    extension = {k: v for k, v in done.items() if k != "type"}
    return {"id": job, "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": done["text"]},
                         "finish_reason": "stop", "logprobs": None}],
            "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
            "qvl": extension}


async def _sse(events: AsyncIterator[dict], job: str, model: str) -> AsyncIterator[str]:
    """Chat-completion chunks as server-sent events; the queue position as SSE comments
    (which clients skip); the last chunk carries the ``qvl`` field."""
    created = int(time.time())

    def chunk(delta: dict, finish: str | None = None, **extra) -> str:
        data = {"id": job, "object": "chat.completion.chunk", "created": created, "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}], **extra}
        return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"

    yield chunk({"role": "assistant", "content": ""})
    sent = ""
    async for event in events:
        if event["type"] == "queued":
            yield f": queued, position {event['position']}\n\n"
        elif event["type"] in ("text", "done"):
            text = event["text"]
            if text.startswith(sent) and len(text) > len(sent):
                yield chunk({"content": text[len(sent):]})
                sent = text
            if event["type"] == "done":
                yield chunk({}, "stop", qvl={k: v for k, v in event.items() if k != "type"})
    yield "data: [DONE]\n\n"


async def _turn(web: Web, message: Any) -> tuple[str, list[Part | bytes]]:
    """One OpenAI message as (role, parts): text parts, and pictures as their bytes."""
    if not isinstance(message, dict) or not isinstance(message.get("role"), str):
        raise ApiError(400, "Each message needs a 'role'.", code="invalid_messages")
    content = message.get("content")
    if content is None:
        return message["role"], []
    if isinstance(content, str):
        return message["role"], [TextPart(content)]
    if not isinstance(content, list):
        raise ApiError(400, "'content' must be a string or a list of parts.", code="invalid_messages")
    parts: list[Part | bytes] = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            parts.append(TextPart(part["text"]))
        elif kind == "image_url":
            url = part.get("image_url")
            url = url.get("url") if isinstance(url, dict) else url
            if not isinstance(url, str):
                raise ApiError(400, "'image_url' needs a 'url'.", code="invalid_image_url")
            parts.append(await _picture(web, url))
        else:
            raise ApiError(400, f"Unsupported content part {kind!r}: use 'text' or 'image_url'.",
                           code="invalid_content")
    return message["role"], parts


async def _picture(web: Web, url: str) -> bytes:
    """A picture from a data URL or, through the safe fetcher, a link."""
    limit = web.settings.image_max_bytes
    if url.startswith("data:"):
        header, _, payload = url.partition(",")
        if ";base64" not in header:
            raise ApiError(400, "A picture's data URL must be base64 (data:image/png;base64,...).",
                           code="invalid_image_url")
        if len(payload) > limit * 4 // 3 + 4:
            raise ApiError(413, f"That picture is too large (the limit is {limit // 1_048_576} MB).",
                           code="image_too_large")
        try:
            return base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ApiError(400, "That picture's data URL is not valid base64.", code="invalid_image_url") from exc
    return await fetch_image(url, max_bytes=limit, timeout_s=web.settings.fetch_timeout_s)
