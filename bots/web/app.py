"""The web frontend's application: FastAPI on uvicorn, one process, no build step.

``create_app`` wires the page (bots/web/page.py) and the OpenAI-compatible API
(bots/web/api.py) to one :class:`bots.web.turns.Web`; ``run`` serves it (``qvl web``,
and ``qvl up`` in a thread of its own).
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse

from bots.web.auth import Principal, Signer, load_secret, principal_for
from bots.web.turns import BadRequest, Web
from qvl.errors import UserFacingError
from qvl.settings import Settings

log = logging.getLogger(__name__)

STATUS_OF = {"rate_limited": 429, "image_too_large": 413, "text_too_long": 413, "picture_too_big_pixels": 413}
ERROR_TYPE = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
              404: "not_found_error", 413: "invalid_request_error", 429: "rate_limit_error",
              503: "service_unavailable"}


class ApiError(Exception):
    """An OpenAI-shaped error: ``{"error": {"message", "type", "param", "code"}}``."""

    def __init__(self, status: int, message: str, *, code: str | None = None, retry_after_s: int | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.retry_after_s = status, message, code, retry_after_s

    def response(self) -> JSONResponse:
        headers = {"Retry-After": str(self.retry_after_s)} if self.retry_after_s else None
        if self.status == 401:
            headers = {"WWW-Authenticate": "Bearer"}
        body = {"error": {"message": self.message, "type": ERROR_TYPE.get(self.status, "api_error"),
                          "param": None, "code": self.code}}
        return JSONResponse(body, status_code=self.status, headers=headers)


def refusal(reply) -> ApiError:
    """The API error for a refusal the core answered with (its ``key`` picks the status)."""
    # a refusal that passes with time (a rate limit, a fair share of the queue) is a 429
    status = 429 if reply.retry_after_s else STATUS_OF.get(reply.key or "", 400)
    return ApiError(status, reply.text, code=reply.key, retry_after_s=reply.retry_after_s)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_exposure(settings: Settings, sessions) -> None:
    """Refuse to listen beyond loopback while no API key exists (nobody could sign in but
    whoever holds a login link, which travels in the clear)."""
    if is_loopback(settings.web_host):
        return
    from storage import keys

    with sessions() as session:
        named = [k for k in keys.list_keys(session=session) if k.revoked_at is None and k.name != "operator"]
    if not named:
        raise UserFacingError(
            f"QVL_WEB_HOST={settings.web_host} listens beyond this machine, but no API key exists: "
            "create one first (qvl keys create NAME), or keep QVL_WEB_HOST=127.0.0.1")


def check_web_exposure(settings: Settings) -> None:
    """:func:`check_exposure` on the configured database (for ``qvl up``, before starting)."""
    if is_loopback(settings.web_host):
        return
    from storage.db import make_engine, make_sessionmaker

    engine = make_engine(settings.resolved_database_url())
    try:
        check_exposure(settings, make_sessionmaker(engine))
    finally:
        engine.dispose()


def create_app(settings: Settings, *, redis_url: str) -> FastAPI:
    """The page and the API on one core. Raises :class:`UserFacingError` when the
    address is beyond loopback and no key exists."""
    web = Web(settings, redis_url=redis_url, signer=Signer(load_secret(settings)))
    check_exposure(settings, web.sessions)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await web.start()
        try:
            yield
        finally:
            await web.close()

    app = FastAPI(title="qvl", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.web = web

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        return exc.response()

    @app.exception_handler(BadRequest)
    async def _bad_request(request: Request, exc: BadRequest):
        return ApiError(exc.status, exc.message, code=exc.code).response()

    @app.exception_handler(UserFacingError)
    async def _user_facing(request: Request, exc: UserFacingError):
        return ApiError(400, exc.text(None), code="bad_request").response()

    from bots.web import api, page

    app.include_router(api.router)
    app.include_router(page.router)
    return app


async def principal_of(request: Request) -> Principal:
    """Whom the request's ``Authorization: Bearer`` speaks for; 401 otherwise."""
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(401, "Missing API key: send Authorization: Bearer YOUR_KEY (qvl keys create NAME).",
                       code="invalid_api_key")
    web: Web = request.app.state.web
    principal = await asyncio.to_thread(principal_for, web.sessions, web.signer, token)
    if principal is None:
        raise ApiError(401, "Incorrect or revoked API key.", code="invalid_api_key")
    return principal


Caller = Annotated[Principal, Depends(principal_of)]  # a route's argument: whom the request speaks for


async def read_json(request: Request, limit: int) -> Any:
    """The request's JSON body, at most ``limit`` bytes (413 beyond, 400 when not JSON)."""
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > limit:
        raise ApiError(413, f"The request is too large (over {limit // 1_048_576} MB).", code="request_too_large")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise ApiError(413, f"The request is too large (over {limit // 1_048_576} MB).",
                           code="request_too_large")
    try:
        return json.loads(body)
    except ValueError as exc:
        raise ApiError(400, f"The body is not JSON: {exc}", code="bad_json") from exc


def body_limit(settings: Settings) -> int:
    """Largest request body: every picture of a message at its largest, base64-encoded,
    twice over (a history carries earlier pictures too), plus the text."""
    return settings.images_per_message * settings.image_max_bytes * 8 // 3 + 4 * settings.text_max_chars + (1 << 20)


async def run(settings: Settings, *, redis_url: str) -> None:
    """Serve the page and the API on ``QVL_WEB_HOST:QVL_WEB_PORT`` until cancelled."""
    import uvicorn

    app = create_app(settings, redis_url=redis_url)
    config = uvicorn.Config(app, host=settings.web_host, port=settings.web_port, log_level="warning",
                            access_log=False, lifespan="on")
    server = uvicorn.Server(config)
    try:
        await server.serve()
    except SystemExit:  # uvicorn exits when it cannot bind; in qvl up's thread that must be an error
        pass
    if not server.started:
        raise UserFacingError(f"the web frontend could not listen on {settings.web_host}:{settings.web_port} "
                              "(in use? set QVL_WEB_PORT)")
