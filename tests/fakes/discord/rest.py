"""The REST API (v10): request plumbing (auth, multipart bodies, routing, Discord's error
bodies) and the routes for the gateway URL, users, channels, messages, reactions,
threads and guilds. Application commands and interactions are in ``interactions``."""

from __future__ import annotations

import copy
import json
import logging
import re
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web

from .protocol import (
    _USER_MENTION,
    CANNOT_EDIT_OTHERS,
    EMPTY_MESSAGE,
    MISSING_PERMISSIONS,
    TOO_LARGE,
    UNKNOWN_CHANNEL,
    UNKNOWN_GUILD,
    UNKNOWN_MEMBER,
    UNKNOWN_MESSAGE,
    UNKNOWN_USER,
    _form_error,
    _HTTPError,
    _json,
    _now_iso,
)
from .records import Call, Edit, Reaction, SentMessage, Typing
from .state import _Guild, _Interaction, _Upload

log = logging.getLogger("tests.fakes.discord")


_ROUTES: list[tuple[str, re.Pattern[str], str, bool]] = []


def _route(method: str, pattern: str, *, auth: bool = True) -> Callable:
    """Register a REST handler; ``auth`` routes need ``Authorization: Bot <token>``."""

    def register(fn: Callable) -> Callable:
        _ROUTES.append((method, re.compile(pattern + r"\Z"), fn.__name__, auth))
        return fn

    return register


_C = r"(?P<channel_id>\d+)"
_M = r"(?P<message_id>\d+)"
_G = r"(?P<guild_id>\d+)"
_A = r"(?P<app_id>\d+)"
_T = r"(?P<token>[^/]+)"


class RestMixin:
    """The HTTP side of :class:`~tests.fakes.discord.FakeDiscord`."""

    async def _read_body(self, request: web.Request) -> tuple[Any, list[_Upload]]:
        if request.content_type == "multipart/form-data":
            form = await request.post()
            body, uploads = None, []
            for name, value in form.items():
                if isinstance(value, web.FileField):
                    uploads.append(_Upload(name, value.filename, value.file.read()))
                elif name == "payload_json":
                    body = json.loads(value)
            return body, uploads
        raw = await request.read()
        if not raw:
            return None, []
        try:
            return json.loads(raw), []
        except ValueError:
            return raw.decode(errors="replace"), []

    def _authorized(self, request: web.Request) -> bool:
        header = request.headers.get("Authorization", "")
        return header.startswith("Bot ") and self._token_ok(header[4:])

    async def _api(self, request: web.Request) -> web.Response:
        path = "/" + request.match_info["tail"]
        method = request.method
        body, uploads = await self._read_body(request)
        recorded = (
            body
            if not uploads
            else {"payload_json": body, "files": [(u.filename, u.data) for u in uploads]}
        )
        self.requests.append(Call(method, path, recorded))
        path_matched = False
        for route_method, pattern, handler, auth in _ROUTES:
            match = pattern.match(path)
            if match is None:
                continue
            path_matched = True
            if route_method != method:
                continue
            if auth and not self._authorized(request):
                return _json({"message": "401: Unauthorized", "code": 0}, 401)
            refused = self._refusal(method, path, body)
            if refused is not None:
                return refused
            try:
                return await getattr(self, handler)(match.groupdict(), request.query, body, uploads)
            except _HTTPError as exc:
                return exc.response()
            except Exception as exc:
                log.exception("fake Discord: %s %s failed", method, path)
                self.errors.append(f"{method} {path}: {exc!r}")
                # 501, not 500: discord.py retries 500s with sleeps, hiding the bug for seconds.
                return _json({"message": f"fake Discord bug: {exc!r}", "code": 0}, 501)
            finally:
                self._notify()
        self.unknown_routes.append((method, path))
        log.warning("fake Discord: no route for %s %s (body %r)", method, path, recorded)
        if path_matched:
            return _json({"message": "405: Method Not Allowed", "code": 0}, 405)
        return _json({"message": "404: Not Found", "code": 0}, 404)

    def refuse(self, method: str, path: str, *, times: int = 1, when: Callable[[Any], bool] | None = None,
               status: int = 403, code: int = MISSING_PERMISSIONS, message: str = "Missing Permissions") -> None:
        """Answer the next ``times`` requests ``method`` ``path`` (a regular expression over
        the path below ``/api/v10``) whose body satisfies ``when`` with a Discord error
        (default: 403 Missing Permissions, as when the bot may not post in a channel), doing
        nothing else. For 5xx statuses, remember that discord.py retries them."""
        self._refusals.append({"method": method, "path": re.compile(path + r"\Z"), "times": times,
                               "when": when, "error": _HTTPError(status, code, message)})

    def _refusal(self, method: str, path: str, body: Any) -> web.Response | None:
        for refusal in self._refusals:
            if (refusal["times"] > 0 and refusal["method"] == method and refusal["path"].match(path)
                    and (refusal["when"] is None or refusal["when"](body))):
                refusal["times"] -= 1
                return refusal["error"].response()
        return None

    async def _cdn(self, request: web.Request) -> web.Response:
        self.downloads.append(request.path)
        found = self._files.get(request.path)
        if found is None:
            return web.Response(status=404, text="404: Not Found")
        data, content_type = found
        return web.Response(body=data, headers={"Content-Type": content_type})

    def _channel_or_404(self, channel_id: str | int) -> dict:
        channel = self.channels.get(int(channel_id))
        if channel is None:
            raise _HTTPError(404, UNKNOWN_CHANNEL, "Unknown Channel")
        return channel

    def _message_or_404(self, channel_id: str | int, message_id: str | int) -> dict:
        msg = self.messages.get(int(message_id))
        if msg is None or msg["channel_id"] != str(channel_id):
            raise _HTTPError(404, UNKNOWN_MESSAGE, "Unknown Message")
        return msg

    def _check_new_message(self, body: dict, uploads: list[_Upload]) -> None:
        content = body.get("content") or ""
        if len(content) > 2000:
            raise _form_error("content", "BASE_TYPE_MAX_LENGTH", "Must be 2000 or fewer in length.")
        if len(body.get("embeds") or []) > 10:
            raise _form_error("embeds", "BASE_TYPE_MAX_LENGTH", "Must be 10 or fewer in length.")
        if not (content or body.get("embeds") or uploads or body.get("sticker_ids")
                or body.get("components") or body.get("poll")):  # fmt: skip
            raise _HTTPError(400, EMPTY_MESSAGE, "Cannot send an empty message")
        self._check_uploads(uploads)

    def _check_uploads(self, uploads: list[_Upload]) -> None:
        if any(len(u.data) > self.upload_limit for u in uploads):
            raise _HTTPError(413, TOO_LARGE, "Request entity too large")

    def _uploaded(
        self, channel_id: int, body: dict, uploads: list[_Upload], *, ephemeral: bool = False
    ) -> list[dict]:
        """Attachments for ``files[n]``, named by the matching ``attachments`` entry (id n)."""
        meta = {str(a.get("id")): a for a in body.get("attachments") or []}
        stored = []
        for index, upload in enumerate(uploads):
            found = re.search(r"\[(\d+)\]", upload.field)
            info = meta.get(found.group(1) if found else str(index), {})
            stored.append(self._store_attachment(
                channel_id, info.get("filename") or upload.filename, upload.data,
                description=info.get("description"), ephemeral=ephemeral,
            ))  # fmt: skip
        return stored

    def _bot_mentions(self, content: str, allowed: dict | None, replied: int | None) -> list[int]:
        ids = [int(m) for m in _USER_MENTION.findall(content)]
        if allowed is not None and "users" not in allowed.get("parse", []):
            explicit = {int(u) for u in allowed.get("users", [])}
            ids = [u for u in ids if u in explicit]
        if replied is not None and (allowed is None or allowed.get("replied_user", False)):
            ids.append(replied)
        return [u for u in dict.fromkeys(ids) if u in self.users]

    def _record_sent(self, msg: dict, body: Any, uploads: list[_Upload], via: str,
                     interaction: _Interaction | None = None) -> None:  # fmt: skip
        self.sent.append(SentMessage(
            id=int(msg["id"]), channel_id=int(msg["channel_id"]), content=msg["content"],
            files=[(u.filename, u.data) for u in uploads], embeds=msg["embeds"],
            message_reference=msg.get("message_reference"), flags=msg["flags"], via=via,
            payload=copy.deepcopy(msg), request=body,
            interaction_id=interaction.id if interaction else None,
        ))  # fmt: skip

    def _apply_edit(self, msg: dict, body: dict, uploads: list[_Upload]) -> None:
        if len(body.get("content") or "") > 2000:
            raise _form_error("content", "BASE_TYPE_MAX_LENGTH", "Must be 2000 or fewer in length.")
        self._check_uploads(uploads)
        for key in ("content", "embeds", "components"):
            if key in body:
                msg[key] = body[key] if body[key] is not None else ("" if key == "content" else [])
        if "flags" in body and body["flags"] is not None:
            msg["flags"] = (msg["flags"] & ~4) | (int(body["flags"]) & 4)  # only SUPPRESS_EMBEDS
        new = self._uploaded(
            int(msg["channel_id"]), body, uploads, ephemeral=bool(msg["flags"] & 64)
        )
        if body.get("attachments") is not None:
            keep = {str(a.get("id")) for a in body["attachments"]}
            msg["attachments"] = [a for a in msg["attachments"] if a["id"] in keep] + new
        else:
            msg["attachments"] = msg["attachments"] + new
        msg["edited_timestamp"] = _now_iso()

    # ------------------------------------------------------------------ REST: session, users

    @_route("GET", "/gateway", auth=False)
    async def _r_gateway(self, params, query, body, uploads):
        return _json({"url": self.gateway_url})

    @_route("GET", "/gateway/bot")
    async def _r_gateway_bot(self, params, query, body, uploads):
        limit = {"total": 1000, "remaining": 999, "reset_after": 0, "max_concurrency": 1}
        return _json({"url": self.gateway_url, "shards": 1, "session_start_limit": limit})

    @_route("GET", "/users/@me")
    async def _r_me(self, params, query, body, uploads):
        return _json({**self.user(self.bot_id), "verified": True, "mfa_enabled": False,
                      "email": None, "locale": "en-US"})  # fmt: skip

    @_route("GET", r"/users/(?P<user_id>\d+)")
    async def _r_user(self, params, query, body, uploads):
        if int(params["user_id"]) not in self.users:
            raise _HTTPError(404, UNKNOWN_USER, "Unknown User")
        return _json(self.user(int(params["user_id"])))

    @_route("GET", "/oauth2/applications/@me")
    async def _r_app_oauth(self, params, query, body, uploads):
        return _json(self._app_info())

    @_route("GET", "/applications/@me")
    async def _r_app(self, params, query, body, uploads):
        return _json(self._app_info())

    @_route("POST", "/users/@me/channels")
    async def _r_open_dm(self, params, query, body, uploads):
        uid = int((body or {}).get("recipient_id", 0))
        if uid not in self.users:
            raise _HTTPError(404, UNKNOWN_USER, "Unknown User")
        return _json(self.channel(self.dm_channel(uid)))

    # ------------------------------------------------------------------ REST: channels, messages

    @_route("GET", rf"/channels/{_C}")
    async def _r_channel(self, params, query, body, uploads):
        return _json(copy.deepcopy(self._channel_or_404(params["channel_id"])))

    @_route("GET", rf"/channels/{_C}/messages")
    async def _r_history(self, params, query, body, uploads):
        self._channel_or_404(params["channel_id"])
        limit = min(int(query.get("limit", 50)), 100)
        msgs = sorted(
            (m for m in self.messages.values()
             if m["channel_id"] == params["channel_id"] and not m["flags"] & 64),
            key=lambda m: int(m["id"]),
        )  # fmt: skip
        if "before" in query:
            msgs = [m for m in msgs if int(m["id"]) < int(query["before"])][-limit:]
        elif "after" in query:
            msgs = [m for m in msgs if int(m["id"]) > int(query["after"])][:limit]
        elif "around" in query:
            pivot = int(query["around"])
            older = [m for m in msgs if int(m["id"]) <= pivot][-(limit - limit // 2) :]
            msgs = older + [m for m in msgs if int(m["id"]) > pivot][: limit // 2]
        else:
            msgs = msgs[-limit:]
        return _json([self._rest(m) for m in reversed(msgs)])

    @_route("POST", rf"/channels/{_C}/messages")
    async def _r_send(self, params, query, body, uploads):
        cid = int(params["channel_id"])
        self._channel_or_404(cid)
        body = body or {}
        self._check_new_message(body, uploads)
        nonce = body.get("nonce")
        if nonce is not None:
            if len(str(nonce)) > 25:
                raise _form_error("nonce", "BASE_TYPE_MAX_LENGTH", "Must be 25 or fewer in length.")
            if body.get("enforce_nonce"):
                earlier = self._nonced(cid, self.bot_id, str(nonce))
                if earlier is not None:  # the same message again: the first one, nothing new
                    return _json(self._rest(earlier))
        reference, replied = body.get("message_reference"), None
        if reference:
            target = self.messages.get(int(reference.get("message_id", 0)))
            if target is None:
                if reference.get("fail_if_not_exists", True):
                    raise _form_error(
                        "message_reference", "MESSAGE_REFERENCE_UNKNOWN_MESSAGE", "Unknown message"
                    )
                reference = None
            else:
                replied = int(target["author"]["id"])
                reference = {
                    "type": 0,
                    "message_id": target["id"],
                    "channel_id": target["channel_id"],
                }
                if self._guild_of(cid):
                    reference["guild_id"] = str(self._guild_of(cid))
        content = body.get("content") or ""
        msg = self._new_message(
            channel_id=cid, author_id=self.bot_id, content=content,
            attachments=self._uploaded(cid, body, uploads),
            mention_ids=self._bot_mentions(content, body.get("allowed_mentions"), replied),
            reference=reference, msg_type=19 if reference else 0,
            flags=int(body.get("flags") or 0) & (4 | 4096), embeds=body.get("embeds"),
            components=body.get("components"), nonce=nonce, tts=bool(body.get("tts")),
        )  # fmt: skip
        if nonce is not None:
            self._nonces[(cid, self.bot_id, str(nonce))] = (int(msg["id"]), time.monotonic())
        self._record_sent(msg, body, uploads, "channel")
        self._emit("MESSAGE_CREATE", msg)
        return _json(self._rest(msg))

    def _nonced(self, channel_id: int, author_id: int, nonce: str) -> dict | None:
        """The message ``author_id`` created in the channel with ``nonce`` in the last
        ``nonce_window_s`` seconds (Discord's ``enforce_nonce``); 404 if it was deleted since."""
        found = self._nonces.get((channel_id, author_id, nonce))
        if found is None or time.monotonic() - found[1] > self.nonce_window_s:
            return None
        if found[0] not in self.messages:
            raise _HTTPError(404, UNKNOWN_MESSAGE, "Unknown Message")
        return self.messages[found[0]]

    @_route("GET", rf"/channels/{_C}/messages/{_M}")
    async def _r_get_message(self, params, query, body, uploads):
        return _json(self._rest(self._message_or_404(params["channel_id"], params["message_id"])))

    @_route("PATCH", rf"/channels/{_C}/messages/{_M}")
    async def _r_edit(self, params, query, body, uploads):
        msg = self._message_or_404(params["channel_id"], params["message_id"])
        if int(msg["author"]["id"]) != self.bot_id:
            raise _HTTPError(
                403, CANNOT_EDIT_OTHERS, "Cannot edit a message authored by another user"
            )
        self._apply_edit(msg, body or {}, uploads)
        self._record_edit(msg, body, uploads, "channel")
        self._emit("MESSAGE_UPDATE", msg)
        return _json(self._rest(msg))

    def _record_edit(self, msg: dict, body: Any, uploads: list[_Upload], via: str) -> None:
        self.edits.append(Edit(
            message_id=int(msg["id"]), channel_id=int(msg["channel_id"]), content=msg["content"],
            files=[(u.filename, u.data) for u in uploads], payload=copy.deepcopy(msg),
            request=body, via=via,
        ))  # fmt: skip

    @_route("DELETE", rf"/channels/{_C}/messages/{_M}")
    async def _r_delete(self, params, query, body, uploads):
        msg = self._message_or_404(params["channel_id"], params["message_id"])
        self._delete(msg)
        return web.Response(status=204)

    def _delete(self, msg: dict) -> None:
        del self.messages[int(msg["id"])]
        self.deleted.append((int(msg["channel_id"]), int(msg["id"])))
        if not msg["flags"] & 64:
            event = {"id": msg["id"], "channel_id": msg["channel_id"]}
            if "guild_id" in msg:
                event["guild_id"] = msg["guild_id"]
            self._emit("MESSAGE_DELETE", event)

    @_route("POST", rf"/channels/{_C}/typing")
    async def _r_typing(self, params, query, body, uploads):
        self._channel_or_404(params["channel_id"])
        self.typing.append(Typing(int(params["channel_id"]), time.monotonic()))
        return web.Response(status=204)

    @_route("PUT", rf"/channels/{_C}/messages/{_M}/reactions/(?P<emoji>[^/]+)/@me")
    async def _r_react(self, params, query, body, uploads):
        return self._react(params, added=True)

    @_route("DELETE", rf"/channels/{_C}/messages/{_M}/reactions/(?P<emoji>[^/]+)/@me")
    async def _r_unreact(self, params, query, body, uploads):
        return self._react(params, added=False)

    def _react(self, params: dict, *, added: bool) -> web.Response:
        msg = self._message_or_404(params["channel_id"], params["message_id"])
        name, _, emoji_id = params["emoji"].partition(":")
        self.reactions.append(
            Reaction(int(msg["channel_id"]), int(msg["id"]), params["emoji"], added)
        )
        event = {"user_id": str(self.bot_id), "channel_id": msg["channel_id"], "message_id": msg["id"],
                 "emoji": {"id": emoji_id or None, "name": name}, "burst": False, "type": 0}  # fmt: skip
        if "guild_id" in msg:
            event["guild_id"] = msg["guild_id"]
            if added:
                event["member"] = self._member(int(msg["guild_id"]), self.bot_id)
                event["message_author_id"] = msg["author"]["id"]
        self._emit("MESSAGE_REACTION_ADD" if added else "MESSAGE_REACTION_REMOVE", event)
        return web.Response(status=204)

    @_route("POST", rf"/channels/{_C}/messages/{_M}/threads")
    async def _r_thread_from_message(self, params, query, body, uploads):
        msg = self._message_or_404(params["channel_id"], params["message_id"])
        body = body or {}
        # A thread started from a message has the message's id.
        thread = self._new_thread(int(params["channel_id"]), body.get("name") or "thread", self.bot_id,
                                  thread_id=int(msg["id"]), auto_archive=body.get("auto_archive_duration") or 1440)  # fmt: skip
        msg["thread"] = copy.deepcopy(thread)
        msg["flags"] |= 1 << 5  # HAS_THREAD
        return _json(self._announce_thread(thread))

    @_route("POST", rf"/channels/{_C}/threads")
    async def _r_thread(self, params, query, body, uploads):
        body = body or {}
        self._channel_or_404(params["channel_id"])
        if "message" in body:
            raise _HTTPError(400, 50024, "fake Discord: forum posts are not supported")
        thread = self._new_thread(int(params["channel_id"]), body.get("name") or "thread", self.bot_id,
                                  private=body.get("type") == 12, auto_archive=body.get("auto_archive_duration") or 1440)  # fmt: skip
        return _json(self._announce_thread(thread))

    def _announce_thread(self, thread: dict) -> dict:
        member = {
            "id": thread["id"],
            "user_id": str(self.bot_id),
            "join_timestamp": _now_iso(),
            "flags": 0,
        }
        self._emit("THREAD_CREATE", {**thread, "newly_created": True, "member": member})
        return {**copy.deepcopy(thread), "member": member}

    # ------------------------------------------------------------------ REST: guilds

    def _guild_or_404(self, guild_id: str) -> _Guild:
        guild = self.guilds.get(int(guild_id))
        if guild is None:
            raise _HTTPError(404, UNKNOWN_GUILD, "Unknown Guild")
        return guild

    @_route("GET", rf"/guilds/{_G}")
    async def _r_guild(self, params, query, body, uploads):
        data = self._guild_create(self._guild_or_404(params["guild_id"]), 0)
        for key in ("members", "channels", "threads", "joined_at", "large", "member_count",
                    "voice_states", "presences", "unavailable"):  # fmt: skip
            data.pop(key, None)
        return _json(data)

    @_route("GET", rf"/guilds/{_G}/channels")
    async def _r_guild_channels(self, params, query, body, uploads):
        guild = self._guild_or_404(params["guild_id"])
        return _json([self.channel(c) for c in guild.channels])

    @_route("GET", rf"/guilds/{_G}/roles")
    async def _r_roles(self, params, query, body, uploads):
        return _json(list(copy.deepcopy(self._guild_or_404(params["guild_id"]).roles).values()))

    @_route("GET", rf"/guilds/{_G}/members/(?P<user_id>\d+)")
    async def _r_member(self, params, query, body, uploads):
        guild = self._guild_or_404(params["guild_id"])
        if int(params["user_id"]) not in guild.members:
            raise _HTTPError(404, UNKNOWN_MEMBER, "Unknown Member")
        return _json(self._member(guild.id, int(params["user_id"])))

    @_route("GET", rf"/guilds/{_G}/members")
    async def _r_members(self, params, query, body, uploads):
        guild = self._guild_or_404(params["guild_id"])
        after, limit = int(query.get("after", 0)), int(query.get("limit", 1))
        ids = sorted(u for u in guild.members if u > after)[:limit]
        return _json([self._member(guild.id, u) for u in ids])
