"""Chat commands every frontend shares, in English and Chinese."""

from __future__ import annotations

COMMANDS = {
    "/reset": "reset", "/new": "reset", "重置": "reset", "/重置": "reset",
    "/help": "help", "帮助": "help", "/帮助": "help",
    "/scope": "scope", "范围": "scope", "/范围": "scope",
}


def command_of(text: str) -> str | None:
    """The command a message is ("reset", "help", "scope"), or None for an ordinary message."""
    word = text.strip().split(maxsplit=1)[0].lower() if text.strip() else ""
    word = word.split("@", 1)[0]  # "/reset@botname" as Telegram-style clients write it
    return COMMANDS.get(word)


def argument_of(text: str) -> str:
    """What follows the command word ("/scope shared" → "shared")."""
    words = text.strip().split(maxsplit=1)
    return words[1].strip() if len(words) > 1 else ""
