"""Find a font that can draw CJK labels (击掌, 狗) as glyphs rather than tofu boxes.

Debian/Ubuntu: ``apt-get install fonts-wqy-zenhei`` (or ``fonts-noto-cjk``);
Fedora: ``google-noto-sans-cjk-fonts``; macOS ships PingFang. ``QVL_FONT`` names a
font file explicitly.
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import subprocess

from PIL import ImageFont

log = logging.getLogger(__name__)

CANDIDATES = (
    "/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc",
    "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc",
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/noto-cjk/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/google-noto-cjk/NotoSansCJK-Regular.ttc",
    "/System/Library/Fonts/PingFang.ttc",
    "/System/Library/Fonts/STHeiti Medium.ttc",
    "C:/Windows/Fonts/msyh.ttc",
    "C:/Windows/Fonts/simsun.ttc",
)


@functools.cache
def cjk_font_path() -> str | None:
    """The path of a CJK-capable font file, or None when the machine has none."""
    explicit = os.environ.get("QVL_FONT")
    if explicit and os.path.isfile(explicit):
        return explicit
    for path in CANDIDATES:
        if os.path.isfile(path):
            return path
    if shutil.which("fc-match"):
        try:
            found = subprocess.run(
                ["fc-match", "-f", "%{file}", ":lang=zh"],
                capture_output=True, text=True, timeout=5, check=False,
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            found = ""
        if found and os.path.isfile(found) and _has_cjk(found):
            return found
    log.warning(
        "no CJK font found: Chinese labels will show as boxes; "
        "install fonts-wqy-zenhei (Debian/Ubuntu) or set QVL_FONT"
    )
    return None


@functools.lru_cache(maxsize=32)
def label_font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """A font of ``size`` pixels for labels: the CJK font if any, else Pillow's default."""
    path = cjk_font_path()
    if path:
        return ImageFont.truetype(path, size)
    return ImageFont.load_default(size)


def _has_cjk(path: str) -> bool:
    try:
        font = ImageFont.truetype(path, 16)
    except OSError:
        return False
    return font.getmask("掌").getbbox() != font.getmask("\uffff").getbbox()
