"""API fixtures: a real server per test module (each module seeds its own users)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.api.helpers import Api, assert_clean_log, start_api

StartApi = Callable[..., Api]


def _factory(tmp: pytest.TempPathFactory) -> tuple[StartApi, list[Api]]:
    started: list[Api] = []

    def start(users: dict[str, int] | None = None, **env: Any) -> Api:
        api = start_api(tmp.mktemp("api") / "data", users or {}, **env)
        started.append(api)
        return api

    return start, started


def _stop(started: list[Api]) -> None:
    # Check before stopping: nothing a test did may leave a traceback or a 500.
    problems: list[str] = []
    for api in started:
        try:
            assert_clean_log(api.server)
        except AssertionError as exc:
            problems.append(str(exc))
    for api in reversed(started):
        api.server.stop()
        api.server.kill()
    assert not problems, problems[0]


@pytest.fixture(scope="module")
def api_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StartApi]:
    start, started = _factory(tmp_path_factory)
    yield start
    _stop(started)


@pytest.fixture(scope="module")
def api(api_factory: StartApi) -> Api:
    """One server for the module with users alice (3 devices) and bob (2 devices)."""
    return api_factory({"alice": 3, "bob": 2})


@pytest.fixture
def fresh_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StartApi]:
    """Servers for a single test (limits, Redis failures, several processes)."""
    start, started = _factory(tmp_path_factory)
    yield start
    _stop(started)
