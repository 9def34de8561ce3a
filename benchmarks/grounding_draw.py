"""Parse + draw time for a 12-megapixel JPEG with 10 boxes, against Pillow's bare
decode + encode of the same picture, measured in the same run.

    python benchmarks/grounding_draw.py [--repeat 7]
"""

from __future__ import annotations

import argparse
import io
import statistics
import time

from PIL import Image, ImageDraw

from worker.grounding import ground
from worker.grounding.draw import draw_boxes


def make_jpeg(width: int = 4000, height: int = 3000) -> bytes:
    """A photo-like 12 MP JPEG: gradients and shapes, so the encoder has real work."""
    image = Image.linear_gradient("L").resize((width, height)).convert("RGB")
    draw = ImageDraw.Draw(image)
    for i in range(60):
        x, y = (i * 397) % width, (i * 211) % height
        draw.ellipse((x, y, x + 300, y + 200), fill=((i * 40) % 256, (i * 90) % 256, (i * 150) % 256))
    noise = Image.effect_noise((width, height), 48).convert("RGB")  # sensor-like grain
    image = Image.blend(image, noise, 0.25)
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=90)
    return buf.getvalue()


ANSWER = "".join(f"<ref>物体{i} object {i}</ref><box>({i * 90},{i * 80}),({i * 90 + 150},{i * 80 + 200})</box>"
                 for i in range(10))


def bare(data: bytes) -> bytes:
    image = Image.open(io.BytesIO(data)).convert("RGB")
    out = io.BytesIO()
    image.save(out, "JPEG", quality=90)
    return out.getvalue()


def annotated(data: bytes) -> bytes:
    image = Image.open(io.BytesIO(data)).convert("RGB")
    result = ground(ANSWER, "qwen-vl", size=image.size)
    assert len(result.boxes) == 10
    out = io.BytesIO()
    draw_boxes(image, result.boxes).save(out, "JPEG", quality=90)
    return out.getvalue()


def timed(fn, data: bytes, repeat: int) -> list[float]:
    fn(data)  # warm-up: font loading, codec set-up
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn(data)
        times.append((time.perf_counter() - start) * 1000)
    return times


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    data = make_jpeg()
    base = timed(bare, data, args.repeat)
    ours = timed(annotated, data, args.repeat)
    parse_only = timed(lambda _: ground(ANSWER, "qwen-vl", size=(4000, 3000)), data, args.repeat * 20)
    b, o, p = statistics.median(base), statistics.median(ours), statistics.median(parse_only)
    print(f"12 MP JPEG ({len(data) / 1e6:.1f} MB), 10 boxes, median of {args.repeat}:")
    print(f"  baseline  decode + encode                 {b:8.1f} ms")
    print(f"  qvl       decode + parse + draw + encode  {o:8.1f} ms")
    print(f"  of which  parse alone                     {p:8.3f} ms")
    print(f"  parse + draw overhead {o - b:.1f} ms ({o / b:.2f}x the bare decode + encode)")


if __name__ == "__main__":
    main()
