"""Engines, sessions and migrations for SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError
from sqlalchemy.orm import Session, sessionmaker

from qvl.errors import UserFacingError
from qvl.urls import redact_url as redact_database_url  # a user name alone is kept

_HERE = Path(__file__).resolve().parent
ALEMBIC_INI = _HERE / "alembic.ini"
MIGRATIONS_DIR = _HERE / "migrations"
# Any constant: serialises concurrent `upgrade` calls on one PostgreSQL database.
_MIGRATION_LOCK_ID = 0x71766C


def normalize_url(url: str) -> str:
    """Return ``url`` with ``postgres://`` and ``postgresql://`` mapped to the psycopg 3 driver."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def make_engine(url: str) -> Engine:
    """Return an engine for ``url`` (SQLite file or PostgreSQL), configured for this app.

    SQLite gets WAL, foreign keys and a 5 s busy timeout, and its transactions
    start with ``BEGIN IMMEDIATE`` so that concurrent writers wait for each other
    instead of failing; keep SQLite sessions short (never across model inference).
    """
    return _make_engine(url, foreign_keys=True)


def _make_engine(url: str, *, foreign_keys: bool, connect_timeout_s: int | None = None) -> Engine:
    url = normalize_url(url)
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        connect_args = {}
        if (connect_timeout_s and parsed.get_backend_name() == "postgresql"
                and "connect_timeout" not in parsed.query):
            connect_args["connect_timeout"] = connect_timeout_s  # libpq waits for ever by default
        return create_engine(url, pool_pre_ping=True, connect_args=connect_args)

    database = parsed.database
    if database and database != ":memory:" and not database.startswith("file:"):
        Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"check_same_thread": False})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # pysqlite's own transaction handling breaks SAVEPOINT; SQLAlchemy's
        # documented recipe is to switch it off and emit BEGIN ourselves.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute(f"PRAGMA foreign_keys={'ON' if foreign_keys else 'OFF'}")
            cursor.execute("PRAGMA busy_timeout=5000")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        # IMMEDIATE takes the write lock up front: a deferred transaction that
        # read first fails at once with "database is locked" when it later writes.
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    """Return a session factory bound to ``engine``; objects stay usable after commit."""
    return sessionmaker(bind=engine, expire_on_commit=False)


def _alembic_config() -> Any:
    from alembic.config import Config

    config = Config(str(ALEMBIC_INI))
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return config


def head_revision() -> str:
    """Return the newest migration revision id."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(_alembic_config()).get_current_head()
    if head is None:
        raise RuntimeError(f"no migrations found in {MIGRATIONS_DIR}")
    return head


def upgrade(url: str, revision: str = "head", *, setting: str | None = "DATABASE_URL") -> None:
    """Migrate the database at ``url`` to ``revision``; raises on a failed migration.

    Safe to call from several processes at start-up: PostgreSQL runs take an
    advisory lock, SQLite ones the write lock. On SQLite foreign keys are off
    while migrating (table rebuilds would cascade) and checked afterwards.
    A URL that cannot be read, a driver that is not installed and a database that
    cannot be reached raise a one-line :class:`DatabaseUnavailable` naming ``setting``.
    """
    from alembic import command

    config = _alembic_config()
    engine = open_database(url, setting=setting)
    try:
        with engine.begin() as connection:
            if connection.dialect.name == "postgresql":
                connection.execute(
                    text("SELECT pg_advisory_xact_lock(:id)"), {"id": _MIGRATION_LOCK_ID}
                )
            config.attributes["connection"] = connection
            command.upgrade(config, revision)
            if connection.dialect.name == "sqlite":
                broken = connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
                if broken:
                    raise RuntimeError(f"migration left broken foreign keys: {broken[:5]}")
    finally:
        engine.dispose()


def current_revision(url: str) -> str | None:
    """Return the database's migration revision, or None if it was never migrated."""
    from alembic.runtime.migration import MigrationContext

    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()
    finally:
        engine.dispose()


class DatabaseUnavailable(UserFacingError):
    """The database cannot be used at all: its URL, its driver or the connection."""


# The package that brings each driver module SQLAlchemy imports (pip names).
DRIVER_PACKAGES = {
    "MySQLdb": "mysqlclient (or use mysql+pymysql:// with PyMySQL)",
    "pymysql": "PyMySQL",
    "mysql": "mysql-connector-python",
    "mariadb": "mariadb",
    "psycopg": "psycopg[binary]",
    "psycopg2": "psycopg2-binary (or use postgresql:// with psycopg 3, which qvl installs)",
    "pg8000": "pg8000",
    "asyncpg": "asyncpg",
    "pyodbc": "pyodbc",
    "pymssql": "pymssql",
    "oracledb": "oracledb",
    "cx_Oracle": "cx_Oracle",
}


def open_database(url: str, *, setting: str | None = "DATABASE_URL", connect_timeout_s: int = 10) -> Engine:
    """An engine for migrating ``url`` (foreign keys off on SQLite) that has connected once;
    else a one-line :class:`DatabaseUnavailable` naming ``setting``, never a password."""
    where = f"{setting}={redact_database_url(url)}" if setting else redact_database_url(url)
    try:
        make_url(normalize_url(url))
    except (ArgumentError, ValueError) as exc:
        detail = f" ({exc})" if isinstance(exc, ValueError) else ""
        raise DatabaseUnavailable(
            f"{where} is not a database URL{detail}: e.g. postgresql://USER:PASSWORD@HOST/DB or "
            "sqlite:////path/to/file.sqlite3") from exc
    try:
        engine = _make_engine(url, foreign_keys=False, connect_timeout_s=connect_timeout_s)
    except NoSuchModuleError as exc:  # (an ArgumentError too)
        dialect = str(exc).rsplit(":", 1)[-1].strip()
        raise DatabaseUnavailable(
            f"{where}: SQLAlchemy knows no database {dialect!r} "
            "(qvl runs on postgresql:// and sqlite://)") from exc
    except ArgumentError as exc:
        raise DatabaseUnavailable(f"{where} is not a database URL SQLAlchemy can use ({exc})") from exc
    except OSError as exc:  # SQLite: its directory cannot be made
        raise DatabaseUnavailable(
            f"cannot open the database at {where} ({exc.strerror or exc}: {exc.filename})") from exc
    except ImportError as exc:
        module = (exc.name or "").split(".")[0] or str(exc)
        package = DRIVER_PACKAGES.get(module, module)
        raise DatabaseUnavailable(
            f"{where} needs the database driver {module!r}, which is not installed: "
            f"pip install {package}") from exc
    try:
        with engine.connect():
            pass
    except DBAPIError as exc:
        engine.dispose()
        raise DatabaseUnavailable(f"cannot reach the database at {where} ({_why(exc)})") from exc
    return engine


def _why(exc: DBAPIError) -> str:
    """A few words for why connecting failed, from the driver's message."""
    text = str(exc.orig if exc.orig is not None else exc).strip()
    lowered = text.lower()
    for needle, reason in (
        ("connection refused", "connection refused"),
        ("failed to resolve host", "unknown host"),
        ("could not translate host name", "unknown host"),
        ("name or service not known", "unknown host"),
        ("password authentication failed", "authentication failed: check the user and password"),
        ("no password supplied", "it wants a password"),
        ("timeout expired", "timed out"),
        ("timed out", "timed out"),
        ("unable to open database file", "cannot open the file: does its directory exist and is it writable?"),
    ):
        if needle in lowered:
            return reason
    if "FATAL:" in text:  # PostgreSQL's own words: role or database does not exist, ...
        text = text.split("FATAL:", 1)[1]
    first = text.strip().splitlines()[0] if text.strip() else type(exc.orig or exc).__name__
    return first.strip()[:200]
