"""`qvl draw` as an operator runs it: a real process, a real picture file."""

import json
import subprocess
import sys

from PIL import Image

SEED = '<ref>"击掌"</ref><box>(211,412),(577,891)</box>'


def qvl(*args, stdin=None):
    return subprocess.run([sys.executable, "-m", "cli", *args], input=stdin,
                          capture_output=True, text=True, timeout=60)


def test_draw_json_and_annotated_picture(tmp_path):
    src, out = tmp_path / "beach.jpg", tmp_path / "out.png"
    Image.new("RGB", (2048, 1365), (200, 200, 200)).save(src)
    run = qvl("draw", str(src), "--family", "qwen-vl", "--text", SEED, "-o", str(out), "--json")
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout) == {"text": '"击掌"', "boxes": [{"label": "击掌", "box": [432, 562, 1181, 1216]}]}
    drawn = Image.open(out).convert("RGB")
    assert drawn.size == (2048, 1365)
    assert drawn.getpixel((432, 900)) != (200, 200, 200)  # left edge of the box
    assert drawn.getpixel((800, 900)) == (200, 200, 200)  # inside the box


def test_draw_reads_stdin_and_reports_skipped(tmp_path):
    src = tmp_path / "p.png"
    Image.new("RGB", (100, 100)).save(src)
    run = qvl("draw", str(src), "--family", "qwen2.5-vl", "--text", "-", "--json",
              "--input-size", "50x50", stdin='[{"bbox_2d": [10, 10, 20, 20], "label": "a"}, {"bbox_2d": [1]}]')
    body = json.loads(run.stdout)
    assert body["boxes"] == [{"label": "a", "box": [20, 20, 40, 40]}]
    assert len(body["skipped"]) == 1


def test_draw_bad_picture_is_a_short_message_not_a_traceback(tmp_path):
    src = tmp_path / "not.jpg"
    src.write_bytes(b"hello")
    run = qvl("draw", str(src), "--family", "qwen-vl", "--text", SEED)
    assert run.returncode == 1
    assert "not a picture" in run.stderr and "Traceback" not in run.stderr
