"""API fixtures: a real server per test module (each module seeds its own users); the
server factories ``api_factory`` and ``fresh_api`` are the suite's (``tests/plugin.py``)."""

from __future__ import annotations

import pytest

from tests.api.helpers import Api
from tests.plugin import StartApi


@pytest.fixture(scope="module")
def api(api_factory: StartApi) -> Api:
    """One server for the module with users alice (3 devices) and bob (2 devices)."""
    return api_factory({"alice": 3, "bob": 2})
