"""The WeChat client: wechaty messages in, the core in between, replies out."""

from __future__ import annotations

import asyncio
import base64
import logging

from bots.core import DUPLICATE, Core
from bots.fetch import fetch_image
from bots.health import Health
from bots.text import split_message
from bots.wechat.compat import (
    FileBox,
    Message,
    MessageType,
    Wechaty,
    WechatyOptions,
    fresh_options,
    reset_caches,
)
from bots.wechat.translate import (
    MAX_CHARS,
    PLATFORM,
    PictureBuffer,
    incoming,
    split_quote,
    strip_trigger,
)
from qvl.errors import UserFacingError
from qvl.messages import say
from qvl.protocol import Reply
from qvl.settings import Settings

log = logging.getLogger(__name__)


class WechatFrontend(Wechaty):
    """A Wechaty bot that hands every question to the core and says what comes back."""

    def __init__(self, settings: Settings, core: Core, options: WechatyOptions):
        super().__init__(options)
        self.settings, self.core = settings, core
        self.pictures = PictureBuffer(settings.wechat_picture_window_s)
        self.logged_in = asyncio.Event()
        self._delivery: asyncio.Task | None = None
        self.health = Health(PLATFORM, settings.data_dir)  # `python -m bots.health wechat`
        self.health.down()  # a mark from before a restart is not this connection's
        self._said: dict[int, tuple[int, str | None]] = {}  # failed job → (parts said, first's id)

    async def on_login(self, contact) -> None:
        log.info("WeChat: logged in as %s", contact.contact_id)
        self.logged_in.set()
        self.health.up()
        if self._delivery is None or self._delivery.done():
            self._delivery = asyncio.create_task(self._deliver_forever(), name="qvl-wechat-delivery")

    async def on_logout(self, contact) -> None:
        log.warning("WeChat: logged out (%s)", getattr(contact, "contact_id", contact))
        self.health.down()  # up again at the first ding after a new login (see _connected)

    async def start(self) -> None:
        """Connect and listen until the event stream ends; errors propagate.

        Wechaty's own ``start()`` catches a dropped connection, sleeps 60 s and, if the
        service is still down, stops the whole event loop: :func:`run` reconnects instead.
        """
        await self.init_puppet()
        await self.init_puppet_event_bridge(self.puppet)
        await self.puppet.start()
        self.started = True

    async def close_delivery(self) -> None:
        """Stop the delivery loop (before the core it reads from is closed)."""
        if self._delivery is not None:
            self._delivery.cancel()
            await asyncio.gather(self._delivery, return_exceptions=True)

    async def on_message(self, msg: Message) -> None:
        try:  # wechaty swallows handler exceptions: log them here, and tell the user
            await self._on_message(msg)
        except UserFacingError as exc:
            await self._say_to(msg, exc.text("zh"))
        except Exception:
            log.exception("WeChat message %s failed", msg.message_id)
            await self._say_to(msg, say("sorry", "zh"))

    async def _on_message(self, msg: Message) -> None:
        if msg.is_self():
            return
        talker, room = msg.talker(), msg.room()
        room_id = room.room_id if room else None
        rooms = self.settings.wechat_rooms  # checked here too: pictures of other rooms are not held
        if room_id and rooms and room_id not in rooms:
            return
        user = talker.contact_id
        key = f"{room_id or 'dm'}:{user}"
        kind = msg.type()
        if kind == MessageType.MESSAGE_TYPE_IMAGE:
            self.pictures.hold(key, await self._image_bytes(msg), place=room_id or "dm", name=talker.name)
            return
        if kind != MessageType.MESSAGE_TYPE_TEXT:
            return
        if room is not None:
            # mention_text(): the text without the "@name\u2005" mentions WeChat writes
            quoted_name, quoted, text = split_quote(await msg.mention_text())
            text, triggered = strip_trigger(text, self.settings.wechat_trigger)
            if not triggered and not await msg.mention_self():
                return
        elif self.settings.wechat_private:
            quoted_name, quoted, text = split_quote(msg.text())
        else:
            return
        images = self.pictures.take(key)
        if quoted_name and quoted and quoted.startswith("[图片]"):
            picture = self.pictures.last_of(room_id or "dm", quoted_name)
            if picture is not None:
                images = (picture, *images)
        turn = incoming(room_id=room_id, user_id=user, user_name=talker.name, message_id=msg.message_id,
                        text=text, images=images)
        result = await self.core.handle(turn)
        if isinstance(result, Reply) and result.key not in ("not_allowed", DUPLICATE):
            await self.deliver(result)

    async def _image_bytes(self, msg: Message) -> bytes:
        box = await msg.to_file_box()
        if getattr(box, "base64", None):
            return base64.b64decode(box.base64)
        if getattr(box, "buffer", None):
            return bytes(box.buffer)
        if getattr(box, "remoteUrl", None):
            return await fetch_image(box.remoteUrl, max_bytes=self.settings.image_max_bytes,
                                     timeout_s=self.settings.fetch_timeout_s)
        raise UserFacingError.of("picture_unread")

    async def _say_to(self, msg: Message, text: str) -> None:
        try:
            room = msg.room()
            if room is not None:
                await room.say(text, mention_ids=[msg.talker().contact_id])
            else:
                await msg.talker().say(text)
        except Exception:
            log.warning("could not answer WeChat message %s", msg.message_id, exc_info=True)

    # --- replies --------------------------------------------------------------------

    async def _deliver_forever(self) -> None:
        """Say every finished reply once, including those finished while disconnected."""
        await self.core.serve_replies(PLATFORM, self.deliver)

    async def deliver(self, reply: Reply) -> None:
        """Say ``reply``: in rooms @-mentioning the asker, split to WeChat's length, then the
        annotated picture as an image file; ``core.sent`` records the first part's id once
        every part is said.

        A turn's reply (from the delivery loop) raises when WeChat does not take a part, so
        that the core delivers it again. WeChat has no idempotency key: the parts this
        connection already said are skipped then (after a reconnect they are said again).
        A command's reply (no job) is only logged."""
        in_room = reply.user_id is not None and reply.chat_id != reply.user_id
        job = reply.job_id
        parts = [*split_message(reply.text, MAX_CHARS), *reply.images]
        done, first_id = self._said.get(job, (0, None)) if job is not None else (0, None)
        said = done
        try:
            target = self.Room.load(reply.chat_id) if in_room else self.Contact.load(reply.chat_id)
            await target.ready()
            for n, part in enumerate(parts):
                if n < done:
                    continue
                if isinstance(part, str):
                    if in_room and n == 0:
                        sent = await target.say(part, mention_ids=[reply.user_id])
                    else:
                        sent = await target.say(part)
                    if n == 0 and sent is not None:
                        first_id = sent.message_id
                else:
                    await target.say(FileBox.from_base64(base64.b64encode(part.data), name=part.filename))
                said = n + 1
        except Exception as exc:
            log.warning("could not deliver the reply of job %s to %s (%d of %d parts said): %s", job,
                        reply.chat_id, said, len(parts), repr(exc).replace("\n", " "))
            if job is None:
                return
            self._said[job] = (said, first_id)
            raise
        if job is not None:
            self._said.pop(job, None)
        if first_id is not None:
            await self.core.sent(reply, first_id)


def endpoint_and_token(settings: Settings) -> tuple[str, str]:
    """The puppet service's host:port and token; refuses to go on without an endpoint."""
    endpoint = settings.wechat_endpoint or ""
    host, _, port = endpoint.rpartition(":")
    if not host or not port.isdigit():
        raise UserFacingError("Set WECHATY_PUPPET_SERVICE_ENDPOINT to the puppet service's host:port "
                              "(without it the client would look one up on the internet).")
    return endpoint, settings.wechat_token.get_secret_value() if settings.wechat_token else "qvl"


async def run(settings: Settings, *, redis_url: str | None = None, login_timeout_s: float = 30,
              check_every_s: float = 10, max_backoff_s: float = 60) -> None:
    """Run the WeChat frontend for good: connect, and when the puppet service drops,
    connect again with backoff (python-wechaty itself would sleep 60 s and then stop the
    event loop if the service were still down)."""
    endpoint, token = endpoint_and_token(settings)
    core = Core(settings, redis_url_=redis_url)
    await core.check()
    backoff = 1.0
    try:
        while True:
            if await _reachable(endpoint):  # (wechaty's own check blocks the loop for 3 s)
                reset_caches()
                bot = WechatFrontend(settings, core, fresh_options(endpoint, token))
                if await _connected(bot, login_timeout_s, check_every_s):
                    backoff = 1.0
            log.warning("WeChat: puppet service at %s lost; reconnecting in %.0fs", endpoint, backoff)
            await asyncio.sleep(backoff)
            backoff = min(max_backoff_s, backoff * 2)
    finally:
        await core.close()


async def _reachable(endpoint: str) -> bool:
    host, _, port = endpoint.rpartition(":")
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, int(port)), timeout=3)
    except (OSError, TimeoutError):
        return False
    writer.close()
    return True


async def _connected(bot: WechatFrontend, login_timeout_s: float, check_every_s: float) -> bool:
    """Run ``bot`` until its connection is lost; return whether it had logged in."""
    task = asyncio.create_task(bot.start(), name="wechaty")
    try:
        login = asyncio.ensure_future(bot.logged_in.wait())
        await asyncio.wait({task, login}, timeout=login_timeout_s, return_when=asyncio.FIRST_COMPLETED)
        login.cancel()
        if not bot.logged_in.is_set():
            return False
        while not task.done():  # start() runs while the event stream is open
            await asyncio.sleep(check_every_s)
            try:
                await asyncio.wait_for(bot.puppet.ding("qvl"), timeout=5)
            except Exception:
                break
            # The puppet service answers, and WeChat is logged in: the puppet's own record, as
            # python-wechaty calls on_login only once a connection, not after a new login.
            if getattr(bot.puppet, "login_user_id", None):
                bot.health.up()
        return True
    finally:
        bot.health.down()
        await _shut(bot, task)


async def _shut(bot: WechatFrontend, task: asyncio.Task) -> None:
    while not task.done():  # cancel start() first: stopping under it makes it sleep and retry
        task.cancel()
        await asyncio.wait({task}, timeout=0.1)
    if not task.cancelled() and task.exception() is not None:
        log.warning("WeChat connection ended: %s", task.exception())
    await bot.close_delivery()
    try:
        if bot._puppet is not None:
            await bot.stop()
    except Exception:
        log.debug("stopping the old WeChat connection failed", exc_info=True)
    scheduler = bot._plugin_manager.scheduler
    if scheduler.running:
        scheduler.shutdown(wait=False)
