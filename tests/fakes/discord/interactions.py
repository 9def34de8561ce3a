"""REST for application commands (sync, upsert, edit, delete) and for interactions:
the callback with its 3-second deadline and one response per interaction, and the
webhook follow-ups and edits, the first of which after a deferral replaces the
"thinking" message."""

from __future__ import annotations

import copy
import time
from typing import Any

from aiohttp import web

from .protocol import (
    _COMMAND_NAME,
    ALREADY_ACKNOWLEDGED,
    UNKNOWN_COMMAND,
    UNKNOWN_INTERACTION,
    UNKNOWN_MESSAGE,
    UNKNOWN_WEBHOOK,
    _form_error,
    _HTTPError,
    _json,
)
from .records import InteractionResponse
from .rest import _A, _G, _T, _route
from .state import _Interaction, _Upload


class InteractionsMixin:
    """Application commands and interaction responses."""

    # ------------------------------------------------------------------ REST: application commands

    def _command_payload(self, spec: dict, command_id: str, guild_id: int | None) -> dict:
        kind = spec.get("type", 1)
        if kind == 1:
            if (
                not _COMMAND_NAME.match(spec.get("name", ""))
                or spec["name"] != spec["name"].lower()
            ):
                raise _form_error(
                    "name",
                    "APPLICATION_COMMAND_INVALID_NAME",
                    f"Command name is invalid: {spec.get('name')!r}",
                )
            if not 1 <= len(spec.get("description") or "") <= 100:
                raise _form_error(
                    "description", "BASE_TYPE_BAD_LENGTH", "Must be between 1 and 100 in length."
                )
        cmd = {
            "options": [], "default_member_permissions": None, "dm_permission": True,
            "nsfw": False, "contexts": None, "integration_types": [0], **copy.deepcopy(spec),
            "id": command_id, "application_id": str(self.application_id), "type": kind,
            "version": str(self._ids.next()),
        }  # fmt: skip
        if guild_id is not None:
            cmd["guild_id"] = str(guild_id)
        return cmd

    def _upsert(self, scope: int | None, spec: dict) -> dict:
        cmds = self.commands.setdefault(scope, [])
        key = (spec.get("name"), spec.get("type", 1))
        old = next((c for c in cmds if (c["name"], c["type"]) == key), None)
        cmd = self._command_payload(spec, old["id"] if old else str(self._ids.next()), scope)
        cmds[:] = [c for c in cmds if c is not old] + [cmd]
        return cmd

    def _overwrite(self, scope: int | None, specs: list[dict]) -> list[dict]:
        old = {(c["name"], c["type"]): c["id"] for c in self.commands.get(scope, [])}
        new = [
            self._command_payload(
                spec,
                old.get((spec.get("name"), spec.get("type", 1))) or str(self._ids.next()),
                scope,
            )
            for spec in specs
        ]
        self.commands[scope] = new
        self.command_syncs.append((scope, [c["name"] for c in new]))
        return copy.deepcopy(new)

    def _app_scope(self, params: dict) -> int | None:
        if int(params["app_id"]) != self.application_id:
            raise _HTTPError(403, 50001, "Missing Access")
        if "guild_id" in params:
            return self._guild_or_404(params["guild_id"]).id
        return None

    def _command_or_404(self, scope: int | None, command_id: str) -> dict:
        cmd = next((c for c in self.commands.get(scope, []) if c["id"] == command_id), None)
        if cmd is None:
            raise _HTTPError(404, UNKNOWN_COMMAND, "Unknown application command")
        return cmd

    @_route("GET", rf"/applications/{_A}/commands")
    @_route("GET", rf"/applications/{_A}/guilds/{_G}/commands")
    async def _r_commands(self, params, query, body, uploads):
        return _json(copy.deepcopy(self.commands.get(self._app_scope(params), [])))

    @_route("PUT", rf"/applications/{_A}/commands")
    @_route("PUT", rf"/applications/{_A}/guilds/{_G}/commands")
    async def _r_sync(self, params, query, body, uploads):
        return _json(self._overwrite(self._app_scope(params), body or []))

    @_route("POST", rf"/applications/{_A}/commands")
    @_route("POST", rf"/applications/{_A}/guilds/{_G}/commands")
    async def _r_upsert(self, params, query, body, uploads):
        return _json(copy.deepcopy(self._upsert(self._app_scope(params), body or {})), 201)

    @_route("GET", rf"/applications/{_A}/commands/(?P<command_id>\d+)")
    @_route("GET", rf"/applications/{_A}/guilds/{_G}/commands/(?P<command_id>\d+)")
    async def _r_command(self, params, query, body, uploads):
        return _json(
            copy.deepcopy(self._command_or_404(self._app_scope(params), params["command_id"]))
        )

    @_route("PATCH", rf"/applications/{_A}/commands/(?P<command_id>\d+)")
    @_route("PATCH", rf"/applications/{_A}/guilds/{_G}/commands/(?P<command_id>\d+)")
    async def _r_edit_command(self, params, query, body, uploads):
        scope = self._app_scope(params)
        cmd = self._command_or_404(scope, params["command_id"])
        return _json(copy.deepcopy(self._upsert(scope, {**cmd, **(body or {})})))

    @_route("DELETE", rf"/applications/{_A}/commands/(?P<command_id>\d+)")
    @_route("DELETE", rf"/applications/{_A}/guilds/{_G}/commands/(?P<command_id>\d+)")
    async def _r_delete_command(self, params, query, body, uploads):
        scope = self._app_scope(params)
        cmd = self._command_or_404(scope, params["command_id"])
        self.commands[scope] = [c for c in self.commands[scope] if c is not cmd]
        return web.Response(status=204)

    # ------------------------------------------------------------------ REST: interactions

    @_route("POST", rf"/interactions/(?P<interaction_id>\d+)/{_T}/callback", auth=False)
    async def _r_callback(self, params, query, body, uploads):
        it = self._interactions.get(int(params["interaction_id"]))
        if it is None or it.token != params["token"]:
            raise _HTTPError(404, UNKNOWN_INTERACTION, "Unknown interaction")
        if time.monotonic() - it.created > self.interaction_deadline:
            raise _HTTPError(404, UNKNOWN_INTERACTION, "Unknown interaction")
        if it.response_type is not None:
            raise _HTTPError(
                400, ALREADY_ACKNOWLEDGED, "Interaction has already been acknowledged."
            )
        body = body or {}
        kind, data = int(body.get("type", 0)), body.get("data") or {}
        msg = None
        if kind == 4:  # CHANNEL_MESSAGE_WITH_SOURCE
            self._check_new_message(data, uploads)
            it.ephemeral = bool(int(data.get("flags") or 0) & 64)
            msg = self._interaction_message(it, data, uploads, msg_type=20, loading=False)
            self._record_sent(msg, body, uploads, "interaction", it)
        elif kind == 5:  # DEFERRED_CHANNEL_MESSAGE_WITH_SOURCE: the "thinking…" message
            it.ephemeral, it.loading = bool(int(data.get("flags") or 0) & 64), True
            msg = self._interaction_message(it, {}, [], msg_type=20, loading=True)
        elif kind not in (6, 7, 8, 9, 10, 12):
            raise _form_error(
                "type",
                "BASE_TYPE_CHOICES",
                f"Value must be one of interaction callback types, got {kind}",
            )
        it.response_type = kind
        if msg is not None:
            it.original_id = int(msg["id"])
        self.interaction_responses.append(
            InteractionResponse(it.id, kind, data, [(u.filename, u.data) for u in uploads])
        )
        if query.get("with_response") not in ("1", "true", "True"):
            return web.Response(status=204)
        info = {"id": str(it.id), "type": 2, "response_message_loading": it.loading,
                "response_message_ephemeral": it.ephemeral}  # fmt: skip
        out: dict[str, Any] = {"interaction": info}
        if msg is not None:
            info["response_message_id"] = msg["id"]
            out["resource"] = {"type": kind, "message": self._rest(msg)}
        return _json(out)

    def _interaction_message(self, it: _Interaction, data: dict, uploads: list[_Upload], *,
                             msg_type: int, loading: bool) -> dict:  # fmt: skip
        flags = (int(data.get("flags") or 0) & (4 | 64 | 4096)) | (64 if it.ephemeral else 0)
        if loading:
            flags |= 128
        content = data.get("content") or ""
        msg = self._new_message(
            channel_id=it.channel_id, author_id=self.bot_id, content=content,
            attachments=self._uploaded(it.channel_id, data, uploads, ephemeral=bool(flags & 64)),
            mention_ids=self._bot_mentions(content, data.get("allowed_mentions"), None),
            msg_type=msg_type, flags=flags, embeds=data.get("embeds"),
            components=data.get("components"), webhook_id=self.application_id, interaction=it,
        )  # fmt: skip
        if not flags & 64:
            self._emit("MESSAGE_CREATE", msg)
        return msg

    def _interaction_by_token(self, app_id: str, token: str) -> _Interaction:
        it = next((i for i in self._interactions.values() if i.token == token), None)
        if it is None or int(app_id) != self.application_id:
            raise _HTTPError(404, UNKNOWN_WEBHOOK, "Unknown Webhook")
        return it

    def _webhook_message(self, it: _Interaction, message_id: str) -> dict:
        mid = it.original_id if message_id == "@original" else int(message_id)
        if mid is None or mid not in it.message_ids or mid not in self.messages:
            raise _HTTPError(404, UNKNOWN_MESSAGE, "Unknown Message")
        return self.messages[mid]

    def _finish_deferred(
        self, it: _Interaction, body: dict, uploads: list[_Upload], via: str
    ) -> dict:
        """Fill the "thinking…" message with the first real answer (MESSAGE_UPDATE)."""
        msg = self.messages[it.original_id]
        self._apply_edit(msg, body, uploads)
        msg["flags"] &= ~128
        it.loading = False
        self._record_sent(msg, body, uploads, via, it)
        return msg

    @_route("POST", rf"/webhooks/{_A}/{_T}", auth=False)
    async def _r_followup(self, params, query, body, uploads):
        it = self._interaction_by_token(params["app_id"], params["token"])
        if it.response_type is None:  # Discord: no follow-up before the first response
            raise _HTTPError(404, UNKNOWN_WEBHOOK, "Unknown Webhook")
        body = body or {}
        self._check_new_message(body, uploads)
        if it.loading and it.original_id in self.messages:
            msg = self._finish_deferred(it, body, uploads, "followup")
            if not msg["flags"] & 64:
                self._emit("MESSAGE_UPDATE", msg)
        else:
            flags = int(body.get("flags") or 0) & (4 | 64 | 4096)
            content = body.get("content") or ""
            msg = self._new_message(
                channel_id=it.channel_id, author_id=self.bot_id, content=content,
                attachments=self._uploaded(it.channel_id, body, uploads, ephemeral=bool(flags & 64)),
                mention_ids=self._bot_mentions(content, body.get("allowed_mentions"), None),
                flags=flags, embeds=body.get("embeds"), components=body.get("components"),
                webhook_id=self.application_id, interaction=it,
            )  # fmt: skip
            self._record_sent(msg, body, uploads, "followup", it)
            if not flags & 64:
                self._emit("MESSAGE_CREATE", msg)
        if query.get("wait") in ("1", "true", "True"):
            return _json(self._rest(msg))
        return web.Response(status=204)

    @_route("GET", rf"/webhooks/{_A}/{_T}/messages/(?P<message_id>@original|\d+)", auth=False)
    async def _r_webhook_get(self, params, query, body, uploads):
        it = self._interaction_by_token(params["app_id"], params["token"])
        return _json(self._rest(self._webhook_message(it, params["message_id"])))

    @_route("PATCH", rf"/webhooks/{_A}/{_T}/messages/(?P<message_id>@original|\d+)", auth=False)
    async def _r_webhook_edit(self, params, query, body, uploads):
        it = self._interaction_by_token(params["app_id"], params["token"])
        msg = self._webhook_message(it, params["message_id"])
        body = body or {}
        if it.loading and int(msg["id"]) == it.original_id:
            self._finish_deferred(it, body, uploads, "edit_original")
        else:
            self._apply_edit(msg, body, uploads)
        self._record_edit(msg, body, uploads, "interaction")
        if not msg["flags"] & 64:
            self._emit("MESSAGE_UPDATE", msg)
        return _json(self._rest(msg))

    @_route("DELETE", rf"/webhooks/{_A}/{_T}/messages/(?P<message_id>@original|\d+)", auth=False)
    async def _r_webhook_delete(self, params, query, body, uploads):
        it = self._interaction_by_token(params["app_id"], params["token"])
        self._delete(self._webhook_message(it, params["message_id"]))
        return web.Response(status=204)
