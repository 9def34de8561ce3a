"""The OpenAI-compatible API through the official ``openai`` client, against a real
``qvl web`` process and a real ``qvl worker`` (echo engine, and the tiny model).

Runs on SQLite and PostgreSQL (``db_url``) with a real Redis.
"""

from __future__ import annotations

import base64
import io
import os
import re
import subprocess
import sys
import time

import openai
import pytest
import requests
from PIL import Image

from tests.fixtures.web import child_env, free_port, make_key, scene_jpeg

pytestmark = pytest.mark.timeout(180)


def data_url(data: bytes, mime: str = "image/jpeg") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def client(server, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0, timeout=60)


def ask(text: str, *pictures: bytes) -> dict:
    return {"role": "user", "content": [*({"type": "image_url", "image_url": {"url": data_url(p)}}
                                          for p in pictures), {"type": "text", "text": text}]}


def test_openai_client_plain_streamed_pictures_multi_turn_and_boxes(settings_for, worker_factory, web_factory):
    settings = settings_for()
    worker_factory(settings)
    server = web_factory(settings)
    key = make_key(settings, "alice")
    api = client(server, key)

    assert [m.id for m in api.models.list()] == ["echo"]

    plain = api.chat.completions.create(model="echo", messages=[{"role": "user", "content": "hello"}],
                                        max_tokens=64)
    assert plain.choices[0].message.content == "You said: “hello”. I see 0 picture(s) in 1 turn(s)."
    assert plain.choices[0].finish_reason == "stop"

    stream = api.chat.completions.create(model="echo", stream=True,
                                         messages=[{"role": "user", "content": "hi there"}])
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "You said: “hi there”. I see 0 picture(s) in 1 turn(s)."  # a fresh conversation
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert chunks[-1].model_extra["qvl"]["text"] == text

    picture = scene_jpeg((640, 480))
    boxed = api.chat.completions.create(model="echo", messages=[ask("box the dog", picture)])
    answer = boxed.choices[0].message.content
    assert answer.endswith("dog") and "<|box_start|>" not in answer
    extension = boxed.model_extra["qvl"]
    [box] = extension["boxes"]
    # the echo engine boxes the middle half, in pixels of the original 640×480 picture
    assert box == {"label": "dog", "box": [160, 120, 480, 360], "picture": 1, "width": 640, "height": 480,
                   "image": box["image"]}
    [drawn] = extension["annotated"]
    assert drawn["picture"] == 1
    fetched = requests.get(drawn["url"], timeout=10)
    assert fetched.status_code == 200 and fetched.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(fetched.content)).size == (640, 480)

    # Multi-turn as OpenAI clients do it: the whole history each time.
    history = [ask("box the dog", picture), {"role": "assistant", "content": answer}]
    second = api.chat.completions.create(model="echo", messages=[*history, {"role": "user", "content": "and now?"}])
    assert second.choices[0].message.content == "You said: “and now?”. I see 1 picture(s) in 3 turn(s)."
    history += [{"role": "user", "content": "and now?"},
                {"role": "assistant", "content": second.choices[0].message.content}]
    streamed = api.chat.completions.create(model="echo", stream=True,
                                           messages=[*history, {"role": "user", "content": "box the cat"}])
    chunks = list(streamed)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices).startswith(
        "You said: “box the cat”. I see 1 picture(s) in 5 turn(s).")
    [box] = chunks[-1].model_extra["qvl"]["boxes"]
    assert box["label"] == "cat" and box["picture"] == 1  # the picture sent two turns before

    # A history the service never answered (another client's, edited): imported as it is.
    edited = [ask("what is this?", picture), {"role": "assistant", "content": "A bear."},
              {"role": "user", "content": "really?"}]
    imported = api.chat.completions.create(model="echo", messages=edited)
    assert imported.choices[0].message.content == "You said: “really?”. I see 1 picture(s) in 3 turn(s)."

    # One key never sees another key's conversations, turns or pictures.
    other = make_key(settings, "bob")
    auth = {"Authorization": f"Bearer {other}"}
    assert requests.get(server.url + "/api/conversations", headers=auth, timeout=10).json() == []
    job = extension["job_id"]
    assert requests.get(f"{server.url}/api/jobs/{job}/events", headers=auth, timeout=10).status_code == 404
    forged = re.sub(r"key=(\d+)", lambda m: f"key={int(m[1]) + 1}", drawn["url"])  # the link, for another key
    assert requests.get(forged, timeout=10).status_code == 404
    alone = client(server, other).chat.completions.create(model="echo", messages=history[2:3])
    assert alone.choices[0].message.content.endswith("I see 0 picture(s) in 1 turn(s).")


def test_every_error_comes_openai_shaped_with_its_status(settings_for, worker_factory, web_factory, tmp_path):
    settings = settings_for(image_max_bytes=200_000, rate_limit_turns=0)
    worker = worker_factory(settings)
    server = web_factory(settings)
    key = make_key(settings, "alice")
    api = client(server, key)

    with pytest.raises(openai.AuthenticationError) as caught:
        client(server, "qvl-not-a-key").chat.completions.create(model="echo", messages=[ask("hi")])
    assert caught.value.status_code == 401 and caught.value.body["code"] == "invalid_api_key"
    assert requests.post(server.url + "/v1/chat/completions", json={}, timeout=10).status_code == 401

    with pytest.raises(openai.BadRequestError) as caught:  # not a picture
        api.chat.completions.create(model="echo", messages=[ask("what is this?", b"%PDF-1.4 not a picture")])
    assert caught.value.body["code"] == "picture_format" and "PNG, JPEG" in caught.value.body["message"]
    with pytest.raises(openai.BadRequestError):  # not base64
        api.chat.completions.create(model="echo", messages=[{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,@@@@"}}]}])
    with pytest.raises(openai.BadRequestError) as caught:  # a link inside: the safe fetcher refuses it
        api.chat.completions.create(model="echo", messages=[{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "http://127.0.0.1:9/cat.png"}}]}])
    assert "public addresses" in caught.value.body["message"]
    with pytest.raises(openai.BadRequestError):
        api.chat.completions.create(model="echo", messages=[{"role": "assistant", "content": "hi"}])
    with pytest.raises(openai.BadRequestError):
        api.chat.completions.create(model="echo", messages=[ask("hi")], max_tokens=0)

    big = scene_jpeg((1600, 1200)) + b"\0" * 200_000
    with pytest.raises(openai.APIStatusError) as caught:
        api.chat.completions.create(model="echo", messages=[ask("what is this?", big)])
    assert caught.value.status_code == 413 and caught.value.body["type"] == "invalid_request_error"

    # A key of its own rate limit: the second turn in the window gets 429 with Retry-After.
    limited = client(server, make_key(settings, "carol", rate_limit=1))
    limited.chat.completions.create(model="echo", messages=[ask("one")])
    with pytest.raises(openai.RateLimitError) as caught:
        limited.chat.completions.create(model="echo", messages=[ask("two")])
    assert caught.value.status_code == 429 and int(caught.value.response.headers["retry-after"]) >= 1

    # Revoked with `qvl keys revoke`: refused at once.
    revoke = subprocess.run([sys.executable, "-m", "cli", "keys", "revoke", "carol"], env=child_env(settings),
                            capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert revoke.returncode == 0 and "revoked key 'carol'" in revoke.stdout
    with pytest.raises(openai.AuthenticationError):
        limited.chat.completions.create(model="echo", messages=[ask("three")])

    worker.stop()  # a worker stopped cleanly says so at once: no worker, 503
    with pytest.raises(openai.InternalServerError) as caught:
        api.chat.completions.create(model="echo", messages=[ask("anyone?")])
    assert caught.value.status_code == 503 and caught.value.body["code"] == "no_worker"


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_the_tiny_model_answers_through_the_api(settings_for, worker_factory, web_factory, tiny_qwen2_vl):
    settings = settings_for(engine="transformers", model=str(tiny_qwen2_vl), max_new_tokens=12)
    worker_factory(settings)
    server = web_factory(settings)
    api = client(server, make_key(settings, "alice"))
    plain = api.chat.completions.create(model="tiny", messages=[ask("what is in this picture?", scene_jpeg())])
    assert plain.choices[0].message.content.strip()  # random weights, but real generated text
    # max_tokens reaches the model: the same question (greedy, a conversation of its own)
    # gets the first 3 tokens of the same answer.
    short = api.chat.completions.create(model="tiny", max_tokens=3,
                                        messages=[ask("what is in this picture?", scene_jpeg())])
    whole, cut = plain.choices[0].message.content, short.choices[0].message.content.rstrip("\ufffd").strip()
    assert cut and len(cut) < len(whole.strip()) and whole.startswith(cut)
    streamed = list(api.chat.completions.create(model="tiny", stream=True, messages=[ask("and again?")]))
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices).strip()
    assert streamed[-1].choices[0].finish_reason == "stop"


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_keys_cli_and_loopback_only_without_a_key(settings_for, tmp_path):
    settings = settings_for()

    def qvl(*args, **extra):
        return subprocess.run([sys.executable, "-m", "cli", *args], env=child_env(settings, **extra),
                              capture_output=True, text=True, cwd=tmp_path, timeout=60)

    exposed = qvl("web", QVL_WEB_HOST="0.0.0.0")
    assert exposed.returncode == 1 and "no API key exists" in exposed.stderr
    created = qvl("keys", "create", "alice", "--rate-limit", "5")
    assert created.returncode == 0, created.stderr
    secret = created.stdout.split()[-1]
    assert secret.startswith("qvl-")
    listed = qvl("keys", "list")
    assert "alice" in listed.stdout and "5/window" in listed.stdout and secret not in listed.stdout
    assert secret[:12] in listed.stdout
    assert qvl("keys", "create", "alice").returncode == 1  # names are unique


def test_qvl_up_serves_the_page_and_prints_a_one_time_login_link(tmp_path, up_factory):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("QVL_") and k not in ("DATABASE_URL", "REDIS_URL")}
    proc, log_file = up_factory(env | {"QVL_DATA_DIR": str(tmp_path / "data"), "QVL_ENGINE": "echo",
                                       "QVL_WEB_PORT": str(port), "PYTHONUNBUFFERED": "1"})
    log = log_file.read_text(errors="replace")
    assert "  Web       starting" in log
    link = re.search(r"Open the page \(this link signs you in once\): (http://127\.0\.0\.1:\d+/login\?token=\S+)", log)
    assert link and link[1].startswith(f"http://127.0.0.1:{port}/"), log[-2000:]
    deadline = time.monotonic() + 30
    while True:  # the web frontend starts in a thread of its own beside the worker
        try:
            signed_in = requests.get(link[1], allow_redirects=False, timeout=5)
            break
        except requests.ConnectionError:
            assert time.monotonic() < deadline and proc.poll() is None, log[-2000:]
            time.sleep(0.2)
    assert signed_in.status_code == 303 and signed_in.headers["location"].startswith("/#session=qs1.")
    session = signed_in.headers["location"].split("=", 1)[1]
    assert requests.get(link[1], allow_redirects=False, timeout=5).status_code == 401  # once
    me = requests.get(f"http://127.0.0.1:{port}/api/me", headers={"Authorization": f"Bearer {session}"}, timeout=5)
    assert me.json()["name"] == "operator"
    assert "<title>qvl</title>" in requests.get(f"http://127.0.0.1:{port}/", timeout=5).text
    api = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=session, max_retries=0, timeout=60)
    answer = api.chat.completions.create(model="echo", messages=[{"role": "user", "content": "hello"}])
    assert answer.choices[0].message.content.startswith("You said: “hello”.")
