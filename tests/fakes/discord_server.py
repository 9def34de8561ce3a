"""The fake Discord, under its old name: it now lives in the package ``tests.fakes.discord``.

Kept so that ``from tests.fakes.discord_server import FakeDiscord, running`` (tests,
conftest, benchmarks) keeps working.
"""

from tests.fakes.discord import (
    Call,
    Edit,
    FakeDiscord,
    Intent,
    InteractionResponse,
    Permission,
    Reaction,
    SentMessage,
    Typing,
    World,
    fake_discord,
    running,
)

__all__ = [
    "Call",
    "Edit",
    "FakeDiscord",
    "Intent",
    "InteractionResponse",
    "Permission",
    "Reaction",
    "SentMessage",
    "Typing",
    "World",
    "fake_discord",
    "running",
]
