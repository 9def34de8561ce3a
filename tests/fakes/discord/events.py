"""Test-side events: what a test makes users do (post, edit, delete, type, run a slash
command), delivered to the bot over the gateway as Discord would."""

from __future__ import annotations

import copy
import secrets
import time
from typing import Any

from .protocol import _ROLE_MENTION, _USER_MENTION, Permission, _now_iso
from .state import _Interaction


class UserEventsMixin:
    """Users' actions, as gateway events."""

    def _known_channel(self, channel_id: int) -> dict:
        if channel_id not in self.channels:
            raise KeyError(f"fake Discord has no channel {channel_id}")
        return self.channels[channel_id]

    async def user_message(self, channel_id: int, author_id: int, content: str = "", *,
                           attachments: list[tuple] | tuple = (), mentions: list[int] | tuple = (),
                           reply_to: int | None = None, guild_id: int | None = None,
                           ping_reply: bool = True, embeds: list[dict] | None = None) -> dict:  # fmt: skip
        """A user posts a message: MESSAGE_CREATE. Returns a copy of the payload.

        ``attachments`` are ``(filename, bytes)`` or ``(filename, bytes, content_type)``,
        served at the payload's ``url``. Mentions are the ``<@id>`` in ``content`` plus
        ``mentions``; a reply also mentions the replied-to author unless ``ping_reply``
        is false.
        """
        self._known_channel(channel_id)
        gid = self._guild_of(channel_id)
        if guild_id is not None and guild_id != gid:
            raise ValueError(f"channel {channel_id} is in guild {gid}, not {guild_id}")
        if author_id not in self.users:
            raise KeyError(f"fake Discord has no user {author_id}")
        stored = [self._store_attachment(channel_id, *spec) for spec in attachments]
        mention_ids = [int(m) for m in _USER_MENTION.findall(content)] + list(mentions)
        reference = None
        if reply_to is not None:
            target = self.messages[reply_to]
            reference = {"type": 0, "message_id": str(reply_to), "channel_id": target["channel_id"],
                         "fail_if_not_exists": False}  # fmt: skip
            if gid is not None:
                reference["guild_id"] = str(gid)
            if ping_reply:
                mention_ids.append(int(target["author"]["id"]))
        mention_ids = [u for u in dict.fromkeys(mention_ids) if u in self.users]
        roles = [int(r) for r in _ROLE_MENTION.findall(content)]
        msg = self._new_message(
            channel_id=channel_id, author_id=author_id, content=content, attachments=stored,
            mention_ids=mention_ids, mention_everyone="@everyone" in content,
            mention_roles=[r for r in roles if gid and r in self.guilds[gid].roles],
            reference=reference, msg_type=19 if reference else 0, embeds=embeds,
        )  # fmt: skip
        await self.dispatch("MESSAGE_CREATE", msg)
        return copy.deepcopy(msg)

    async def user_edit(self, message_id: int, content: str) -> dict:
        """A user edits their message: MESSAGE_UPDATE. Returns the new payload."""
        msg = self.messages[message_id]
        msg["content"], msg["edited_timestamp"] = content, _now_iso()
        await self.dispatch("MESSAGE_UPDATE", msg)
        return copy.deepcopy(msg)

    async def user_delete(self, message_id: int) -> None:
        """A message is deleted by its author: MESSAGE_DELETE."""
        msg = self.messages.pop(message_id)
        payload = {"id": msg["id"], "channel_id": msg["channel_id"]}
        if "guild_id" in msg:
            payload["guild_id"] = msg["guild_id"]
        await self.dispatch("MESSAGE_DELETE", payload)

    async def user_typing(self, channel_id: int, user_id: int) -> dict:
        """A user starts typing: TYPING_START."""
        gid = self._guild_of(channel_id)
        payload: dict[str, Any] = {"channel_id": str(channel_id), "user_id": str(user_id),
                                   "timestamp": int(time.time())}  # fmt: skip
        if gid is not None:
            payload["guild_id"] = str(gid)
            payload["member"] = self._member(gid, user_id)
        return await self.dispatch("TYPING_START", payload)

    def _find_command(self, guild_id: int | None, name: str) -> tuple[dict, bool]:
        for scope in ([guild_id] if guild_id else []) + [None]:
            for cmd in self.commands.get(scope, []):
                if cmd["name"] == name and cmd.get("type", 1) == 1:
                    return cmd, scope is not None
        known = {scope: [c["name"] for c in cmds] for scope, cmds in self.commands.items()}
        raise LookupError(f"/{name} was never synced (global: None); synced so far: {known}")

    async def slash(self, guild_id: int | None, channel_id: int, user_id: int, name: str,
                    options: dict[str, Any] | list[dict] | None = None, *,
                    attachments: dict[str, tuple] | None = None, locale: str = "en-US") -> dict:  # fmt: skip
        """A user runs a synced slash command: INTERACTION_CREATE (type 2). Returns the payload.

        ``name`` may hold subcommands ("draw box"). ``options`` is ``{name: value}`` (typed
        from the synced command; users, channels and roles by id) or Discord's raw option
        list. ``attachments`` is ``{option_name: (filename, bytes[, content_type])}``.
        Use ``guild_id=None`` with a DM channel for a DM invocation.
        """
        self._known_channel(channel_id)
        if guild_id is not None and user_id not in self.guilds[guild_id].members:
            raise ValueError(f"user {user_id} is not a member of guild {guild_id}")
        top, *subs = name.split()
        cmd, is_guild_cmd = self._find_command(guild_id, top)
        schema = cmd.get("options", [])
        sub_types = []
        for sub in subs:
            spec = next((o for o in schema if o["name"] == sub and o["type"] in (1, 2)), None)
            if spec is None:
                raise LookupError(f"/{top} has no subcommand {sub!r}")
            sub_types.append(spec["type"])
            schema = spec.get("options", [])
        resolved: dict[str, dict] = {}
        if isinstance(options, list):
            leaf = options
        else:
            leaf = []
            for opt_name, value in {**(options or {}), **(attachments or {})}.items():
                spec = next((o for o in schema if o["name"] == opt_name), None)
                if spec is None:
                    raise KeyError(
                        f"/{name} has no option {opt_name!r}; it has {[o['name'] for o in schema]}"
                    )
                leaf.append(self._option(spec, value, resolved, guild_id, channel_id))
        opts = leaf
        for sub, sub_type in reversed(list(zip(subs, sub_types, strict=True))):
            opts = [{"name": sub, "type": sub_type, "options": opts}]
        data: dict[str, Any] = {"id": cmd["id"], "name": top, "type": 1, "options": opts}
        if resolved:
            data["resolved"] = resolved
        if is_guild_cmd:
            data["guild_id"] = str(guild_id)
        iid, token = self._ids.next(), "fake-" + secrets.token_urlsafe(48)
        payload: dict[str, Any] = {
            "id": str(iid), "application_id": str(self.application_id), "type": 2, "data": data,
            "channel_id": str(channel_id), "channel": self._interaction_channel(channel_id, user_id),
            "token": token, "version": 1, "locale": locale, "entitlements": [],
            "attachment_size_limit": self.upload_limit,
        }  # fmt: skip
        if guild_id is not None:
            payload.update({
                "guild_id": str(guild_id), "guild_locale": "en-US",
                "guild": {"id": str(guild_id), "locale": "en-US", "features": []},
                "member": {**self._member(guild_id, user_id),
                           "permissions": str(self.permissions(guild_id, user_id))},
                "app_permissions": str(self.permissions(guild_id, self.bot_id)),
                "authorizing_integration_owners": {"0": str(guild_id)}, "context": 0,
            })  # fmt: skip
        else:
            payload.update({"user": self.user(user_id), "context": 1,
                            "app_permissions": str(Permission.EVERYONE),
                            "authorizing_integration_owners": {"0": "0"}})  # fmt: skip
        self._interactions[iid] = _Interaction(
            iid, token, guild_id, channel_id, user_id, top, time.monotonic()
        )
        await self.dispatch("INTERACTION_CREATE", payload)
        return copy.deepcopy(payload)

    def _interaction_channel(self, channel_id: int, user_id: int) -> dict:
        channel = self.channel(channel_id)
        gid = self._guild_of(channel_id)
        if gid is None:
            channel["recipients"] = [self.user(user_id)]
        else:
            channel["permissions"] = str(self.permissions(gid, user_id))
        return channel

    def _option(
        self, spec: dict, value: Any, resolved: dict, guild_id: int | None, channel_id: int
    ) -> dict:
        kind = spec["type"]
        option = {"name": spec["name"], "type": kind}
        if kind == 11:  # ATTACHMENT
            att = self._store_attachment(channel_id, *value, ephemeral=True)
            resolved.setdefault("attachments", {})[att["id"]] = att
            option["value"] = att["id"]
        elif kind == 6 or (kind == 9 and int(value) in self.users):  # USER / MENTIONABLE user
            uid = int(value)
            resolved.setdefault("users", {})[str(uid)] = self.user(uid)
            if guild_id is not None and uid in self.guilds[guild_id].members:
                member = {**self._member(guild_id, uid, with_user=False),
                          "permissions": str(self.permissions(guild_id, uid))}  # fmt: skip
                resolved.setdefault("members", {})[str(uid)] = member
            option["value"] = str(uid)
        elif kind in (8, 9):  # ROLE / MENTIONABLE role
            rid = int(value)
            resolved.setdefault("roles", {})[str(rid)] = copy.deepcopy(
                self.guilds[guild_id].roles[rid]
            )
            option["value"] = str(rid)
        elif kind == 7:  # CHANNEL
            cid = int(value)
            resolved.setdefault("channels", {})[str(cid)] = {
                **self.channel(cid),
                "permissions": str(Permission.ALL),
            }
            option["value"] = str(cid)
        elif kind == 4:
            option["value"] = int(value)
        elif kind == 10:
            option["value"] = float(value)
        elif kind == 5:
            option["value"] = bool(value)
        else:
            option["value"] = str(value)
        return option
