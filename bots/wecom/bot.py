"""The WeCom client: the AI bot's long connection in, the core in between, streamed answers out."""

from __future__ import annotations

import asyncio
import logging

from bots.core import DUPLICATE, Core
from bots.health import Health
from bots.picture_window import PictureBuffer
from bots.wecom.replies import Replies
from bots.wecom.sdk import SdkLogger, WSClient, WSClientOptions, download_picture, trust
from bots.wecom.translate import PLATFORM, Callback, PictureRef, incoming, language, parse, question
from qvl.errors import UserFacingError
from qvl.messages import say
from qvl.protocol import Reply
from qvl.settings import Settings

log = logging.getLogger(__name__)

PLACEHOLDERS = {"", "changeme", "change-me", "secret", "your_secret", "your-secret", "xxx", "..."}


class Link:
    """What one connection's SDK client said: authenticated, then closed (and why)."""

    def __init__(self) -> None:
        self.up, self.closed = asyncio.Event(), asyncio.Event()
        self.reason = ""

    def close(self, reason: object) -> None:
        if not self.closed.is_set():
            self.reason = str(reason)
            self.closed.set()


class WecomFrontend:
    """WeCom's AI bot over its long connection: questions to the core, answers streamed back.

    One SDK client per connection, never left to reconnect by itself (its reconnection
    recurses and gives up): :meth:`serve` connects again with backoff. Replies are
    delivered only while connected, so those finished in between go out after it.
    """

    def __init__(self, settings: Settings, core: Core):
        self.settings, self.core = settings, core
        self.pictures = PictureBuffer(settings.wecom_picture_window_s)
        self.client: WSClient | None = None  # the authenticated connection's, None between connections
        self.replies = Replies(settings, core, lambda: self.client)
        self.health = Health(PLATFORM, settings.data_dir)  # `python -m bots.health wecom`
        self.health.down()  # a mark from before a restart is not this connection's
        self.connections = 0  # authenticated connections so far
        self._order: dict[str, asyncio.Lock] = {}  # one person in one chat → their messages' turn

    def _client(self, link: Link) -> WSClient:
        settings = self.settings
        client = WSClient(WSClientOptions(
            bot_id=settings.wecom_bot_id or "", secret=settings.wecom_secret.get_secret_value(),
            ws_url=settings.wecom_ws_url, heartbeat_interval=max(1, int(settings.wecom_heartbeat_s * 1000)),
            max_reconnect_attempts=0, request_timeout=int(settings.fetch_timeout_s * 1000), logger=SdkLogger()))
        client.on("authenticated", link.up.set)
        client.on("disconnected", link.close)
        client.on("error", link.close)  # before authentication: refused or unreachable; after it: dead
        client.on("message", lambda frame: self.on_frame(client, frame))
        return client

    async def serve(self, *, auth_timeout_s: float = 20, max_backoff_s: float = 60) -> None:
        """Connect, serve until the connection drops, connect again: 1 s, doubling to
        ``max_backoff_s``, back to 1 s after each connection that authenticated."""
        trust(self.settings.wecom_ca_file)
        backoff = 1.0
        while True:
            link = Link()
            client = self._client(link)
            try:
                await client.connect()  # one attempt; failures arrive as "error"
                waits = [asyncio.ensure_future(link.up.wait()), asyncio.ensure_future(link.closed.wait())]
                await asyncio.wait(waits, timeout=auth_timeout_s, return_when=asyncio.FIRST_COMPLETED)
                for waiting in waits:
                    waiting.cancel()
                if link.up.is_set() and not link.closed.is_set():
                    backoff = 1.0
                    await self._connected(client, link)
                elif not link.closed.is_set():
                    link.close(f"no answer to the subscription within {auth_timeout_s:g} s")
            finally:
                client.remove_all_listeners()  # handlers still running answer on a dead client: logged
                client.disconnect()
            log.warning("WeCom: %s; reconnecting in %.0f s", _why(link.reason), backoff)
            await asyncio.sleep(backoff)
            backoff = min(max_backoff_s, backoff * 2)

    async def _connected(self, client: WSClient, link: Link) -> None:
        self.client = client
        self.connections += 1
        log.info("WeCom: connected to %s as bot %s", self.settings.wecom_ws_url, self.settings.wecom_bot_id)
        self.health.up()
        tasks = [asyncio.create_task(self.core.serve_replies(PLATFORM, self.replies.deliver), name="qvl-wecom-delivery"),
                 asyncio.create_task(self.health.keep_fresh(lambda: client.is_connected), name="qvl-wecom-health"),
                 asyncio.create_task(_watch(client, link), name="qvl-wecom-watch")]
        try:
            await link.closed.wait()
        finally:
            self.client = None
            self.health.down()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self.replies.connection_lost()

    # --- messages -------------------------------------------------------------------

    async def on_frame(self, client: WSClient, frame: dict) -> None:
        """One message callback: never raises (the SDK's emitter would re-raise it)."""
        cb = parse(frame.get("body"))
        if cb is None:
            return
        lang = language(cb.text)
        log.info("WeCom message %s from %s in %s", cb.msgid, cb.user_id, cb.chat_id or "a direct chat")
        try:
            await self._on_message(client, frame, cb)
        except UserFacingError as exc:
            await self.replies.say(client, frame, exc.text(lang))
        except Exception:
            log.exception("WeCom message %s failed", cb.msgid)
            await self.replies.say(client, frame, say("sorry", lang))

    async def _on_message(self, client: WSClient, frame: dict, cb: Callback) -> None:
        groups = self.settings.wecom_groups  # checked here too: pictures of other groups are not held
        if cb.chat_id and groups and cb.chat_id not in groups:
            return
        if cb.chat_id is None and not self.settings.wecom_private:
            return
        # One person's messages in one chat in order: a picture still downloading is held
        # before the question that follows it takes what is held.
        async with self._order.setdefault(cb.key, asyncio.Lock()):
            if not cb.text and not cb.quoted_text and not cb.quoted_pictures:  # pictures alone wait for the question
                for ref in cb.pictures:
                    self.pictures.hold(cb.key, await self._download(ref))
                return
            held = self.pictures.take(cb.key)
        text = question(cb)
        turn = incoming(cb, text=text)

        async def pictures() -> tuple[bytes, ...]:
            return (*held, *[await self._download(ref) for ref in (*cb.quoted_pictures, *cb.pictures)])

        stream = self.replies.open(client, frame, cb.msgid, turn.language)  # before the turn: its reply may come first
        try:
            result = await self.core.handle(turn, pictures=pictures)
        except BaseException:
            self.replies.drop(cb.msgid)
            raise
        if isinstance(result, Reply):
            self.replies.drop(cb.msgid)
            if result.key not in ("not_allowed", DUPLICATE):
                await self.replies.say(client, frame, result.text)
            return
        self.replies.watch(result.job_id, stream)

    async def _download(self, ref: PictureRef) -> bytes:
        return await download_picture(ref.url, ref.aeskey, max_bytes=self.settings.image_max_bytes,
                                      timeout_s=self.settings.fetch_timeout_s)


async def _watch(client: WSClient, link: Link, every_s: float = 0.5) -> None:
    """Close ``link`` once its socket is closed. The SDK says "disconnected" only when the
    socket closes with an error: a clean close by the server (and its own close after two
    unanswered pings) ends its receive loop without a word."""
    while client.is_connected:
        await asyncio.sleep(every_s)
    link.close("the server closed the connection")


def _why(reason: str) -> str:
    if "Authentication failed" in reason:
        return f"WeCom refused the bot id or secret ({reason}): check WECOM_BOT_ID and WECOM_BOT_SECRET"
    return f"connection lost ({reason or 'closed'})"


def check_credentials(settings: Settings) -> None:
    """Refuse to start without a bot id and a real secret (never shown)."""
    if not settings.wecom_bot_id or settings.wecom_secret is None:
        raise UserFacingError("Set WECOM_BOT_ID and WECOM_BOT_SECRET to the WeCom AI bot's id and secret "
                              "(admin console: Apps → AI bots → the bot → API mode: long connection).")
    if settings.wecom_secret.get_secret_value().strip().lower() in PLACEHOLDERS:
        raise UserFacingError("WECOM_BOT_SECRET is a placeholder: set it to the bot's secret.")


async def run(settings: Settings, *, redis_url: str | None = None, max_backoff_s: float = 60) -> None:
    """Run the WeCom frontend for good, reconnecting with backoff."""
    check_credentials(settings)
    trust(settings.wecom_ca_file)  # a bad CA file stops it here, with the setting's name
    core = Core(settings, redis_url_=redis_url)
    await core.check()
    frontend = WecomFrontend(settings, core)
    try:
        await frontend.serve(max_backoff_s=max_backoff_s)
    finally:
        frontend.replies.connection_lost()
        await core.close()
