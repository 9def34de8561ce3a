"""Fetch a picture from a link a user posted, without letting the link reach inside.

Only http(s); every address a host name resolves to must be public (no loopback,
private, link-local — cloud metadata lives at 169.254.169.254 — multicast or
reserved ranges), checked again on every redirect, and the connection goes to the
address that was checked (no DNS rebinding in between). Size and time are capped,
and what comes back must be a picture.
"""

from __future__ import annotations

import asyncio
import io
import ipaddress
import logging
import socket
from collections.abc import Awaitable, Callable
from urllib.parse import urljoin, urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver
from PIL import Image, UnidentifiedImageError

from qvl.errors import UserFacingError

log = logging.getLogger(__name__)

Resolve = Callable[[str, int], Awaitable[list[str]]]


class FetchError(UserFacingError):
    """A link that cannot be used as a picture; the message says why, briefly."""


def is_public_address(address: str) -> bool:
    """Whether ``address`` is a public unicast address (IPv4-mapped IPv6 unwrapped)."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


async def system_resolve(host: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [info[4][0] for info in infos]


class _CheckedResolver(AbstractResolver):
    """aiohttp resolver that refuses a host if any of its addresses is not allowed."""

    def __init__(self, resolve: Resolve, allowed: Callable[[str], bool]):
        self._resolve, self._allowed = resolve, allowed

    async def resolve(self, host: str, port: int = 0, family: int = socket.AF_INET) -> list[dict]:
        try:
            addresses = await self._resolve(host, port)
        except OSError as exc:
            raise OSError(f"cannot resolve {host}") from exc
        if not addresses or not all(self._allowed(a) for a in addresses):
            raise _Refused(f"{host} resolves to a non-public address")
        return [{"hostname": host, "host": a, "port": port,
                 "family": socket.AF_INET6 if ":" in a else socket.AF_INET,
                 "proto": 0, "flags": socket.AI_NUMERICHOST} for a in addresses]

    async def close(self) -> None:
        return None


class _Refused(OSError):
    pass


async def fetch_image(
    url: str,
    *,
    max_bytes: int,
    timeout_s: float,
    max_redirects: int = 3,
    allowed: Callable[[str], bool] = is_public_address,
    resolve: Resolve = system_resolve,
) -> bytes:
    """The bytes of the picture at ``url``. Raises :class:`FetchError` saying why not."""
    connector = aiohttp.TCPConnector(resolver=_CheckedResolver(resolve, allowed), use_dns_cache=False)
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    try:
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            for _ in range(max_redirects + 1):
                _check_url(url, allowed)
                async with session.get(url, allow_redirects=False) as response:
                    if response.status in (301, 302, 303, 307, 308) and "Location" in response.headers:
                        url = urljoin(url, response.headers["Location"])
                        continue
                    if response.status != 200:
                        raise FetchError.of("link_status", status=response.status)
                    data = await _read_capped(response, max_bytes)
                    _check_picture(data)
                    return data
            raise FetchError.of("link_redirects")
    except _Refused as exc:
        log.warning("refused to fetch %s: %s", url, exc)
        raise FetchError.of("link_private") from exc
    except (aiohttp.ClientConnectorError, aiohttp.ClientOSError) as exc:
        if isinstance(getattr(exc, "os_error", None), _Refused) or isinstance(exc.__cause__, _Refused):
            log.warning("refused to fetch %s: %s", url, exc)
            raise FetchError.of("link_private") from exc
        raise FetchError.of("link_unreachable") from exc
    except TimeoutError as exc:
        raise FetchError.of("link_timeout") from exc
    except aiohttp.ClientError as exc:
        raise FetchError.of("link_failed") from exc


def _check_url(url: str, allowed: Callable[[str], bool]) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise FetchError.of("link_scheme")
    host = parts.hostname
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return  # a name: the resolver checks every address it has
    if not allowed(host):
        raise _Refused(f"{host} is not a public address")


async def _read_capped(response: aiohttp.ClientResponse, max_bytes: int) -> bytes:
    mb = max_bytes // 1_048_576
    if response.content_length is not None and response.content_length > max_bytes:
        raise FetchError.of("image_too_large", mb=mb)
    chunks, size = [], 0
    async for chunk in response.content.iter_chunked(65536):
        size += len(chunk)
        if size > max_bytes:
            raise FetchError.of("image_too_large", mb=mb)
        chunks.append(chunk)
    return b"".join(chunks)


def _check_picture(data: bytes) -> None:
    try:
        with Image.open(io.BytesIO(data)):
            return
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise FetchError.of("link_not_picture") from exc
