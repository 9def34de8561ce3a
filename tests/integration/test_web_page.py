"""The page in a real headless Chromium (Debian's ``chromium``, driven by Playwright),
against a real ``qvl web`` and ``qvl worker`` (echo engine), on SQLite.

Set ``QVL_SCREENSHOT=docs/web.png`` to save the screenshot the README shows.
"""

from __future__ import annotations

import base64
import os
import shutil
from pathlib import Path

import pytest
import requests

from tests.fixtures.web import make_key, scene_jpeg

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = [pytest.mark.timeout(180), pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)]


@pytest.fixture
def browser():
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI"):
            pytest.fail("chromium is required in CI (apt-get install chromium)")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield browser
        finally:
            browser.close()


def near(a: float, b: float, tolerance: float = 2.0) -> bool:
    return abs(a - b) <= tolerance


def test_drop_a_picture_ask_for_a_box_see_it_drawn_and_find_it_after_a_reload(
        settings_for, worker_factory, web_factory, browser, tmp_path):
    settings = settings_for()
    worker_factory(settings)
    server = web_factory(settings)
    key = make_key(settings, "alice")
    picture = tmp_path / "demo.jpeg"
    picture.write_bytes(scene_jpeg((640, 480)))

    page = browser.new_page(viewport={"width": 1100, "height": 800}, locale="en-US")
    page.goto(server.url)
    page.fill("#login-key", key)
    page.click("#login-form button[type=submit]")
    page.wait_for_selector("#app:not([hidden])")
    page.set_input_files("#file", str(picture))
    page.wait_for_selector("#attachments img")
    page.fill("#text", "box the dog")
    page.press("#text", "Enter")

    try:
        box = page.wait_for_selector(".msg.assistant .stage .box:not([hidden])", timeout=30_000)
    except Exception:
        import re
        print(re.sub(r"data:[^\"]{40,}", "DATA", page.inner_html("#messages")))
        raise
    answer = page.inner_text(".msg.assistant .text")
    assert answer.startswith("You said: “box the dog”. I see 1 picture(s) in 1 turn(s).") and answer.endswith("dog")
    assert page.inner_text(".msg.assistant .box span") == "dog"
    # The echo engine boxes the middle half of the picture: the overlay covers exactly that.
    image = page.query_selector(".msg.assistant .stage img").bounding_box()
    drawn = box.bounding_box()
    assert near(drawn["x"], image["x"] + image["width"] / 4) and near(drawn["y"], image["y"] + image["height"] / 4)
    assert near(drawn["width"], image["width"] / 2) and near(drawn["height"], image["height"] / 2)
    colour = page.eval_on_selector(".msg.assistant .box", "b => getComputedStyle(b).borderTopColor")
    assert colour == "rgb(31, 119, 180)"  # the first colour of the annotated picture's palette
    box.hover()
    assert "hot" in page.get_attribute(".msg.assistant .box", "class")
    assert "hot" in page.get_attribute(".msg.assistant .legend li", "class")
    link = page.get_attribute(".msg.assistant figcaption a", "href")
    download = requests.get(server.url + link, timeout=10)
    assert download.status_code == 200 and "attachment" in download.headers["content-disposition"]

    shot = tmp_path / "web.png"
    page.mouse.move(0, 0)
    page.screenshot(path=str(shot))
    if os.environ.get("QVL_SCREENSHOT"):
        shutil.copy(shot, os.environ["QVL_SCREENSHOT"])

    page.reload()
    page.wait_for_selector("#conversations a.current")
    assert page.inner_text("#conversations a.current") == "box the dog"
    page.wait_for_selector(".msg.assistant .stage .box:not([hidden])")
    assert page.inner_text(".msg.user .text") == "box the dog"
    assert page.query_selector(".msg.user img.picture") is not None

    # A second conversation, then back to the first from the sidebar; /reset as a button.
    page.click("#new-chat")
    page.fill("#text", "hello")
    page.press("#text", "Enter")
    page.wait_for_function("document.querySelectorAll('#conversations a').length === 2")
    page.wait_for_selector(".msg.assistant .text:has-text('in 1 turn(s)')")
    page.click("#conversations a:has-text('box the dog')")
    page.wait_for_selector(".msg.assistant .stage .box:not([hidden])")
    page.click("#reset")
    page.wait_for_selector(".msg.assistant .text:has-text('forgotten')")
    page.fill("#text", "what did I show you?")
    page.press("#text", "Enter")
    page.wait_for_selector(".msg.assistant .text:has-text('I see 0 picture(s) in 1 turn(s)')")


def test_on_a_phone_in_chinese(settings_for, worker_factory, web_factory, browser):
    settings = settings_for()
    worker_factory(settings)
    server = web_factory(settings)
    key = make_key(settings, "alice")
    context = browser.new_context(viewport={"width": 390, "height": 844}, locale="zh-CN", is_mobile=True,
                                  has_touch=True, device_scale_factor=2)
    page = context.new_page()
    page.goto(server.url)
    assert page.inner_text("#login-form button") == "登录"
    page.fill("#login-key", key)
    page.click("#login-form button")
    page.wait_for_selector("#app:not([hidden])")
    assert page.inner_text("#send") == "发送" and page.inner_text("#reset") == "重置"
    assert page.is_visible("#menu") and not page.is_visible("#new-chat")  # the sidebar folds away
    assert page.evaluate("document.scrollingElement.scrollWidth") <= 390  # nothing wider than the phone
    send = page.query_selector("#send").bounding_box()
    assert send["x"] + send["width"] <= 390 and send["y"] + send["height"] <= 844
    page.fill("#text", "你好")
    page.click("#send")
    page.wait_for_selector(".msg.assistant .text:has-text('你好')")
    page.click("#menu")
    page.wait_for_selector("#new-chat", state="visible")
    context.close()


def test_the_login_link_signs_in_once_and_a_question_waits_in_the_queue_for_a_worker(
        settings_for, worker_factory, web_factory, browser):
    settings = settings_for()
    server = web_factory(settings)
    link = server.login_link()
    page = browser.new_page(locale="en-US")
    page.goto(link)
    page.wait_for_selector("#app:not([hidden])")
    assert page.url.rstrip("/") == server.url  # the session left the address bar
    assert requests.get(link, timeout=10, allow_redirects=False).status_code == 401  # once only

    # A picture dropped on the page and one pasted: both wait beside the question.
    picture = base64.b64encode(scene_jpeg((64, 48))).decode()
    page.evaluate("""(b64) => {
      const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
      const file = () => new File([bytes], "demo.jpeg", { type: "image/jpeg" });
      const dropped = new DataTransfer(); dropped.items.add(file());
      document.querySelector(".main").dispatchEvent(new DragEvent("drop", { dataTransfer: dropped, bubbles: true, cancelable: true }));
      const pasted = new DataTransfer(); pasted.items.add(file());
      document.dispatchEvent(new ClipboardEvent("paste", { clipboardData: pasted, bubbles: true, cancelable: true }));
    }""", picture)
    page.wait_for_function("document.querySelectorAll('#attachments img').length === 2")
    page.fill("#text", "is anyone there?")
    page.press("#text", "Enter")  # no worker yet: the page says so, then where the turn stands
    page.wait_for_selector(".msg.assistant .status:has-text('Queued: position 1')")
    worker_factory(settings)
    page.wait_for_selector(".msg.assistant .text:has-text('You said: “is anyone there?”. I see 2 picture(s)')",
                           timeout=30_000)
    assert page.inner_text(".msg.assistant .status") == ""
