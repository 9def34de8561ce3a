"""Hostile spellings of loopback and metadata addresses, against servers on loopback only.

A guard server on 127.0.0.1 stands for the private service a link must never reach. It
speaks just enough HTTP to hand out a picture, and counts every TCP connection it
accepts: each test ends by asserting that count is zero. The control tests show that
the same spellings do reach the guard when the policy allows loopback, so a refusal is
the fetcher's doing and not a URL that could not have connected anyway.

127.0.0.2 stands in for "a public host" (the tests' policy allows it alone), as in
test_fetch.py.
"""

from __future__ import annotations

import asyncio
import io

import pytest
from PIL import Image

from bots.fetch import FetchError, fetch_image, is_public_address

PRIVATE = "public addresses"  # the link_private sentence the user reads


def png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (4, 5, 6)).save(buf, "PNG")
    return buf.getvalue()


class RawServer:
    """A bare HTTP/1.0 server on ``host``: ``answer(path)`` gives status line, headers, body."""

    def __init__(self, answer):
        self.answer, self.connections, self.paths = answer, 0, []

    async def start(self, host: str) -> int:
        self.server = await asyncio.start_server(self._handle, host, 0)
        return self.server.sockets[0].getsockname()[1]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            path = head.split(b" ", 2)[1].decode("latin-1")
            self.paths.append(path)
            status, headers, body = self.answer(path)
            lines = [f"HTTP/1.1 {status}".encode(), *(f"{k}: {v}".encode() for k, v in headers.items()),
                     f"Content-Length: {len(body)}".encode(), b"Connection: close", b"", b""]
            writer.write(b"\r\n".join(lines) + body)
            await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()

    async def close(self) -> None:
        self.server.close()
        await self.server.wait_closed()


@pytest.fixture
async def guard():
    """The private service on 127.0.0.1: (port, server). Fails the test if contacted."""
    server = RawServer(lambda path: ("200 OK", {"Content-Type": "image/png"}, png()))
    port = await server.start("127.0.0.1")
    yield port, server
    await server.close()


@pytest.fixture
async def redirector():
    """A 'public' server on 127.0.0.2 that redirects /go?n to ``targets[n]``: (port, targets)."""
    targets: list[str] = []
    server = RawServer(lambda path: ("302 Found", {"Location": targets[int(path.split("?", 1)[1])]}, b""))
    port = await server.start("127.0.0.2")
    yield port, targets
    await server.close()


def only_127_0_0_2(address: str) -> bool:
    return address == "127.0.0.2"


def loopback_too(address: str) -> bool:
    return address in ("127.0.0.1", "127.0.0.2", "::ffff:7f00:1")


NAMES = {
    "pics.test": ["127.0.0.2"],
    # public-looking names that resolve inside
    "images.example.com": ["127.0.0.1"],
    "images.example.com.": ["127.0.0.1"],
    "cdn.example.net": ["::ffff:127.0.0.1"],
    "v6.example.org": ["64:ff9b::7f00:1"],
    "sixtofour.example.org": ["2002:7f00:1::1"],
    "meta.example.com": ["169.254.169.254"],
    "half.example.com": ["127.0.0.2", "127.0.0.1"],
}


async def resolve(host: str, port: int) -> list[str]:
    if host not in NAMES:
        raise OSError("no such host")
    return NAMES[host]


def fetch(url: str, **kw):
    kw.setdefault("max_bytes", 1_000_000)
    kw.setdefault("timeout_s", 5)
    kw.setdefault("allowed", only_127_0_0_2)
    kw.setdefault("resolve", resolve)
    return fetch_image(url, **kw)


# every spelling of 127.0.0.1 (P: the guard's port)
LOOPBACK_SPELLINGS = [
    "１２７.０.０.１",  # full-width digits
    "１２７．０．０．１",  # full-width digits and full stops
    "127。0。0。1",  # ideographic full stops
    "127｡0｡0｡1",  # half-width ideographic full stops
    "①②⑦.0.0.1",  # circled digits
    "127.0.0.1.",  # trailing dot
    "１２７.０.０.１.",  # both
    "2130706433",  # decimal
    "２１３０７０６４３３",  # full-width decimal
    "0177.0.0.1",  # octal
    "0x7f.1",  # hex, short
    "0x7f000001",  # hex
    "0X7F.0.0.1",  # hex, capitals
    "127.1",  # short
    "127.0.1",  # short
    "017700000001",  # octal, whole
    "127%2E0%2E0%2E1",  # percent-encoded dots
    "[::ffff:127.0.0.1]",  # IPv4-mapped
    "[::ffff:7f00:1]",  # the same, hex
    "[::127.0.0.1]",  # IPv4-compatible
    "[::ffff:0:7f00:1]",  # SIIT
    "[64:ff9b::7f00:1]",  # NAT64
    "[64:ff9b:1::7f00:1]",  # local-use NAT64
    "[2002:7f00:1::]",  # 6to4
    "[2001:0:4136:e378:8000:63bf:80ff:fffe]",  # Teredo, client 127.0.0.1
    "images.example.com",  # a public-looking name resolving to 127.0.0.1
    "images.example.com.",  # the same, with a trailing dot
    "ＩＭＡＧＥＳ．ｅｘａｍｐｌｅ．ｃｏｍ",  # the same, full width
    "cdn.example.net",  # resolving to ::ffff:127.0.0.1
    "v6.example.org",  # resolving to NAT64 64:ff9b::7f00:1
    "sixtofour.example.org",  # resolving to 6to4 2002:7f00:1::1
    "half.example.com",  # one public address, one not
]

METADATA_URLS = [
    "http://１６９.２５４.１６９.２５４/latest/meta-data/",
    "http://169。254。169。254/latest/meta-data/",
    "http://169.254.169.254./latest/meta-data/",
    "http://2852039166/latest/meta-data/",
    "http://0xa9fea9fe/latest/meta-data/",
    "http://0251.0376.0251.0376/latest/meta-data/",
    "http://169.254.43518/latest/meta-data/",
    "http://[::ffff:169.254.169.254]/latest/meta-data/",
    "http://[64:ff9b::a9fe:a9fe]/latest/meta-data/",
    "http://meta.example.com/latest/meta-data/",
]


@pytest.mark.parametrize("host", LOOPBACK_SPELLINGS)
async def test_loopback_spellings_are_refused_before_any_connection(guard, host):
    port, server = guard
    for policy in (only_127_0_0_2, is_public_address):  # the tests' and the production default
        with pytest.raises(FetchError, match=PRIVATE):
            await fetch(f"http://{host}:{port}/x.png", allowed=policy)
        with pytest.raises(FetchError, match=PRIVATE):
            await fetch(f"https://{host}:{port}/x.png", allowed=policy)
    assert server.connections == 0, server.paths


@pytest.mark.parametrize("url", METADATA_URLS)
async def test_metadata_spellings_are_refused(url):
    for policy in (only_127_0_0_2, is_public_address):
        with pytest.raises(FetchError, match=PRIVATE):
            async with asyncio.timeout(10):
                await fetch(url, allowed=policy)


@pytest.mark.parametrize("host", LOOPBACK_SPELLINGS)
async def test_redirects_to_loopback_spellings_are_refused(guard, redirector, host):
    port, server = guard
    redirect_port, targets = redirector
    targets.append(f"http://{host}:{port}/x.png")
    targets.append(f"//{host}:{port}/x.png")  # scheme-relative
    for n in range(len(targets)):
        with pytest.raises(FetchError, match=PRIVATE):
            await fetch(f"http://pics.test:{redirect_port}/go?{n}")
    assert server.connections == 0, server.paths


async def test_redirects_to_metadata_spellings_are_refused(redirector):
    redirect_port, targets = redirector
    targets.extend(METADATA_URLS)
    for n in range(len(targets)):
        with pytest.raises(FetchError, match=PRIVATE):
            async with asyncio.timeout(10):
                await fetch(f"http://pics.test:{redirect_port}/go?{n}")


CONNECTABLE = ["１２７.０.０.１", "127。0。0。1", "①②⑦.0.0.1", "127.0.0.1", "[::ffff:127.0.0.1]"]


@pytest.mark.parametrize("host", CONNECTABLE)
async def test_control_the_same_spellings_reach_loopback_when_allowed(guard, redirector, host):
    """The refusals above are the policy's doing: allow loopback and these spellings connect."""
    port, server = guard
    assert await fetch(f"http://{host}:{port}/x.png", allowed=loopback_too) == png()
    redirect_port, targets = redirector
    targets.append(f"http://{host}:{port}/y.png")
    assert await fetch(f"http://pics.test:{redirect_port}/go?0", allowed=loopback_too) == png()
    assert server.paths == ["/x.png", "/y.png"]


async def test_a_public_name_with_odd_spelling_is_still_fetched():
    server = RawServer(lambda path: ("200 OK", {"Content-Type": "image/png"}, png()))
    port = await server.start("127.0.0.2")
    try:
        for host in ("pics.test", "PICS.test", "ｐｉｃｓ.test", "pics。test"):
            assert await fetch(f"http://{host}:{port}/cat.png") == png()
        assert await fetch(f"http://127.0.0.2:{port}/cat.png") == png()
    finally:
        await server.close()


def test_embedded_ipv4_is_judged_by_the_ipv4_address():
    for private in ("::127.0.0.1", "::ffff:127.0.0.1", "::ffff:0:127.0.0.1", "::10.0.0.1",
                    "64:ff9b::127.0.0.1", "64:ff9b::169.254.169.254", "64:ff9b:1::a00:1",
                    "2002:7f00:1::", "2002:a9fe:a9fe::1", "2002:c0a8:101::1",
                    "2001:0:4136:e378:8000:63bf:80ff:fffe", "2001:0:53aa:64c:0:0:f5ff:fffe",
                    "fec0::1", "::", "0.0.0.0", "::1", "fe80::1%eth0"):
        assert not is_public_address(private), private
    for public in ("64:ff9b::8.8.8.8", "2002:808:808::1", "2606:4700:4700::1111", "8.8.8.8",
                   "::ffff:8.8.8.8"):
        assert is_public_address(public), public


async def test_links_with_credentials_or_junk_hosts_are_refused(guard):
    port, server = guard
    for url in (f"http://pics.test@127.0.0.1:{port}/x.png", f"http://127.0.0.1 :{port}/x.png",
                f"http://127.0.0.1%00.pics.test:{port}/x.png", f"http://1.2.3.4.5:{port}/x.png",
                f"http://256.0.0.1:{port}/x.png", f"http://[::1]:{port}/x.png"):
        with pytest.raises(FetchError):
            await fetch(url)
    assert server.connections == 0, server.paths
