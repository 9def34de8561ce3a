"""bots.health: the frontends' connection mark and `python -m bots.health`, the containers'
healthcheck; and the Discord and WeChat frontends keeping the mark (against the fakes)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bots.health import MAX_AGE_S, Health, health_file, main, problem

ROOT = Path(__file__).resolve().parents[2]


async def until(predicate, timeout: float = 10.0, what: str = "the condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {what} after {timeout}s")
        await asyncio.sleep(0.01)


def test_marked_up_is_healthy_until_it_is_stale_or_marked_down(tmp_path, capsys):
    health = Health("discord", tmp_path)
    assert health.path == tmp_path / "health" / "discord" == health_file("discord", tmp_path)
    assert "not connected" in problem("discord", tmp_path)
    health.up()
    assert problem("discord", tmp_path) is None
    assert problem("discord", tmp_path, now=time.time() + MAX_AGE_S - 1) is None
    stale = problem("discord", tmp_path, now=time.time() + MAX_AGE_S + 5)
    assert "last connected 12" in stale and "more than 120s" in stale
    assert "last connected" in problem("discord", tmp_path, max_age_s=10, now=time.time() + 11)
    assert problem("wechat", tmp_path) is not None  # one mark per platform
    assert main(["discord", "--data-dir", str(tmp_path)]) == 0
    assert capsys.readouterr().out == "discord: connected\n"
    health.down()
    health.down()  # twice: nothing to remove
    assert main(["discord", "--data-dir", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert out.startswith("discord: not connected") and out.count("\n") == 1


def test_a_broken_mark_or_name_is_unhealthy_and_an_unwritable_one_does_not_raise(tmp_path, capsys):
    path = health_file("wechat", tmp_path)
    path.parent.mkdir(parents=True)
    path.write_text("not a time")
    assert "holds no time" in problem("wechat", tmp_path)
    assert main(["../etc", "--data-dir", str(tmp_path)]) == 1
    assert capsys.readouterr().out == "not a platform name: '../etc'\n"
    with pytest.raises(ValueError):
        health_file("Discord/x", tmp_path)
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    Health("discord", blocked).up()  # logged, not raised: the bot goes on; its healthcheck fails
    assert "cannot read" in problem("discord", blocked)


async def test_keep_fresh_renews_the_mark_only_while_connected(tmp_path):
    health = Health("discord", tmp_path, refresh_s=0.01)
    connected = False
    task = asyncio.create_task(health.keep_fresh(lambda: connected))
    try:
        await asyncio.sleep(0.05)
        assert not health.path.exists()
        connected = True
        await until(health.path.exists, what="mark")
        health.path.write_text(f"{time.time() - 1000}\n")
        await until(lambda: problem("discord", tmp_path) is None, what="renewed mark")
    finally:
        task.cancel()


def test_the_module_is_the_healthcheck_command_and_reads_qvl_data_dir(tmp_path):
    env = {**os.environ, "QVL_DATA_DIR": str(tmp_path)}

    def healthcheck(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "bots.health", *args], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=60)

    down = healthcheck("discord")
    assert down.returncode == 1 and down.stdout.startswith("discord: not connected")
    Health("discord", tmp_path).up()
    up = healthcheck("discord")
    assert (up.returncode, up.stdout) == (0, "discord: connected\n")
    health_file("discord", tmp_path).write_text(f"{time.time() - 200}\n")
    assert healthcheck("discord").returncode == 1
    assert healthcheck("discord", "--max-age", "300").returncode == 0


# --- the frontends keep it -------------------------------------------------------------


class QuietCore:
    """What a frontend needs of its core while nobody asks anything."""

    async def serve_replies(self, platform, deliver) -> None:
        await asyncio.Event().wait()

    async def sent(self, reply, platform_message_id) -> None:
        pass


async def test_the_discord_frontend_marks_ready_resumed_and_disconnected(fake_discord, tmp_path):
    from bots.discord.bot import DiscordFrontend
    from qvl.settings import Settings
    from tests.fakes.discord_server import running

    class Frontend(DiscordFrontend):
        async def before_identify_hook(self, shard_id, *, initial=False):
            return None

        async def on_disconnect(self):
            await super().on_disconnect()
            marked_at_disconnect.append(self.health.path.exists())

    marked_at_disconnect: list[bool] = []
    bot = Frontend(Settings(data_dir=tmp_path), QuietCore(), guild_ready_timeout=0.1)
    bot.health.refresh_s = 0.05
    healthy = lambda: problem("discord", tmp_path) is None  # noqa: E731
    async with running(bot):
        await until(healthy, what="mark after READY")
        health_file("discord", tmp_path).write_text(f"{time.time() - 1000}\n")
        await until(healthy, what="mark renewed while connected")
        resumed = asyncio.create_task(bot.wait_for("resumed", timeout=10))
        await fake_discord.drop_gateway()
        await resumed
        assert marked_at_disconnect == [False]  # removed when the gateway dropped
        await until(healthy, what="mark after RESUMED")
    assert not bot.health.path.exists()  # closed: marked down
    assert fake_discord.resume_count == 1


@pytest.mark.wechat  # runs in .venv-wechat with the WeChat tests (scripts/test.sh)
async def test_the_wechat_frontend_marks_login_dings_logout_and_a_lost_service(tmp_path):
    pytest.importorskip("wechaty_puppet", reason="needs the `wechat` extra (.venv-wechat)")
    from bots.wechat import bot as wechat_bot
    from bots.wechat.compat import fresh_options, reset_caches
    from qvl.settings import Settings
    from tests.fakes.wechat_puppet import FakeWechat

    fake = await FakeWechat().start()
    reset_caches()
    bot = wechat_bot.WechatFrontend(Settings(data_dir=tmp_path), QuietCore(),
                                    fresh_options(fake.endpoint, fake.token))
    healthy = lambda: problem("wechat", tmp_path) is None  # noqa: E731
    connected = asyncio.create_task(wechat_bot._connected(bot, login_timeout_s=10, check_every_s=0.05))
    try:
        await until(healthy, what="mark after login")
        health_file("wechat", tmp_path).write_text(f"{time.time() - 1000}\n")
        await until(healthy, what="mark renewed by a ding")
        await fake.logout()
        await until(lambda: not bot.health.path.exists(), what="mark removed at logout")
        await asyncio.sleep(0.2)  # the dings go on answering: still logged out, still not healthy
        assert not healthy()
        await fake.login()
        await until(healthy, what="mark after a new login")
        await fake.stop()
        assert await asyncio.wait_for(connected, 20) is True  # the service went: _connected returned
        assert not bot.health.path.exists()
    finally:
        connected.cancel()
        await asyncio.gather(connected, return_exceptions=True)
        await fake.stop()
