"""Shared fixtures; the heavy ones live in tests/fixtures/."""

from tests.fakes.discord_server import fake_discord  # noqa: F401
from tests.fixtures.db import *  # noqa: F403
from tests.fixtures.models import *  # noqa: F403
from tests.fixtures.services import *  # noqa: F403
