"""Shared fixtures; the heavy ones live in tests/fixtures/.

Nothing here imports wechaty, grpclib or bots.wechat: the WeChat tests (test_*wechat*.py)
import them themselves, after ``pytest.importorskip("wechaty")``, so the suite collects
without the `wechat` extra. They get the ``wechat`` marker below; scripts/test.sh runs
them apart, in .venv-wechat, because that extra pins urllib3<2 and pyee<12.
"""

import pytest

from tests.fakes.discord_server import fake_discord  # noqa: F401
from tests.fixtures.db import *  # noqa: F403
from tests.fixtures.models import *  # noqa: F403
from tests.fixtures.services import *  # noqa: F403
from tests.fixtures.web import *  # noqa: F403


@pytest.hookimpl(tryfirst=True)  # before -m deselects by marker
def pytest_collection_modifyitems(items):
    for item in items:
        if (item.path.name.startswith("test_") and "wechat" in item.path.name) or "wechat" in item.name:
            item.add_marker(pytest.mark.wechat)
