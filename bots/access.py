"""Who the bot serves where, and who may change a space's settings. Pure functions.

The operator's lists come from Settings (per platform); each space's admins add
their own channel list with ``/channels``. Empty lists mean "any".
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from qvl.protocol import Where
from qvl.settings import Settings


@dataclass(frozen=True)
class Policy:
    """A platform's access lists, from the operator's settings (empty: any)."""

    spaces: frozenset[str] = frozenset()  # servers, rooms, groups served
    channels: frozenset[str] = frozenset()  # channels answered in
    roles: frozenset[str] = frozenset()  # a member needs one of these roles
    admins: frozenset[str] = frozenset()  # users who may change settings besides the platform's admins


def policy_for(settings: Settings, platform: str) -> Policy:
    """The access lists the settings give ``platform``."""
    if platform == "discord":
        return Policy(spaces=settings.discord_allowed_guilds, channels=settings.discord_allowed_channels,
                      roles=settings.discord_allowed_roles)
    if platform == "wechat":
        return Policy(spaces=settings.wechat_rooms, admins=settings.wechat_admins)
    if platform == "wecom":
        return Policy(spaces=settings.wecom_groups, admins=settings.wecom_admins)
    return Policy()


def allowed(policy: Policy, config: Mapping, where: Where) -> bool:
    """Whether to serve a message written at ``where``. Direct chats are always served;
    in a space the space, the channel (a thread counts as its channel) and the member's
    roles must pass the operator's lists and the space's own channel list."""
    if where.space_id is None:
        return True
    if policy.spaces and where.space_id not in policy.spaces:
        return False
    channels = policy.channels | set(config.get("channels", ()))
    here = {c for c in (where.channel_id, where.parent_id) if c}
    if channels and not channels & here:
        return False
    return not policy.roles or bool(policy.roles & where.roles)


def is_admin(policy: Policy, where: Where, user_id: str) -> bool:
    """Whether ``user_id`` may change the settings of the space at ``where``."""
    return where.space_id is not None and (where.admin or user_id in policy.admins)
