"""The link fetcher against real HTTP servers on loopback.

127.0.0.2 stands in for "a public host" (the tests' policy allows it alone); 127.0.0.1
is the private service a hostile link tries to reach.
"""

from __future__ import annotations

import asyncio
import io

import pytest
from aiohttp import web
from PIL import Image

from bots.fetch import FetchError, fetch_image, is_public_address


def png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (1, 2, 3)).save(buf, "PNG")
    return buf.getvalue()


async def serve(host: str, routes: dict) -> tuple[web.AppRunner, int, list[str]]:
    seen: list[str] = []
    app = web.Application()

    async def handler(request: web.Request) -> web.StreamResponse:
        seen.append(request.path)
        return await routes[request.path](request)

    app.router.add_route("GET", "/{tail:.*}", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, host, 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    return runner, port, seen


@pytest.fixture
async def servers():
    started = []

    async def start(host, routes):
        runner, port, seen = await serve(host, routes)
        started.append(runner)
        return port, seen

    yield start
    for runner in started:
        await runner.cleanup()


def only_127_0_0_2(address: str) -> bool:
    return address == "127.0.0.2"


def hosts(mapping):
    async def resolve(host, port):
        if host not in mapping:
            raise OSError("no such host")
        return mapping[host]
    return resolve


def fetch(url, **kw):
    kw.setdefault("max_bytes", 1_000_000)
    kw.setdefault("timeout_s", 5)
    kw.setdefault("allowed", only_127_0_0_2)
    kw.setdefault("resolve", hosts({"pics.test": ["127.0.0.2"], "metadata.test": ["169.254.169.254"],
                                    "inside.test": ["127.0.0.1"], "mixed.test": ["127.0.0.2", "10.0.0.1"]}))
    return fetch_image(url, **kw)


def test_public_address_policy():
    for private in ("127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254", "::1",
                    "fe80::1", "::ffff:127.0.0.1", "0.0.0.0", "224.0.0.1", "100.64.0.1", "fc00::1",
                    # IPv6 that carries a private IPv4 (compatible, NAT64, 6to4, Teredo)
                    "::127.0.0.1", "64:ff9b::7f00:1", "2002:7f00:1::", "2001:0:4136:e378:8000:63bf:80ff:fffe"):
        assert not is_public_address(private), private
    assert is_public_address("8.8.8.8") and is_public_address("2606:4700:4700::1111")


async def test_a_public_picture_is_fetched(servers):
    port, _ = await servers("127.0.0.2", {"/cat.png": lambda r: _png_response()})
    assert await fetch(f"http://pics.test:{port}/cat.png") == png()


async def _png_response():
    return web.Response(body=png(), content_type="image/png")


async def test_private_addresses_are_refused_before_any_connection(servers):
    port, seen = await servers("127.0.0.1", {"/secret": lambda r: _png_response()})
    for url in (f"http://127.0.0.1:{port}/secret", f"http://inside.test:{port}/secret",
                f"http://[::ffff:127.0.0.1]:{port}/secret", f"http://mixed.test:{port}/secret",
                "http://metadata.test/latest/meta-data/", "http://169.254.169.254/latest/meta-data/"):
        with pytest.raises(FetchError, match="public addresses"):
            await fetch(url)
    assert seen == []


async def test_redirects_to_private_addresses_are_refused(servers):
    inside_port, inside_seen = await servers("127.0.0.1", {"/secret": lambda r: _png_response()})

    async def to_inside(request):
        raise web.HTTPFound(f"http://127.0.0.1:{inside_port}/secret")

    async def to_metadata(request):
        raise web.HTTPFound("http://metadata.test/")

    port, _ = await servers("127.0.0.2", {"/a": to_inside, "/b": to_metadata})
    for path in ("/a", "/b"):
        with pytest.raises(FetchError, match="public addresses"):
            await fetch(f"http://pics.test:{port}{path}")
    assert inside_seen == []


async def test_size_time_and_content_are_capped(servers):
    async def huge(request):
        response = web.StreamResponse()  # no Content-Length: the cap is on what is read
        await response.prepare(request)
        for _ in range(100):
            await response.write(b"x" * 65536)
        return response

    released = asyncio.Event()

    async def slow(request):  # a server that answers only when the test lets it
        await released.wait()
        return await _png_response()

    async def text(request):
        return web.Response(text="<html>not a picture</html>", content_type="text/html")

    port, _ = await servers("127.0.0.2", {"/huge": huge, "/slow": slow, "/text": text})
    with pytest.raises(FetchError, match="too large"):
        await fetch(f"http://pics.test:{port}/huge", max_bytes=200_000)
    try:
        with pytest.raises(FetchError, match="too long"):
            async with asyncio.timeout(10):  # a bound of the test's own, should timeout_s be ignored
                await fetch(f"http://pics.test:{port}/slow", timeout_s=0.5)
    finally:
        released.set()  # the fetcher gave up first; now the server may finish (and shut down at once)
    with pytest.raises(FetchError, match="not a picture"):
        await fetch(f"http://pics.test:{port}/text")
    with pytest.raises(FetchError, match="http"):
        await fetch("file:///etc/passwd")
