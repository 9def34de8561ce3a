"""The page: one HTML file with its script and style (no build step, nothing from the
internet), and the small JSON API it speaks (``/api/...``, NDJSON for a turn's progress)."""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, StreamingResponse

from bots.web.app import ApiError, Caller, body_limit, read_json
from bots.web.auth import login_redis_key
from bots.web.turns import Web, channel_of, progress
from qvl.protocol import Accepted
from storage import keys

router = APIRouter()
STATIC = Path(__file__).with_name("static")
FILES = {"app.js": "text/javascript", "app.css": "text/css", "favicon.svg": "image/svg+xml"}
CONVERSATION = re.compile(r"^[A-Za-z0-9_-]{6,40}$")
MESSAGE_ID = re.compile(r"^[A-Za-z0-9_-]{6,64}$")


@router.get("/", include_in_schema=False)
async def index():
    return FileResponse(STATIC / "index.html", media_type="text/html", headers={"Cache-Control": "no-cache"})


@router.get("/static/{name}", include_in_schema=False)
async def static(name: str):
    if name not in FILES:
        raise ApiError(404, "Not found.", code="not_found")
    return FileResponse(STATIC / name, media_type=FILES[name], headers={"Cache-Control": "no-cache"})


@router.get("/login", include_in_schema=False)
async def login(request: Request, token: str = ""):
    """A one-time link from ``qvl up``: signs the browser in as the operator."""
    web: Web = request.app.state.web
    used = await web.core.redis.getdel(login_redis_key(web.settings.namespace, token)) if token else None
    if used is None:
        return HTMLResponse("<!doctype html><meta charset=utf-8><title>qvl</title><p>This login link was used "
                            "already or has expired. Restart <code>qvl up</code> for a new one, or sign in "
                            "with an API key (<code>qvl keys create NAME</code>).<p><a href='/'>qvl</a>",
                            status_code=401)
    def operator() -> int:
        with web.sessions() as session:
            key = keys.operator_key(session=session)
            session.commit()
            return key.id

    session = web.signer.session(await asyncio.to_thread(operator))
    return RedirectResponse(f"/#session={session}", status_code=303)


@router.get("/api/me")
async def me(principal: Caller):
    return {"name": principal.name, "key_id": principal.key_id}


@router.get("/api/conversations")
async def conversations(request: Request, principal: Caller):
    web: Web = request.app.state.web
    found = await web.conversations(principal)
    return [{"id": channel_of(principal, c.scope_key)[1:], "title": c.title, "updated_at": c.updated_at.isoformat()}
            for c in found]


@router.get("/api/conversations/{conversation}")
async def conversation(request: Request, conversation: str, principal: Caller):
    web: Web = request.app.state.web
    if not CONVERSATION.match(conversation):
        raise ApiError(400, "Bad conversation id.", code="bad_conversation")
    entries = await web.entries(principal, "p" + conversation)
    out = []
    for entry in entries:
        originals = {part.image for part in entry.boxes}
        out.append({
            "role": entry.role, "text": entry.text, "error": entry.error, "job_id": entry.job_id,
            "state": entry.state.value if entry.state else None,
            "pictures": [{"url": web.link(principal, p.sha256), "sha256": p.sha256, "width": p.width,
                          "height": p.height} for p in entry.pictures],
            "boxes": [{"image": part.image, "boxes": [b.as_json() for b in part.boxes]} for part in entry.boxes],
            "annotated": {sha: web.link(principal, p.sha256) for sha, p in entry.annotated.items()},
            "originals": {sha: web.link(principal, sha) for sha in originals},
        })
    return out


@router.post("/api/chat")
async def chat(request: Request, principal: Caller):
    """One turn from the page; answers NDJSON: ``accepted``, then the turn's progress
    (``queued``, ``running``, ``text``), then ``done``; or one ``reply`` (a command's
    answer or a refusal, in the page's language)."""
    web: Web = request.app.state.web
    body = await read_json(request, body_limit(web.settings))
    if not isinstance(body, dict):
        raise ApiError(400, "Expected a JSON object.", code="bad_request")
    conv, message_id = str(body.get("conversation", "")), str(body.get("message_id", ""))
    if not CONVERSATION.match(conv) or not MESSAGE_ID.match(message_id):
        raise ApiError(400, "Bad conversation or message id.", code="bad_request")
    text = body.get("text") or ""
    if not isinstance(text, str):
        raise ApiError(400, "'text' must be a string.", code="bad_request")
    images = tuple(_data_url(u) for u in body.get("images") or ())
    language = "zh" if str(body.get("language", "")).lower().startswith("zh") else None
    result = await web.submit(principal, channel="p" + conv, message_id=message_id, text=text, images=images,
                              language=language)
    if isinstance(result, Accepted):
        workers = await web.workers_alive()
        events = _with_accepted(result.job_id, workers, progress(web, principal, result.job_id))
    else:
        events = _once({"type": "reply", "text": result.text, "error": result.error, "key": result.key,
                        "retry_after_s": result.retry_after_s})
    return StreamingResponse(_ndjson(events), media_type="application/x-ndjson",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


@router.get("/api/jobs/{job_id}/events")
async def job_events(request: Request, job_id: int, principal: Caller):
    """A turn's progress again (the page reloaded while it waited)."""
    web: Web = request.app.state.web
    if not await web.owns_job(principal, job_id):
        raise ApiError(404, "No such turn.", code="not_found")
    return StreamingResponse(_ndjson(progress(web, principal, job_id)), media_type="application/x-ndjson",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def _data_url(url: object) -> bytes:
    if not isinstance(url, str) or not url.startswith("data:") or ";base64," not in url:
        raise ApiError(400, "Pictures come as base64 data URLs.", code="invalid_image")
    try:
        return base64.b64decode(url.split(",", 1)[1], validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ApiError(400, "A picture's data URL is not valid base64.", code="invalid_image") from exc


async def _once(event: dict) -> AsyncIterator[dict]:
    yield event


async def _with_accepted(job_id: int, workers: int, events: AsyncIterator[dict]) -> AsyncIterator[dict]:
    yield {"type": "accepted", "job_id": job_id, "workers": workers}
    async for event in events:
        yield event


async def _ndjson(events: AsyncIterator[dict]) -> AsyncIterator[str]:
    async for event in events:
        yield json.dumps(event, ensure_ascii=False) + "\n"
