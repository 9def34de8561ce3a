"""Fetch a picture from a link a user posted, without letting the link reach inside.

Only http(s); every address a host name resolves to must be public (no loopback,
private, link-local — cloud metadata lives at 169.254.169.254 — multicast or
reserved ranges), checked again on every redirect, and the connection goes to the
address that was checked (no DNS rebinding in between). Size and time are capped,
and what comes back must be a picture.

The host is checked in the form the HTTP client will actually use: the URL is parsed
once with yarl (what aiohttp parses with: NFKC, IDNA/UTS-46, full-width digits and
ideographic full stops become ASCII) and that parsed URL is what is requested. On top
of that, the host is normalised independently (percent-decoding, NFKC, every Unicode
full stop, IDNA/UTS-46, whitespace, trailing dots) and every spelling of an IPv4
address that a resolver would accept (``2130706433``, ``0177.0.0.1``, ``0x7f.1``,
``127.1``) is read as that address, so none of them can count as a name. IPv6 forms
that carry an IPv4 address (mapped, compatible, NAT64, 6to4) are judged by that address.
"""

from __future__ import annotations

import asyncio
import io
import ipaddress
import logging
import socket
import unicodedata
from collections.abc import Awaitable, Callable
from urllib.parse import unquote

import aiohttp
import idna
from aiohttp.abc import AbstractResolver
from PIL import Image, UnidentifiedImageError
from yarl import URL

from qvl.errors import UserFacingError

log = logging.getLogger(__name__)

Resolve = Callable[[str, int], Awaitable[list[str]]]


class FetchError(UserFacingError):
    """A link that cannot be used as a picture; the message says why, briefly."""


_NAT64_WELL_KNOWN = ipaddress.IPv6Network("64:ff9b::/96")  # RFC 6052: v4 in the last 32 bits
_NAT64_LOCAL = ipaddress.IPv6Network("64:ff9b:1::/48")  # RFC 8215
_IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")  # deprecated ::a.b.c.d
_IPV4_TRANSLATED = ipaddress.IPv6Network("::ffff:0:0:0/96")  # RFC 2765 SIIT
_SIX_TO_FOUR = ipaddress.IPv6Network("2002::/16")  # RFC 3056: v4 in bits 16-48
_TEREDO = ipaddress.IPv6Network("2001::/32")  # RFC 4380


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries and would reach, if any."""
    if ip.ipv4_mapped:
        return ip.ipv4_mapped
    low32 = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip in _IPV4_COMPATIBLE or ip in _IPV4_TRANSLATED or ip in _NAT64_WELL_KNOWN:
        return low32
    if ip in _SIX_TO_FOUR:
        return ip.sixtofour
    return None


def is_public_address(address: str) -> bool:
    """Whether ``address`` is a public unicast address.

    IPv6 addresses that embed an IPv4 address (IPv4-mapped ``::ffff:a.b.c.d``,
    IPv4-compatible ``::a.b.c.d``, SIIT ``::ffff:0:a.b.c.d``, NAT64 ``64:ff9b::/96``,
    6to4 ``2002::/16``) are public only if the embedded IPv4 address is; Teredo
    ``2001::/32`` and local-use NAT64 ``64:ff9b:1::/48`` are never public (see below).
    """
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address):
        if ip in _TEREDO or ip in _NAT64_LOCAL or ip.is_site_local:
            # Teredo tunnels to a client IPv4 address (stored XOR-ed) through a server
            # address of the sender's choosing, and the local-use NAT64 prefix places
            # the IPv4 address where the operator's prefix length says: neither can be
            # vetted from the address alone, and no picture host needs them. Site-local
            # fec0::/10 is deprecated private space that Python still calls global.
            return False
        embedded = _embedded_ipv4(ip)
        if embedded is not None:
            ip = embedded
    return ip.is_global and not ip.is_multicast and not ip.is_unspecified


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
        # connect to exactly the checked addresses, whatever the host looked like
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
            target = _checked_url(url, allowed)
            for _ in range(max_redirects + 1):
                # the parsed URL that was checked is the one requested: no second parse
                async with session.get(target, allow_redirects=False) as response:
                    if response.status in (301, 302, 303, 307, 308) and "Location" in response.headers:
                        url = response.headers["Location"]
                        target = _checked_url(url, allowed, base=target)
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


# Every character IDNA/UTS-46 (or a lenient parser) treats as a label separator.
_FULL_STOPS = str.maketrans({"\u3002": ".", "\uff0e": ".", "\uff61": ".", "\u2024": ".", "\ufe52": "."})
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-_.")


def _checked_url(url: str, allowed: Callable[[str], bool], base: URL | None = None) -> URL:
    """``url`` (joined to ``base``) parsed as the client will use it, once its host is vetted.

    Raises :class:`FetchError` for a link that is not http(s) or is malformed, and
    :class:`_Refused` for one whose host is, in any spelling, a non-allowed address.
    A host name passes here; the resolver then checks every address it resolves to.
    """
    try:
        parsed = URL(url)
        if base is not None:
            parsed = base.join(parsed)
        scheme, host, raw_host = parsed.scheme, parsed.host, parsed.raw_host
    except (ValueError, UnicodeError, TypeError) as exc:
        raise FetchError.of("link_failed") from exc
    if scheme not in ("http", "https") or not host or not raw_host:
        raise FetchError.of("link_scheme")
    if parsed.user is not None or parsed.password is not None:
        # not needed for a picture, and "user@host" is the classic way to hide the host
        raise FetchError.of("link_failed")
    for spelling in {host, raw_host, _normalised_host(host), _normalised_host(raw_host)}:
        address = _as_address(spelling)
        if address is not None and not allowed(address):
            raise _Refused(f"{url!r}: {address} is not a public address")
    if ":" not in raw_host:
        # A name the resolver will see. Anything but letters, digits, '-', '_' and '.'
        # (a space or a '%' that getaddrinfo might still read as an address) is refused.
        if not set(raw_host.lower()) <= _NAME_CHARS:
            raise FetchError.of("link_failed")
    return parsed


def _normalised_host(host: str) -> str:
    """``host`` as lenient parsers would read it: percent-decoded, NFKC, ASCII full stops,
    IDNA/UTS-46 mapped, lower case, no surrounding whitespace and no trailing dots."""
    text = unicodedata.normalize("NFKC", unquote(host)).translate(_FULL_STOPS).strip().lower()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    if ":" not in text:
        try:
            text = idna.encode(text.rstrip("."), uts46=True, std3_rules=False).decode("ascii")
        except (idna.IDNAError, UnicodeError, ValueError):
            pass  # not a valid name: keep the mapped text, still checked as an address
    return text.rstrip(".").strip()


def _as_address(host: str) -> str | None:
    """The address ``host`` denotes (canonical text), or None for a name.

    IPv4 is read as ``inet_aton`` does: one to four dot-separated parts, each decimal,
    octal (leading 0) or hex (0x); the last part fills the remaining bytes. A host whose
    last label is numeric but is no valid address is returned as ``"invalid"`` (which no
    policy allows): it is not a name either, and some resolver may still read it.
    """
    text = host.split("%", 1)[0].strip().rstrip(".")
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    if ":" in text:
        try:
            return str(ipaddress.IPv6Address(text))
        except ValueError:
            return "invalid"
    labels = text.split(".")
    if not labels or not _is_number(labels[-1]):
        return None
    value = _parse_ipv4(labels)
    return "invalid" if value is None else str(ipaddress.IPv4Address(value))


def _is_number(label: str) -> bool:
    label = label.lower()
    if label.startswith("0x"):
        return all(c in "0123456789abcdef" for c in label[2:])
    return label != "" and label.isascii() and label.isdigit()


def _parse_ipv4(labels: list[str]) -> int | None:
    if not 1 <= len(labels) <= 4 or not all(_is_number(label) for label in labels):
        return None
    numbers = []
    for label in labels:
        label = label.lower()
        if label.startswith("0x"):
            numbers.append(int(label[2:] or "0", 16))
        elif len(label) > 1 and label.startswith("0"):
            if any(c not in "01234567" for c in label):
                return None
            numbers.append(int(label, 8))
        else:
            numbers.append(int(label))
    *head, last = numbers
    if any(n > 255 for n in head) or last >= 256 ** (4 - len(head)):
        return None
    value = 0
    for n in head:
        value = value * 256 + n
    return value * 256 ** (4 - len(head)) + last


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
