"""API keys: created and revoked by the operator, looked up by the web frontend.

Keyword-only functions that take a ``session``; the caller commits. A key's secret is
shown once, when it is created; only its SHA-256 is stored.
"""

from __future__ import annotations

import hashlib
import secrets

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from storage.models import ApiKey, utcnow

SECRET_PREFIX = "qvl-"


class KeyNameTaken(ValueError):
    """Another key already has this name."""


def secret_hash(secret: str) -> str:
    """The SHA-256 (hex) a key's secret is stored as."""
    return hashlib.sha256(secret.encode()).hexdigest()


def create_key(*, session: Session, name: str, rate_limit: int | None = None) -> tuple[ApiKey, str]:
    """A new key named ``name`` and its secret (shown once, never stored).

    Raises :class:`KeyNameTaken` when the name is in use (revoked keys keep theirs)
    and ``ValueError`` for an empty or too long name or a negative rate limit.
    """
    name = name.strip()
    if not 1 <= len(name) <= 64:
        raise ValueError("a key's name has 1 to 64 characters")
    if rate_limit is not None and rate_limit < 0:
        raise ValueError("a rate limit is 0 (none) or more turns")
    secret = SECRET_PREFIX + secrets.token_urlsafe(32)
    key = ApiKey(name=name, prefix=secret[:12], secret_sha256=secret_hash(secret), rate_limit=rate_limit)
    try:
        with session.begin_nested():
            session.add(key)
    except IntegrityError as exc:
        raise KeyNameTaken(f"a key named {name!r} exists already") from exc
    return key, secret


def key_for_secret(*, session: Session, secret: str) -> ApiKey | None:
    """The key whose secret this is, unless it is unknown or revoked (then None)."""
    key = session.scalars(select(ApiKey).where(ApiKey.secret_sha256 == secret_hash(secret))).one_or_none()
    return key if key is not None and key.revoked_at is None else None


def get_key(*, session: Session, key_id: int) -> ApiKey | None:
    """The key with this id (revoked or not), or None."""
    return session.get(ApiKey, key_id)


def find_key(*, session: Session, name_or_id: str) -> ApiKey | None:
    """The key named ``name_or_id``, else the one with that id, else None."""
    key = session.scalars(select(ApiKey).where(ApiKey.name == name_or_id)).one_or_none()
    if key is None and name_or_id.isdigit():
        key = session.get(ApiKey, int(name_or_id))
    return key


def list_keys(*, session: Session) -> list[ApiKey]:
    """Every key, oldest first, revoked ones included."""
    return list(session.scalars(select(ApiKey).order_by(ApiKey.id)))


def active_keys(*, session: Session) -> int:
    """How many keys are not revoked."""
    return sum(1 for key in list_keys(session=session) if key.revoked_at is None)


def revoke_key(*, session: Session, key: ApiKey) -> bool:
    """Revoke ``key`` for good; False if it was revoked already."""
    if key.revoked_at is not None:
        return False
    key.revoked_at = utcnow()
    return True


def operator_key(*, session: Session, name: str = "operator") -> ApiKey:
    """The local operator's key (the one-time login link signs in as it), created if
    missing; its secret is never shown: the operator's browser holds a signed session."""
    key = session.scalars(select(ApiKey).where(ApiKey.name == name)).one_or_none()
    if key is not None:
        return key
    try:
        key, _ = create_key(session=session, name=name)
    except KeyNameTaken:
        return session.scalars(select(ApiKey).where(ApiKey.name == name)).one()
    return key
