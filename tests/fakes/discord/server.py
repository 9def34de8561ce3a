""":class:`FakeDiscord` itself (the parts mixed together, served on 127.0.0.1), the
``running`` helper and the ``fake_discord`` fixture."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import pytest_asyncio
from aiohttp import web

from .events import UserEventsMixin
from .gateway import GatewayMixin
from .interactions import InteractionsMixin
from .payloads import PayloadsMixin
from .rest import RestMixin
from .state import WorldState

log = logging.getLogger("tests.fakes.discord")


class FakeDiscord(
    GatewayMixin, UserEventsMixin, RestMixin, InteractionsMixin, PayloadsMixin, WorldState
):
    """Discord's REST API and Gateway on 127.0.0.1, with records for assertions.

    Records: ``requests`` (every REST :class:`Call`), ``sent`` (:class:`SentMessage`),
    ``edits``, ``deleted`` ((channel_id, message_id)), ``typing``, ``reactions``,
    ``interaction_responses``, ``command_syncs`` ((guild_id or None, [names])),
    ``dispatched`` ((event, payload) for every gateway dispatch), ``presences``,
    ``unknown_routes``, ``errors`` (the fake's own bugs), ``gateway_connections``
    ((path, query) per websocket), ``identify_count``, ``resume_count``.
    """

    async def start(self) -> FakeDiscord:
        """Serve on 127.0.0.1 on a free port; returns self."""
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_get("/gateway", self._gateway)
        app.router.add_get("/gateway/resume", self._gateway)
        app.router.add_route("*", r"/api/v{version:\d+}/{tail:.*}", self._api)
        app.router.add_get("/attachments/{tail:.*}", self._cdn)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self

    async def stop(self) -> None:
        """Close every websocket (1001, going away) and the server."""
        for conn in list(self._conns):
            conn.dropped = True
            self._detach(conn)
            with contextlib.suppress(Exception):
                await conn.ws.close(code=1001, message=b"fake Discord stopping")
        for session in self._sessions.values():
            session.alive = False
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @contextlib.contextmanager
    def patch_discord(self) -> Iterator[FakeDiscord]:
        """Point discord.py's REST base and default gateway URL here; restore after.

        discord.py's plain Client never asks GET /gateway/bot (only the sharded one
        does): it connects to the class attribute ``DiscordWebSocket.DEFAULT_GATEWAY``
        and afterwards to READY's ``resume_gateway_url``.
        """
        import discord.gateway
        import discord.http
        import yarl

        route, ws = discord.http.Route, discord.gateway.DiscordWebSocket
        old = route.BASE, ws.DEFAULT_GATEWAY
        route.BASE, ws.DEFAULT_GATEWAY = self.api_base, yarl.URL(self.gateway_url)
        try:
            yield self
        finally:
            route.BASE, ws.DEFAULT_GATEWAY = old


# ---------------------------------------------------------------------------- helpers for tests


@contextlib.asynccontextmanager
async def running(client: Any, token: str = "x", *, timeout: float = 10.0) -> AsyncIterator[Any]:
    """Run ``client.start(token)`` as a task, wait for on_ready and for every guild
    of READY to be available, and close the client on exit.

    Raises what ``start`` raised if the client dies before it is ready, TimeoutError if
    it is not ready in ``timeout`` seconds.
    """
    task = asyncio.create_task(client.start(token), name="discord-client")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    try:
        while not (client.is_ready() and not any(g.unavailable for g in client.guilds)):
            if task.done():
                task.result()
                raise RuntimeError("the client stopped before it became ready")
            if loop.time() > deadline:
                raise TimeoutError(f"the client was not ready after {timeout}s")
            await asyncio.sleep(0.01)
        yield client
    finally:
        await client.close()
        done, _ = await asyncio.wait({task}, timeout=5.0)
        if not done:
            task.cancel()
        elif not task.cancelled() and task.exception() is not None:
            log.warning("discord client ended with %r", task.exception())


@pytest_asyncio.fixture
async def fake_discord() -> AsyncIterator[FakeDiscord]:
    """A started :class:`FakeDiscord` with the default world, discord.py pointed at it.

    Fails the test at teardown if the fake itself raised (a bug in the fake).
    """
    fake = await FakeDiscord().start()
    try:
        with fake.patch_discord():
            yield fake
    finally:
        await fake.stop()
    if fake.errors:
        pytest.fail(f"fake Discord raised while serving: {fake.errors}")
