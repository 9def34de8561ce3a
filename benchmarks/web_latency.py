"""The web frontend: time from "send" to the first streamed text, in the page (a real
headless Chromium) and through the OpenAI-compatible API (the ``openai`` client), beside
the same turn through ``qvl chat``'s path; p50 (and p90) over the same number of turns.

    REDIS_URL=redis://127.0.0.1:6379/0 python benchmarks/web_latency.py [--turns 50]

A `qvl worker` with the echo engine (it answers at once: what is measured is everything
but the model) and a `qvl web` run as processes of their own, on SQLite under a temporary
directory unless DATABASE_URL is set; Redis is REDIS_URL or an embedded one.
  - page: the click on Send (performance.now() in the page) → the first answer text in the DOM;
  - API: chat.completions.create(stream=True) called → the first chunk with content;
  - qvl chat, in process: core.handle() → the first streamed text in core.watch() (what
    `qvl chat` does once Python has started);
  - qvl chat, the command: the whole process, start to exit (Python start-up included).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bots.core import Core  # noqa: E402
from qvl.protocol import IncomingMessage  # noqa: E402
from qvl.queue import start_embedded_redis  # noqa: E402
from qvl.settings import Settings  # noqa: E402
from storage import keys  # noqa: E402
from storage.db import make_engine, make_sessionmaker, upgrade  # noqa: E402

FIRST_TEXT_JS = """async (text) => {
  const box = document.getElementById("messages");
  document.getElementById("text").value = text;
  const t0 = performance.now();
  document.getElementById("composer").requestSubmit();
  return await new Promise((resolve, reject) => {
    setTimeout(() => reject(new Error("no answer text after 30 s")), 30000);
    const seen = () => {
      const last = box.querySelector(".msg.assistant:last-child .text");
      if (last && last.textContent) { observer.disconnect(); resolve(performance.now() - t0); }
    };
    const observer = new MutationObserver(seen);
    observer.observe(box, { subtree: true, childList: true, characterData: true });
  });
}"""


def stats(samples: list[float]) -> str:
    q = statistics.quantiles(samples, n=10)
    return f"p50 {statistics.median(samples):7.1f} ms   p90 {q[8]:7.1f} ms   (n={len(samples)})"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(args: list[str], settings: Settings, log: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("QVL_")} | settings.as_env()
    return subprocess.Popen([sys.executable, "-m", "cli", *args], env=env, stdout=log.open("wb"),
                            stderr=subprocess.STDOUT, start_new_session=True)


def wait_for(predicate, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit(f"no {what} after {timeout:.0f} s")
        time.sleep(0.1)


def page_turns(url: str, key: str, turns: int) -> list[float]:
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    out = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page()
        page.goto(url)
        page.fill("#login-key", key)
        page.click("#login-form button[type=submit]")
        page.wait_for_selector("#app:not([hidden])")
        for i in range(turns + 3):
            elapsed = page.evaluate(FIRST_TEXT_JS, f"page question {i}")
            page.wait_for_function("!document.getElementById('send').disabled")  # the turn is over
            if i >= 3:  # warm-up
                out.append(elapsed)
        browser.close()
    return out


def api_turns(url: str, key: str, turns: int) -> list[float]:
    import openai

    client = openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0)
    out = []
    for i in range(turns + 3):
        start_ = time.perf_counter()
        first = None
        for chunk in client.chat.completions.create(model="echo", stream=True,
                                                    messages=[{"role": "user", "content": f"api question {i}"}]):
            if first is None and chunk.choices and chunk.choices[0].delta.content:
                first = time.perf_counter()
        if i >= 3:
            out.append((first - start_) * 1000)
    return out


async def terminal_turns(settings: Settings, turns: int) -> list[float]:
    core = Core(settings)
    out = []
    try:
        for i in range(turns + 3):
            start_ = time.perf_counter()
            accepted = await core.handle(IncomingMessage(platform="terminal", chat_id="bench", user_id="bench",
                                                         message_id=uuid.uuid4().hex, text=f"chat question {i}"))
            first = None
            async for status in core.watch(accepted.job_id):
                if first is None and (status.partial or status.state == "done"):
                    first = time.perf_counter()
            await core.take_reply(accepted.job_id)
            if i >= 3:
                out.append((first - start_) * 1000)
    finally:
        await core.close()
    return out


def chat_command(settings: Settings, turns: int, cwd: Path) -> list[float]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("QVL_")} | settings.as_env()
    out = []
    for i in range(turns):
        start_ = time.perf_counter()
        subprocess.run([sys.executable, "-m", "cli", "chat", "--text", f"command question {i}"], env=env,
                       cwd=cwd, check=True, capture_output=True)
        out.append((time.perf_counter() - start_) * 1000)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--turns", type=int, default=50)
    parser.add_argument("--command-turns", type=int, default=20, help="turns through the `qvl chat` command")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="qvl-web-bench-"))
    settings = Settings().model_copy(update={
        "namespace": f"qvlbenchweb{uuid.uuid4().hex[:6]}", "engine": "echo", "rate_limit_turns": 0,
        "data_dir": work, "web_port": free_port(), "web_host": "127.0.0.1"})
    if not settings.database_url:
        settings = settings.model_copy(update={"database_url": f"sqlite:///{work}/qvl.sqlite3"})
    server = None
    if not settings.redis_url:
        server, url = start_embedded_redis(settings)
        settings = settings.model_copy(update={"redis_url": url})
    upgrade(settings.resolved_database_url())
    engine = make_engine(settings.resolved_database_url())
    with make_sessionmaker(engine)() as session:
        _, key = keys.create_key(session=session, name=f"bench-{uuid.uuid4().hex[:6]}")
        session.commit()
    engine.dispose()
    worker = start(["worker"], settings, work / "worker.log")
    web = start(["web"], settings, work / "web.log")
    url = f"http://127.0.0.1:{settings.web_port}"
    try:
        wait_for(lambda: "ready." in (work / "worker.log").read_text(errors="replace"), "worker")
        wait_for(lambda: "sign in" in (work / "web.log").read_text(errors="replace"), "qvl web")
        wait_for(lambda: socket.socket().connect_ex(("127.0.0.1", settings.web_port)) == 0, "web port")
        api = api_turns(url, key, args.turns)
        page = page_turns(url, key, args.turns)
        terminal = asyncio.run(terminal_turns(settings, args.turns))
        command = chat_command(settings, args.command_turns, work)
    finally:
        for process in (web, worker):
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(30)
        if server is not None:
            server.shutdown()
    print(f"send → first streamed text, echo engine, one turn at a time; database "
          f"{settings.resolved_database_url().split('@')[-1].split(':///')[0]}, Redis "
          f"{'embedded' if server else 'REDIS_URL'}, {os.cpu_count()} CPUs")
    print(f"  page (Chromium, click → text in the DOM)   {stats(page)}")
    print(f"  API (openai client, stream=True)           {stats(api)}")
    print(f"  qvl chat's path, in process                {stats(terminal)}")
    print(f"  qvl chat, the whole command                {stats(command)}")


if __name__ == "__main__":
    main()
