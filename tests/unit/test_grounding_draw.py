"""The drawn picture, checked pixel by pixel; CJK labels drawn as glyphs, not tofu."""

import os

import pytest
from PIL import Image

from worker.grounding import Box, ground
from worker.grounding.draw import PALETTE, draw_boxes, line_width
from worker.grounding.fonts import cjk_font_path, label_font

GREY = (128, 128, 128)


def test_rectangles_are_where_the_boxes_are_and_nowhere_else():
    image = Image.new("RGB", (400, 300), GREY)
    g = ground("<box>(100,100),(500,600)</box><ref>b</ref><box>(600,500),(900,900)</box>",
               "qwen-vl", size=image.size)
    out = draw_boxes(image, g.boxes)
    (ax1, ay1, ax2, ay2), (bx1, by1, bx2, by2) = (b.box for b in g.boxes)
    assert (ax1, ay1, ax2, ay2) == (40, 30, 200, 180)
    w = line_width(image.size)
    # the unlabelled box: its four edges in the first colour, its middle untouched
    for x, y in [(ax1, 100), (ax2 - 1, 100), (100, ay1), (100, ay2 - 1), (ax1 + w - 1, 120)]:
        assert out.getpixel((x, y)) == PALETTE[0], (x, y)
    assert out.getpixel((120, 100)) == GREY
    assert out.getpixel((ax1 + w + 1, 120)) == GREY
    # the labelled box: second colour on its bottom-right edges; far corners untouched
    assert out.getpixel((bx2 - 1, by2 - 1)) == PALETTE[1]
    assert out.getpixel((5, 295)) == GREY and out.getpixel((395, 5)) == GREY
    assert image.getpixel((ax1, 100)) == GREY  # the original is not modified


def test_one_colour_per_label_and_label_drawn_above_the_box():
    image = Image.new("RGB", (600, 600), GREY)
    boxes = [Box("dog", (100, 200, 300, 400)), Box("cat", (350, 200, 550, 400)),
             Box("dog", (100, 450, 300, 580))]
    out = draw_boxes(image, boxes)
    assert out.getpixel((100, 300)) == PALETTE[0] == out.getpixel((100, 500))
    assert out.getpixel((350, 300)) == PALETTE[1]
    # a filled label strip sits just above the dog box, in the dog's colour, with white text
    strip = [out.getpixel((x, y)) for x in range(100, 160) for y in range(170, 199)]
    assert PALETTE[0] in strip and any(min(p) > 230 for p in strip)


def test_line_width_scales_with_the_picture():
    assert line_width((400, 300)) == 2
    assert line_width((4000, 3000)) == 12


@pytest.mark.skipif(cjk_font_path() is None and not os.environ.get("CI"),
                    reason="no CJK font installed (apt-get install fonts-wqy-zenhei)")
def test_cjk_labels_are_glyphs_not_tofu():
    assert cjk_font_path(), "CI installs fonts-wqy-zenhei; no CJK font was found"
    font = label_font(32)
    masks = {ch: font.getmask(ch) for ch in "击掌狗"}
    tofu = font.getmask("\uffff")  # a non-character: the font's .notdef box
    shapes = {bytes(m) for m in masks.values()}
    assert len(shapes) == 3  # three different glyphs…
    assert bytes(tofu) not in shapes  # …none of them the missing-glyph box
    assert all(m.getbbox() for m in masks.values())
