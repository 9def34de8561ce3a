"""The fake Discord, under its old name: it now lives in the package ``tests.fakes.discord``.

Kept so that ``from tests.fakes.discord_server import FakeDiscord, running`` (tests,
conftest, benchmarks) keeps working.
"""

from tests.fakes.discord import *  # noqa: F403
from tests.fakes.discord import __all__  # noqa: F401
