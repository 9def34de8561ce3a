"""JSON payload builders: members, roles, guilds, the application, mentions, attachments,
threads and messages, in the shapes Discord sends them (the REST API's messages differ a
little from the gateway's: see ``_rest``)."""

from __future__ import annotations

import copy
import io
import mimetypes
from typing import Any
from urllib.parse import quote

from .protocol import Intent, _HTTPError, _now_iso
from .state import _Guild, _Interaction


def _image_size(data: bytes) -> tuple[int, int] | None:
    try:
        from PIL import Image

        with Image.open(io.BytesIO(data)) as image:
            return image.size
    except Exception:  # not an image Pillow knows: Discord just omits width/height
        return None


class PayloadsMixin:
    """Builds (and stores, for messages, threads and attachments) Discord's payloads."""

    @staticmethod
    def _role_payload(rid: int, name: str, permissions: int, *, position: int, hoist: bool = False,
                      managed: bool = False, tags: dict | None = None) -> dict:  # fmt: skip
        role = {
            "id": str(rid), "name": name, "color": 0,
            "colors": {"primary_color": 0, "secondary_color": None, "tertiary_color": None},
            "hoist": hoist, "icon": None, "unicode_emoji": None, "position": position,
            "permissions": str(permissions), "managed": managed, "mentionable": False, "flags": 0,
        }  # fmt: skip
        if tags:
            role["tags"] = tags
        return role

    @staticmethod
    def _member_payload(roles: list[int]) -> dict:
        return {
            "roles": [str(r) for r in roles], "nick": None, "avatar": None, "banner": None,
            "joined_at": _now_iso(), "premium_since": None, "deaf": False, "mute": False,
            "flags": 0, "pending": False, "communication_disabled_until": None,
        }  # fmt: skip

    def _member(self, guild_id: int, user_id: int, *, with_user: bool = True) -> dict:
        member = copy.deepcopy(self.guilds[guild_id].members[user_id])
        if with_user:
            member["user"] = self.user(user_id)
        return member

    def _guild_of(self, channel_id: int) -> int | None:
        gid = self.channels[channel_id].get("guild_id")
        return int(gid) if gid else None

    def _guild_create(self, guild: _Guild, intents: int) -> dict:
        # Without GUILD_MEMBERS Discord sends only the bot's own member.
        member_ids = list(guild.members) if intents & Intent.GUILD_MEMBERS else [self.bot_id]
        channels = []
        for cid in guild.channels:
            channel = copy.deepcopy(self.channels[cid])
            channel.pop("guild_id", None)  # GUILD_CREATE's channels carry no guild_id
            channels.append(channel)
        return {
            "id": str(guild.id), "name": guild.name, "icon": None, "splash": None,
            "discovery_splash": None, "banner": None, "description": None,
            "owner_id": str(guild.owner_id), "afk_channel_id": None, "afk_timeout": 300,
            "verification_level": 0, "default_message_notifications": 0,
            "explicit_content_filter": 0, "mfa_level": 0, "nsfw_level": 0, "features": [],
            "roles": list(copy.deepcopy(guild.roles).values()), "emojis": [], "stickers": [],
            "system_channel_id": str(guild.channels[0]) if guild.channels else None,
            "system_channel_flags": 0, "rules_channel_id": None, "public_updates_channel_id": None,
            "safety_alerts_channel_id": None, "max_members": 500000, "vanity_url_code": None,
            "premium_tier": 0, "premium_subscription_count": 0, "preferred_locale": "en-US",
            "premium_progress_bar_enabled": False, "application_id": None,
            "joined_at": guild.joined_at, "large": False, "unavailable": False,
            "member_count": len(guild.members),
            "members": [self._member(guild.id, uid) for uid in member_ids],
            "channels": channels,
            "threads": [copy.deepcopy(self.channels[t]) for t in guild.threads],
            "voice_states": [], "presences": [], "stage_instances": [],
            "guild_scheduled_events": [], "soundboard_sounds": [],
        }  # fmt: skip

    def _app_info(self) -> dict:
        flags = (1 << 13) | (1 << 15) | (1 << 19)  # the three *_LIMITED gateway intent flags
        return {
            "id": str(self.application_id), "name": self.users[self.bot_id]["username"],
            "icon": None, "description": "", "summary": "", "type": None, "bot_public": True,
            "bot_require_code_grant": False, "owner": self.user(self.developer_id),
            "team": None, "verify_key": "0" * 64, "flags": flags, "tags": [],
            "bot": self.user(self.bot_id), "redirect_uris": [], "interactions_endpoint_url": None,
            "approximate_guild_count": len(self.guilds), "install_params": None,
        }  # fmt: skip

    def _mention(self, guild_id: int | None, user_id: int) -> dict:
        user = self.user(user_id)
        if guild_id and user_id in self.guilds[guild_id].members:
            user["member"] = self._member(guild_id, user_id, with_user=False)
        return user

    def _store_attachment(self, channel_id: int, filename: str, data: bytes,
                          content_type: str | None = None, *, description: str | None = None,
                          ephemeral: bool = False) -> dict:  # fmt: skip
        aid = self._ids.next()
        content_type = (
            content_type or mimetypes.guess_type(filename)[0] or "application/octet-stream"
        )
        path = f"/attachments/{channel_id}/{aid}/{filename}"
        self._files[path] = (data, content_type)
        url = f"{self.base_url}/attachments/{channel_id}/{aid}/{quote(filename)}"
        attachment = {
            "id": str(aid), "filename": filename, "size": len(data), "url": url,
            "proxy_url": url, "content_type": content_type,
        }  # fmt: skip
        if description:
            attachment["description"] = description
        if ephemeral:
            attachment["ephemeral"] = True
        if content_type.startswith("image/") and (size := _image_size(data)):
            attachment["width"], attachment["height"] = size
        return attachment

    def _new_thread(self, parent_id: int, name: str, owner_id: int, *, thread_id: int | None = None,
                    private: bool = False, auto_archive: int = 1440) -> dict:  # fmt: skip
        gid = self._guild_of(parent_id)
        if gid is None:
            raise _HTTPError(400, 50024, "Cannot execute action on this channel type")
        tid = thread_id or self._ids.next()
        now = _now_iso()
        metadata = {"archived": False, "auto_archive_duration": auto_archive, "archive_timestamp": now,
                    "locked": False, "create_timestamp": now}  # fmt: skip
        if private:
            metadata["invitable"] = True
        thread = {
            "id": str(tid), "type": 12 if private else 11, "guild_id": str(gid),
            "parent_id": str(parent_id), "owner_id": str(owner_id), "name": name,
            "last_message_id": None, "message_count": 0, "member_count": 1,
            "rate_limit_per_user": 0, "flags": 0, "total_message_sent": 0,
            "thread_metadata": metadata, "applied_tags": [],
        }  # fmt: skip
        self.channels[tid] = thread
        self.guilds[gid].threads.append(tid)
        return thread

    def _new_message(self, *, channel_id: int, author_id: int, content: str = "",
                     attachments: list[dict] | None = None, mention_ids: list[int] | None = None,
                     mention_roles: list[int] | None = None, mention_everyone: bool = False,
                     reference: dict | None = None, msg_type: int = 0, flags: int = 0,
                     embeds: list | None = None, components: list | None = None,
                     nonce: Any = None, webhook_id: int | None = None,
                     interaction: _Interaction | None = None, tts: bool = False) -> dict:  # fmt: skip
        channel = self.channels[channel_id]
        gid = self._guild_of(channel_id)
        mid = self._ids.next()
        msg: dict[str, Any] = {
            "id": str(mid), "channel_id": str(channel_id), "author": self.user(author_id),
            "content": content, "timestamp": _now_iso(), "edited_timestamp": None, "tts": tts,
            "mention_everyone": mention_everyone,
            "mentions": [self._mention(gid, u) for u in mention_ids or []],
            "mention_roles": [str(r) for r in mention_roles or []],
            "attachments": attachments or [], "embeds": embeds or [], "pinned": False,
            "type": msg_type, "flags": flags, "components": components or [],
        }  # fmt: skip
        if nonce is not None:
            msg["nonce"] = nonce
        if webhook_id is not None:
            msg["webhook_id"] = msg["application_id"] = str(webhook_id)
        if gid is not None:
            msg["guild_id"] = str(gid)
            if author_id in self.guilds[gid].members:
                msg["member"] = self._member(gid, author_id, with_user=False)
        if reference is not None:
            msg["message_reference"] = reference
            ref = self.messages.get(int(reference["message_id"]))
            msg["referenced_message"] = self._nested(ref) if ref else None
        if interaction is not None:
            msg["interaction_metadata"] = {
                "id": str(interaction.id), "type": 2, "user": self.user(interaction.user_id),
                "name": interaction.name, "command_type": 1,
                "authorizing_integration_owners": (
                    {"0": str(interaction.guild_id)} if interaction.guild_id
                    else {"1": str(interaction.user_id)}
                ),
            }  # fmt: skip
            interaction.message_ids.add(mid)
        if channel["type"] in (11, 12):
            msg["position"] = channel["total_message_sent"]
            channel["message_count"] += 1
            channel["total_message_sent"] += 1
        if not flags & 64:
            channel["last_message_id"] = str(mid)
        self.messages[mid] = msg
        return msg

    @staticmethod
    def _nested(msg: dict) -> dict:
        nested = copy.deepcopy(msg)
        nested.pop("referenced_message", None)
        return nested

    @staticmethod
    def _rest(msg: dict) -> dict:
        """A message as the REST API returns it: no guild_id, no member objects."""
        out = copy.deepcopy(msg)
        out.pop("guild_id", None)
        out.pop("member", None)
        for mention in out.get("mentions", []):
            mention.pop("member", None)
        return out
