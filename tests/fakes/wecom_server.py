"""A loopback stand-in for WeCom's AI-bot long-connection server, driving the unmodified SDK.

It speaks the frame protocol WeCom's SDK speaks (JSON ``{cmd, headers: {req_id}, body}``
over TLS WebSocket): ``aibot_subscribe`` with the bot id and secret, ``ping``, message
callbacks pushed to the bot (``aibot_msg_callback``: text, picture, mixed, quoted; group
and direct chats), and the bot's ``aibot_respond_msg`` (streams, on the callback's
req_id) and ``aibot_send_msg``, each acknowledged by req_id. Pictures are served
AES-256-CBC encrypted (IV: the key's first 16 bytes, PKCS#7 padded to 32 bytes) from an
HTTPS address, as WeCom's are. Everything the bot sends is kept in ``frames``; what
WeCom would refuse is acknowledged with an error and noted in ``violations``.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import hashlib
import ipaddress
import json
import os
import ssl
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.x509.oid import NameOID
from websockets.asyncio.server import serve

__all__ = ["FakeWecom", "make_certificates", "fake_wecom", "wecom_certificates"]

MAX_BYTES = 20480  # what WeCom takes in one stream or markdown message
REFUSED = 846608  # the errcode used for a refused frame (a stream past its window, a bad body)


def make_certificates(directory: Path) -> tuple[Path, ssl.SSLContext]:
    """A test CA (its PEM file, for ``QVL_WECOM_CA_FILE``) and a server context whose
    certificate it signed, for 127.0.0.1."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "qvl test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
          .not_valid_after(now + datetime.timedelta(days=2))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    ca_file, cert_file, key_file = directory / "ca.pem", directory / "server.pem", directory / "server.key"
    ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_file, key_file)
    return ca_file, context


def encrypt(data: bytes, key: bytes) -> bytes:
    """WeCom's file encryption: AES-256-CBC, IV the key's first 16 bytes, PKCS#7 to 32 bytes."""
    pad = 32 - len(data) % 32
    encryptor = Cipher(algorithms.AES(key), modes.CBC(key[:16])).encryptor()
    return encryptor.update(data + bytes([pad]) * pad) + encryptor.finalize()


class FakeWecom:
    """The long-connection server and the picture host, on loopback ports that survive
    :meth:`stop` / :meth:`start` (a WeCom outage)."""

    BOT_ID, SECRET = "aibot-qvl-test", "test-secret-0123456789"
    GROUP, ALICE, BOB = "wrGroupChat1", "alice", "bob"

    def __init__(self, server_context: ssl.SSLContext):
        self.context = server_context
        self.frames: list[dict] = []  # every frame the bot sent, in order
        self.violations: list[str] = []  # what WeCom would have refused
        self.subscribes = self.pings = self.connections = 0
        self.stream_window_s: float | None = None  # refuse stream frames this long after the callback
        self.callbacks: dict[str, tuple[float, dict]] = {}  # req_id → (time pushed, body)
        self.expired: set[str] = set()  # callbacks whose reply window WeCom has closed
        self.answer_pings = True  # False: a half-open connection (pings go unanswered)
        self._finished: set[str] = set()  # stream ids ended
        self._socket = None  # the authenticated connection
        self._server = self._pictures = None
        self._blobs: dict[str, bytes] = {}
        self.port = self.picture_port = 0
        self._n = 0
        self._changed = asyncio.Event()

    # --- running ----------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"wss://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._server = await serve(self._connection, "127.0.0.1", self.port, ssl=self.context)
        self.port = self._server.sockets[0].getsockname()[1]
        if self._pictures is None:
            app = web.Application()
            app.router.add_get("/pictures/{name}", self._picture)
            self._pictures = web.AppRunner(app)
            await self._pictures.setup()
            site = web.TCPSite(self._pictures, "127.0.0.1", self.picture_port, ssl_context=self.context)
            await site.start()
            self.picture_port = site._server.sockets[0].getsockname()[1]

    async def stop(self, *, pictures: bool = False) -> None:
        """Close the server and every connection (the bot sees its connection drop)."""
        self._socket = None
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        if pictures and self._pictures is not None:
            await self._pictures.cleanup()
            self._pictures = None

    def abort(self) -> None:
        """Cut the bot's connection without a closing handshake (a network failure)."""
        if self._socket is not None:
            self._socket.transport.abort()

    async def _connection(self, socket) -> None:
        self.connections += 1
        try:
            async for raw in socket:
                frame = json.loads(raw)
                self.frames.append(frame)
                answer = self._answer(frame, socket)
                if frame.get("cmd") != "ping" or self.answer_pings:
                    await socket.send(json.dumps(answer))
                self._changed.set()
        except Exception:  # a connection closed under it: the bot's to notice
            pass
        finally:
            if self._socket is socket:
                self._socket = None

    def _answer(self, frame: dict, socket) -> dict:
        cmd, req_id = frame.get("cmd"), frame.get("headers", {}).get("req_id", "")
        body, error = frame.get("body") or {}, None
        if cmd == "aibot_subscribe":
            self.subscribes += 1
            if body.get("bot_id") == self.BOT_ID and body.get("secret") == self.SECRET:
                self._socket = socket
            else:
                error = "invalid bot_id or secret"
        elif cmd == "ping":
            self.pings += 1
        elif socket is not self._socket:
            error = "not subscribed"
        elif cmd == "aibot_respond_msg":
            error = self._check_respond(req_id, body)
        elif cmd == "aibot_send_msg":
            error = self._check_send(body)
        else:
            error = f"unknown cmd {cmd}"
        if error and cmd != "aibot_subscribe":
            self.violations.append(f"{cmd}: {error}")
        return {"headers": {"req_id": req_id}, "errcode": REFUSED if error else 0, "errmsg": error or "ok"}

    def _check_respond(self, req_id: str, body: dict) -> str | None:
        if req_id not in self.callbacks:
            return "no such callback"
        pushed, _ = self.callbacks[req_id]
        stream = body.get("stream") or {}
        if body.get("msgtype") != "stream" or not stream.get("id"):
            return "not a stream"
        if stream["id"] in self._finished:
            return "stream already finished"
        if req_id in self.expired or (self.stream_window_s is not None
                                      and time.monotonic() - pushed > self.stream_window_s):
            return "stream reply window passed"
        if len(str(stream.get("content", "")).encode()) > MAX_BYTES:
            return "content too long"
        for item in stream.get("msg_item") or ():
            data = base64.b64decode(item["image"]["base64"])
            if hashlib.md5(data).hexdigest() != item["image"]["md5"] or data[:3] not in (b"\xff\xd8\xff", b"\x89PN"):
                return "bad picture"
        if stream.get("finish"):
            self._finished.add(stream["id"])
        return None

    def _check_send(self, body: dict) -> str | None:
        if not body.get("chatid") or body.get("msgtype") != "markdown":
            return "bad active message"
        if len(body["markdown"]["content"].encode()) > MAX_BYTES:
            return "content too long"
        return None

    async def _picture(self, request: web.Request) -> web.Response:
        blob = self._blobs.get(request.match_info["name"])
        return web.Response(body=blob) if blob is not None else web.Response(status=404)

    # --- users ------------------------------------------------------------------------

    def picture(self, data: bytes) -> dict:
        """A picture as a message carries it: an HTTPS address and the key to decrypt it."""
        key = os.urandom(32)
        name = f"p{len(self._blobs)}"
        self._blobs[name] = encrypt(data, key)
        return {"url": f"https://127.0.0.1:{self.picture_port}/pictures/{name}",
                "aeskey": base64.b64encode(key).decode().rstrip("=")}

    async def send(self, user: str, msgtype: str, payload: dict, *, group: str | None = None,
                   quote: dict | None = None) -> str:
        """Push one message callback to the bot; its req_id."""
        if self._socket is None:
            raise AssertionError("no bot is connected")
        self._n += 1
        req_id = f"req{self._n}-{os.urandom(4).hex()}"
        body = {"msgid": f"msg{self._n}-{os.urandom(4).hex()}", "aibotid": self.BOT_ID,
                "chattype": "group" if group else "single", "from": {"userid": user},
                "msgtype": msgtype, msgtype: payload}
        if group:
            body["chatid"] = group
        if quote:
            body["quote"] = quote
        self.callbacks[req_id] = (time.monotonic(), body)
        await self._socket.send(json.dumps({"cmd": "aibot_msg_callback", "headers": {"req_id": req_id},
                                            "body": body}))
        return req_id

    async def text(self, user: str, text: str, *, group: str | None = None, quote: dict | None = None) -> str:
        return await self.send(user, "text", {"content": f"@qvl {text}" if group else text}, group=group, quote=quote)

    async def image(self, user: str, data: bytes, *, group: str | None = None) -> str:
        return await self.send(user, "image", self.picture(data), group=group)

    async def mixed(self, user: str, *parts: str | bytes, group: str | None = None) -> str:
        items = [{"msgtype": "text", "text": {"content": p}} if isinstance(p, str)
                 else {"msgtype": "image", "image": self.picture(p)} for p in parts]
        return await self.send(user, "mixed", {"msg_item": items}, group=group)

    def quote_image(self, data: bytes) -> dict:
        return {"msgtype": "image", "image": self.picture(data)}

    @staticmethod
    def quote_text(text: str) -> dict:
        return {"msgtype": "text", "text": {"content": text}}

    # --- what the bot sent --------------------------------------------------------------

    def stream(self, req_id: str) -> list[dict]:
        """The stream frames answering callback ``req_id``, in order."""
        return [f["body"]["stream"] for f in self.frames
                if f.get("cmd") == "aibot_respond_msg" and f["headers"]["req_id"] == req_id]

    def final(self, req_id: str) -> dict | None:
        return next((s for s in self.stream(req_id) if s.get("finish")), None)

    def active(self, chat: str | None = None) -> list[str]:
        """The texts of active messages (``aibot_send_msg``), to ``chat`` if given."""
        return [f["body"]["markdown"]["content"] for f in self.frames if f.get("cmd") == "aibot_send_msg"
                and (chat is None or f["body"]["chatid"] == chat)]

    async def wait_for(self, condition: Callable[[], object], *, timeout: float = 30, what: str = "it"):
        """Wait until ``condition()`` is true (re-checked on every frame and every 0.1 s)."""
        deadline = asyncio.get_running_loop().time() + timeout
        while not (result := condition()):
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                raise TimeoutError(f"no {what} after {timeout}s; frames: {json.dumps(self.frames)[-3000:]}")
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), timeout=min(left, 0.1))
            except TimeoutError:
                pass
        return result

    async def wait_final(self, req_id: str, timeout: float = 30) -> dict:
        return await self.wait_for(lambda: self.final(req_id), timeout=timeout, what=f"final frame for {req_id}")


@pytest.fixture(scope="session")
def wecom_certificates(tmp_path_factory) -> tuple[Path, ssl.SSLContext]:
    return make_certificates(tmp_path_factory.mktemp("wecom-tls"))


@pytest.fixture
async def fake_wecom(wecom_certificates):
    fake = FakeWecom(wecom_certificates[1])
    fake.ca_file = wecom_certificates[0]
    await fake.start()
    try:
        yield fake
    finally:
        await fake.stop(pictures=True)
