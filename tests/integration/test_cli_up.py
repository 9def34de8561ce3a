"""`qvl up` and `qvl chat` as a person runs them: real processes, embedded Redis, SQLite."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image


def env_for(data_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("QVL_") and k not in ("DATABASE_URL", "REDIS_URL")}
    env.update({"QVL_DATA_DIR": str(data_dir), "PYTHONUNBUFFERED": "1",
                "HF_ENDPOINT": "http://127.0.0.1:9"})  # a closed port: no hub, as on these machines
    env.update(extra)
    return env


def qvl(*args: str, env: dict, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cli", *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def service(tmp_path: Path):
    """Start `qvl up` with the given environment; stop it after the test."""
    procs = []

    def start(env: dict) -> subprocess.Popen:
        log = (tmp_path / "up.log").open("wb")
        proc = subprocess.Popen([sys.executable, "-m", "cli", "up"], env=env, cwd=tmp_path,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        procs.append(proc)
        deadline = time.monotonic() + 90
        while "ready." not in (tmp_path / "up.log").read_text(errors="replace"):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError((tmp_path / "up.log").read_text(errors="replace")[-3000:])
            time.sleep(0.2)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)


def picture(path: Path) -> Path:
    Image.new("RGB", (300, 200), (30, 120, 200)).save(path)
    return path


def test_up_without_weights_stops_at_once_saying_how_to_get_them(tmp_path):
    started = time.monotonic()
    run = qvl("up", env=env_for(tmp_path / "data"), cwd=tmp_path, timeout=90)
    assert run.returncode == 1
    message = run.stderr + run.stdout
    assert "Qwen/Qwen3-VL-2B-Instruct" in message
    assert "QVL_MODEL=" in message and "download" in message
    assert "Traceback" not in message
    assert time.monotonic() - started < 60


def test_tiny_model_up_then_chat_across_invocations(tmp_path, service):
    made = qvl("model", "make-tiny", str(tmp_path / "tiny"), env=env_for(tmp_path / "data"), cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    env = env_for(tmp_path / "data", QVL_MODEL=str(tmp_path / "tiny"), QVL_MAX_NEW_TOKENS="8")
    service(env)
    pic = picture(tmp_path / "blue.png")
    first = qvl("chat", str(pic), "--text", "What is in this picture?", env=env, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip()  # the tiny model's (random) words, through the whole path
    second = qvl("chat", "--text", "And the colour?", env=env, cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    reset = qvl("chat", "--reset", env=env, cwd=tmp_path)
    assert reset.returncode == 0 and "forgotten" in reset.stdout


def test_chat_writes_the_annotated_picture(tmp_path, service):
    env = env_for(tmp_path / "data", QVL_ENGINE="echo")
    service(env)
    pic = picture(tmp_path / "blue.png")
    out = tmp_path / "out"
    run = qvl("chat", str(pic), "--text", "box the thing", "-o", str(out), env=env, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert "thing" in run.stdout and "<|box_start|>" not in run.stdout
    [drawn] = list(out.glob("boxes-*.jpg"))
    assert f"[annotated picture: {drawn}]" in run.stdout
    image = Image.open(io.BytesIO(drawn.read_bytes()))
    assert image.size == (300, 200)
    follow = qvl("chat", "--text", "what did I send?", env=env, cwd=tmp_path)
    assert "1 picture(s) in 3 turn(s)" in follow.stdout  # the conversation carried over


def test_up_says_what_runs_and_keeps_redis_under_the_data_dir(tmp_path, service):
    data = tmp_path / "data"
    proc = service(env_for(data, QVL_ENGINE="echo"))
    log = (tmp_path / "up.log").read_text(errors="replace")
    socket = (data / "redis" / "redis.sock").resolve()
    assert "qvl is up: engine echo (no model)" in log
    assert f"  database  sqlite:///{data.resolve() / 'qvl.sqlite3'}" in log
    assert f"  Redis     embedded, unix://{socket} (append-only, files in {socket.parent})" in log
    assert "  worker    starting here (queue qvl.turns)" in log
    assert socket.is_socket() and (data / "redis.url").read_text() == f"unix://{socket}"
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(30)
    # Stopped: the socket and the URL for other commands are gone, the queue's file stays.
    assert not socket.exists() and not (data / "redis.url").exists()
    assert (data / "redis" / "appendonly.aof").is_file()


def test_chat_without_a_running_service_says_so(tmp_path):
    run = qvl("chat", "--text", "hello", env=env_for(tmp_path / "data"), cwd=tmp_path)
    assert run.returncode == 1 and "qvl up" in run.stderr and "Traceback" not in run.stderr


def test_db_upgrade_migrates_the_configured_database(tmp_path):
    env = env_for(tmp_path / "data", DATABASE_URL=f"sqlite:///{tmp_path}/x.sqlite3")
    run = qvl("db", "upgrade", env=env, cwd=tmp_path)
    from storage.db import head_revision

    assert run.returncode == 0 and f"revision {head_revision()}" in run.stdout
    assert (tmp_path / "x.sqlite3").is_file()


def test_up_refuses_qwen_vl_code_off_the_allowlist_before_fetching(tmp_path):
    run = qvl("up", env=env_for(tmp_path / "data", QVL_MODEL="someone/Qwen-VL-Chat-finetune"), cwd=tmp_path)
    message = run.stderr + run.stdout
    assert run.returncode == 1, message
    assert "trust_remote_code" in message and "someone/Qwen-VL-Chat-finetune@REVISION" in message
    assert "Traceback" not in message and not (tmp_path / "data" / "models").exists()


def test_up_checks_a_local_qwen_vl_then_the_transformers_version(tmp_path):
    import json

    import transformers

    from worker.engines.remote_code import code_digest

    model = tmp_path / "qwen-vl"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "qwen", "visual": {"image_size": 448}}))
    (model / "modeling_qwen.py").write_text("raise SystemExit('this code must not run')\n")
    untrusted = qvl("up", env=env_for(tmp_path / "data", QVL_MODEL=str(model)), cwd=tmp_path)
    assert untrusted.returncode == 1
    assert f"sha256:{code_digest(model)}" in untrusted.stderr + untrusted.stdout

    if not transformers.__version__.startswith("5."):
        pytest.skip("this environment runs Qwen-VL-Chat's code (the qwen-vl extra)")
    trusted = env_for(tmp_path / "data", QVL_MODEL=str(model), QVL_QWEN_VL_TRUSTED=f"sha256:{code_digest(model)}")
    run = qvl("up", env=trusted, cwd=tmp_path)
    message = run.stderr + run.stdout
    assert run.returncode == 1 and "Traceback" not in message
    # The default install has transformers 5, which Qwen-VL-Chat's code cannot run on: start-up says so.
    assert f"does not run on transformers {transformers.__version__}" in message
    assert "4.53.3" in message and "ready." not in message
