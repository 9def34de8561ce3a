"""WeCom's AI-bot SDK (``wecom-aibot-python-sdk``), imported in the one place that knows how.

The SDK always connects with TLS and builds its TLS context once, at import, from
certifi's roots, with no option to change it. An operator behind a private gateway
(and the tests' loopback server) sets ``QVL_WECOM_CA_FILE``: :func:`trust` adds those
certificates to the SDK's own contexts. Certificates and host names are still checked.
Pictures are downloaded here rather than by the SDK, which reads any size it is sent.
"""

from __future__ import annotations

import logging
import ssl
import warnings
from pathlib import Path

import aiohttp

with warnings.catch_warnings():  # 1.0.2 imports websockets' legacy client names (deprecated, still there)
    warnings.simplefilter("ignore", DeprecationWarning)
    from aibot import WSClient, WSClientOptions, decrypt_file
    from aibot import api as _api
    from aibot import ws as _ws

from qvl.errors import UserFacingError

__all__ = ["SdkLogger", "WSClient", "WSClientOptions", "download_picture", "tls_context", "trust"]

log = logging.getLogger("bots.wecom.sdk")


def _contexts() -> tuple[ssl.SSLContext, ...]:
    contexts = (_ws._SSL_CONTEXT, _api._SSL_CONTEXT)
    for context in contexts:  # a new SDK release that changes this must not pass unnoticed
        if not isinstance(context, ssl.SSLContext) or context.verify_mode != ssl.CERT_REQUIRED \
                or not context.check_hostname:
            raise RuntimeError("wecom-aibot-python-sdk no longer sets up TLS as qvl expects; pin 1.0.x")
    return contexts


def trust(ca_file: Path | None) -> None:
    """Trust the certificates in ``ca_file`` (PEM) too, for the long connection and for
    picture downloads; None changes nothing. Raises :class:`UserFacingError` naming the
    setting when the file cannot be read."""
    contexts = _contexts()
    if ca_file is None:
        return
    for context in contexts:
        try:
            context.load_verify_locations(cafile=str(ca_file))
        except (OSError, ssl.SSLError) as exc:
            raise UserFacingError(f"QVL_WECOM_CA_FILE={ca_file} is not a readable PEM certificate file ({exc})") from exc


def tls_context() -> ssl.SSLContext:
    """The TLS context pictures are downloaded with: the SDK's, with what :func:`trust` added."""
    return _contexts()[1]


async def download_picture(url: str, aeskey: str | None, *, max_bytes: int, timeout_s: float) -> bytes:
    """The picture at ``url``, decrypted with its message's ``aeskey`` (AES-256-CBC, the IV
    the key's first 16 bytes). Raises :class:`UserFacingError` for a picture too large,
    a failed download or a key that does not fit."""
    if not url.startswith("https://"):
        raise UserFacingError.of("picture_unread")
    limit = max_bytes + 64  # the encryption's padding
    try:
        connector = aiohttp.TCPConnector(ssl=tls_context())
        async with aiohttp.ClientSession(connector=connector,
                                         timeout=aiohttp.ClientTimeout(total=timeout_s)) as session:
            async with session.get(url) as response:
                if response.status != 200:
                    log.warning("WeCom picture download answered %s", response.status)
                    raise UserFacingError.of("picture_unread")
                if (response.content_length or 0) > limit:
                    raise UserFacingError.of("image_too_large", mb=max_bytes // 1_048_576)
                data = bytearray()
                async for chunk in response.content.iter_chunked(65536):
                    data += chunk
                    if len(data) > limit:
                        raise UserFacingError.of("image_too_large", mb=max_bytes // 1_048_576)
    except (aiohttp.ClientError, TimeoutError) as exc:
        log.warning("WeCom picture download failed: %r", exc)
        raise UserFacingError.of("picture_unread") from exc
    if not aeskey:
        return bytes(data)
    try:
        return decrypt_file(bytes(data), aeskey)
    except (RuntimeError, ValueError) as exc:
        log.warning("WeCom picture could not be decrypted: %s", exc)
        raise UserFacingError.of("picture_unread") from exc


class SdkLogger:
    """The SDK's log lines into ours (it prints to stderr by default). Its debug lines
    carry whole message bodies: they stay at debug."""

    def debug(self, message: str, *args: object) -> None:
        log.debug("%s", message)

    def info(self, message: str, *args: object) -> None:
        log.debug("%s", message)  # every connect, auth and download: noise at info

    def warn(self, message: str, *args: object) -> None:
        log.warning("%s", message)

    def error(self, message: str, *args: object) -> None:
        log.warning("%s%s", message, "".join(f" {a}" for a in args))
