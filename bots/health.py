"""Whether a chat frontend is connected to its platform: the container's healthcheck.

A frontend marks itself up when it connects (Discord's READY or RESUMED, WeChat's login),
again every few seconds while it stays connected, and down when the connection drops:
the mark is a file, ``<data_dir>/health/<platform>``, holding the time it was written.
A process that hangs, or a connection that died without a word, stops refreshing it.

    python -m bots.health discord     # exit 0: marked up less than 120 s ago
    python -m bots.health wechat --max-age 60

exits 1 otherwise, with one line saying why. ``data_dir`` is the settings' (``QVL_DATA_DIR``).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

MAX_AGE_S = 120.0  # older than this, the frontend is not connected (or not alive)
REFRESH_S = 30.0  # how often a connected frontend renews its mark
_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}\Z")


def health_file(platform: str, data_dir: Path) -> Path:
    if not _NAME.match(platform):
        raise ValueError(f"not a platform name: {platform!r}")
    return Path(data_dir) / "health" / platform


class Health:
    """The mark of one frontend's connection. Writing it never raises: a frontend that
    cannot write it goes on serving, and its healthcheck says so."""

    def __init__(self, platform: str, data_dir: Path, *, refresh_s: float = REFRESH_S):
        self.platform, self.path, self.refresh_s = platform, health_file(platform, data_dir), refresh_s
        self._failing = False

    def up(self) -> None:
        """Connected now: (re)write the mark with the current time."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            partial = self.path.with_name(f".{self.path.name}.{os.getpid()}")
            partial.write_text(f"{time.time():.3f}\n")
            os.replace(partial, self.path)  # never half-written for the checker
        except OSError as exc:
            if not self._failing:
                log.warning("%s health: cannot write %s: %s", self.platform, self.path, exc)
            self._failing = True
        else:
            self._failing = False

    def down(self) -> None:
        """Disconnected: remove the mark."""
        try:
            self.path.unlink(missing_ok=True)
        except OSError as exc:
            log.warning("%s health: cannot remove %s: %s", self.platform, self.path, exc)

    async def keep_fresh(self, connected: Callable[[], bool]) -> None:
        """Renew the mark every ``refresh_s`` while ``connected()`` says so (run it as a task)."""
        while True:
            await asyncio.sleep(self.refresh_s)
            if connected():
                self.up()


def problem(platform: str, data_dir: Path, *, max_age_s: float = MAX_AGE_S, now: float | None = None) -> str | None:
    """Why ``platform``'s frontend is not healthy, or None if it is."""
    path = health_file(platform, data_dir)
    try:
        text = path.read_text()
    except FileNotFoundError:
        return f"{platform}: not connected (no {path})"
    except OSError as exc:
        return f"{platform}: cannot read {path}: {exc}"
    try:
        marked = float(text.strip())
    except ValueError:
        return f"{platform}: {path} holds no time"
    age = (time.time() if now is None else now) - marked
    if age > max_age_s:
        return f"{platform}: last connected {age:.0f}s ago (more than {max_age_s:g}s)"
    return None


def _data_dir() -> Path:
    """The frontend's data directory: the settings' (environment and .env, as the frontend reads them)."""
    try:
        from qvl.settings import Settings

        return Settings().data_dir
    except Exception:  # settings that do not validate: the environment alone
        return Path(os.environ.get("QVL_DATA_DIR") or Path.home() / ".local/share/qvl")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bots.health",
                                     description="Exit 0 if the frontend of PLATFORM is connected.")
    parser.add_argument("platform", help="discord, wecom or wechat")
    parser.add_argument("--max-age", type=float, default=MAX_AGE_S, metavar="SECONDS",
                        help=f"the oldest mark that counts (default {MAX_AGE_S:g})")
    parser.add_argument("--data-dir", type=Path, default=None, help="default: the settings' data_dir")
    args = parser.parse_args(argv)
    if not _NAME.match(args.platform):
        print(f"not a platform name: {args.platform!r}")
        return 1
    found = problem(args.platform, args.data_dir or _data_dir(), max_age_s=args.max_age)
    print(found or f"{args.platform}: connected")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
