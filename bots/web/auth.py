"""Who may use the web frontend: API keys (stored hashed), signed sessions for the page,
one-time login links for the local operator, and signed links to stored pictures.

A session token (``qs1.KEY.EXPIRES.SIG``) and a picture link's signature are HMACs with
the frontend's secret (``QVL_WEB_SECRET``, else a random one kept in
``data_dir/web.secret``), so every ``qvl web`` sharing that secret accepts them.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from qvl.settings import Settings
from storage import keys

SESSION_DAYS = 30
LOGIN_TTL_S = 24 * 3600  # a login link printed by `qvl up` works once, within a day


@dataclass(frozen=True)
class Principal:
    """Whoever a request speaks for: one API key. Its conversations are its own."""

    key_id: int
    name: str
    rate_limit: int | None

    @property
    def user_id(self) -> str:
        return f"key{self.key_id}"


def load_secret(settings: Settings) -> bytes:
    """The HMAC secret: ``QVL_WEB_SECRET``, else ``data_dir/web.secret`` (made once, 0600)."""
    if settings.web_secret is not None:
        return settings.web_secret.get_secret_value().encode()
    path = Path(settings.data_dir) / "web.secret"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process made it first: read theirs
            pass
        else:
            with os.fdopen(fd, "w") as handle:
                handle.write(secrets.token_urlsafe(32))
    for _ in range(50):  # the maker may not have written it yet
        secret = path.read_text().strip()
        if secret:
            return secret.encode()
        time.sleep(0.02)
    raise RuntimeError(f"{path} is empty: delete it and start again")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class Signer:
    """Makes and checks session tokens and picture-link signatures."""

    def __init__(self, secret: bytes):
        self.secret = secret

    def _mac(self, text: str, length: int = 32) -> str:
        return _b64(hmac.new(self.secret, text.encode(), hashlib.sha256).digest())[:length]

    def session(self, key_id: int, *, days: int = SESSION_DAYS) -> str:
        """A session token for key ``key_id``, valid ``days`` days."""
        expires = int(time.time()) + days * 86400
        return f"qs1.{key_id}.{expires}.{self._mac(f'session:{key_id}:{expires}')}"

    def session_key(self, token: str) -> int | None:
        """The key id a session token speaks for; None when forged or expired."""
        try:
            tag, key_id, expires, mac = token.split(".")
            key, until = int(key_id), int(expires)
        except ValueError:
            return None
        if tag != "qs1" or until < time.time():
            return None
        return key if hmac.compare_digest(mac, self._mac(f"session:{key}:{until}")) else None

    def file_sig(self, key_id: int, sha256: str) -> str:
        return self._mac(f"file:{key_id}:{sha256}", 22)

    def file_ok(self, key_id: int, sha256: str, sig: str) -> bool:
        return hmac.compare_digest(sig, self.file_sig(key_id, sha256))


def principal_for(sessions: sessionmaker[Session], signer: Signer, token: str) -> Principal | None:
    """Whom ``token`` (an API key's secret or a session token) speaks for, or None when it
    is unknown, forged, expired or its key was revoked."""
    token = token.strip()
    with sessions() as session:
        if token.startswith("qs1."):
            key_id = signer.session_key(token)
            key = keys.get_key(session=session, key_id=key_id) if key_id is not None else None
            if key is not None and key.revoked_at is not None:
                key = None
        elif token.startswith(keys.SECRET_PREFIX):
            key = keys.key_for_secret(session=session, secret=token)
        else:
            key = None
        return Principal(key.id, key.name, key.rate_limit) if key is not None else None


def login_redis_key(namespace: str, token: str) -> str:
    return f"{namespace}:web:login:{hashlib.sha256(token.encode()).hexdigest()}"


def make_login_link(settings: Settings, redis_url: str, *, base: str | None = None) -> str:
    """A one-time link that signs the local operator in (as the ``operator`` key, created
    if missing), valid for a day: what ``qvl up`` prints, as Jupyter does."""
    import redis

    from storage.db import make_engine, make_sessionmaker

    engine = make_engine(settings.resolved_database_url())
    try:
        with make_sessionmaker(engine)() as session:
            keys.operator_key(session=session)
            session.commit()
    finally:
        engine.dispose()
    token = secrets.token_urlsafe(24)
    client = redis.Redis.from_url(redis_url)
    try:
        client.set(login_redis_key(settings.namespace, token), b"1", ex=LOGIN_TTL_S)
    finally:
        client.close()
    return f"{base or base_url(settings)}/login?token={token}"


def base_url(settings: Settings) -> str:
    host = settings.web_host
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else ("localhost" if host == "::" else host)
    if ":" in shown:
        shown = f"[{shown}]"
    return f"http://{shown}:{settings.web_port}"
