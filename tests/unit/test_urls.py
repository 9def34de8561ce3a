"""Redis and database URLs: which are accepted, and how they are shown (never a password)."""

from __future__ import annotations

from pathlib import Path

import pytest

from qvl.errors import UserFacingError
from qvl.queue import (
    SOCKET_PATH_MAX,
    broker_url,
    embedded_socket_path,
    redact_url,
    validate_redis_url,
)
from storage.db import redact_database_url


@pytest.mark.parametrize("url", [
    "redis://127.0.0.1:6379/0",
    "redis://:pw@queue-host:6379/0",
    "rediss://default:pw@queue-host:6380",
    "unix:///var/run/redis.sock",
    "unix:///var/run/redis.sock?db=2",
])
def test_redis_urls_of_the_three_schemes_are_accepted(url):
    validate_redis_url(url)


@pytest.mark.parametrize(("url", "detail"), [
    ("nonsense", ""),  # Celery would read it as an AMQP URL and wait for a broker for ever
    ("amqp://guest@rabbit//", ""),
    ("localhost:6379", ""),
    ("redis://queue-host:port/0", "Port could not be cast"),
    ("redis:///0", "no host"),
    ("unix://", "no socket path"),
])
def test_other_redis_urls_are_refused_naming_the_setting(url, detail):
    with pytest.raises(UserFacingError) as caught:
        validate_redis_url(url)
    assert caught.value.message.startswith(f"REDIS_URL={url} is not a Redis URL (redis://, rediss:// or unix://)")
    assert detail in caught.value.message


def test_celery_never_gets_a_url_that_is_not_redis():
    with pytest.raises(UserFacingError, match="REDIS_URL=nonsense is not a Redis URL"):
        broker_url("nonsense")
    assert broker_url("unix:///tmp/r.sock") == "redis+socket:///tmp/r.sock"


def test_a_refused_redis_url_does_not_show_its_password():
    with pytest.raises(UserFacingError) as caught:
        validate_redis_url("redis://:s3cret@queue-host:port/0")
    assert "s3cret" not in caught.value.message and "redis://:***@queue-host:port/0" in caught.value.message


@pytest.mark.parametrize(("url", "shown"), [
    ("redis://:s3cret@h:6379/0", "redis://:***@h:6379/0"),
    ("rediss://default:s3cret@h:6380", "rediss://default:***@h:6380"),
    ("redis://s3cret@h/0", "redis://***@h/0"),  # a password written where the user goes
    ("unix:///tmp/r.sock?db=1&password=s3cret", "unix:///tmp/r.sock?db=1&password=***"),
    ("redis://h:6379/0", "redis://h:6379/0"),
    ("unix:///tmp/r.sock", "unix:///tmp/r.sock"),
    ("not-a-url:s3cret@h", "***@h"),
])
def test_redis_urls_are_shown_without_their_password(url, shown):
    assert redact_url(url) == shown


@pytest.mark.parametrize(("url", "shown"), [
    ("postgresql://user:s3cret@host/db", "postgresql://user:***@host/db"),
    ("postgresql://postgres@127.0.0.1:1/x", "postgresql://postgres@127.0.0.1:1/x"),
    ("postgres://u:p%40s3cret@h:5/d?sslmode=require&password=s3cret",
     "postgres://u:***@h:5/d?sslmode=require&password=***"),
    ("postgresql://u:pa@s3cret@h/d", "postgresql://u:***@h/d"),  # an '@' in the password
    ("mysql+pymysql://a:s3cret@h/d", "mysql+pymysql://a:***@h/d"),
    ("sqlite:////var/lib/qvl/qvl.sqlite3", "sqlite:////var/lib/qvl/qvl.sqlite3"),
    ("sqlite:///relative.db", "sqlite:///relative.db"),
    ("nonsense", "nonsense"),
    ("user:s3cret@host", "***@host"),
])
def test_database_urls_are_shown_without_their_password(url, shown):
    assert redact_database_url(url) == shown


def test_the_embedded_socket_lives_in_the_data_dir_when_its_path_is_short_enough(tmp_path):
    path, why = embedded_socket_path(tmp_path / "redis")
    assert path == tmp_path / "redis" / "redis.sock" and why is None


def test_a_socket_path_too_long_for_unix_falls_back_to_a_short_one_saying_why():
    directory = Path("/srv") / ("d" * 120) / "redis"
    path, why = embedded_socket_path(directory)
    assert len(str(path).encode()) <= SOCKET_PATH_MAX
    assert path.parent == Path("/tmp") and path.name.startswith("qvl-redis-")
    assert "over the 107" in why and str(path) in why
    again, _ = embedded_socket_path(directory)
    other, _ = embedded_socket_path(directory.parent / "other")
    assert again == path and other != path  # stable per data dir, distinct between them
