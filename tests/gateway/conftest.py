"""Gateway fixtures: real servers shared by a module, checked for tracebacks at teardown."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.gateway.helpers import assert_clean_log, env
from tests.support import Server, free_port

MakeServer = Callable[..., Server]


def _factory(base: Callable[[], Path]) -> tuple[MakeServer, list[Server]]:
    started: list[Server] = []

    def make(data_dir: Path | None = None, *, args: list[str] | None = None,
             **settings: Any) -> Server:
        """Start ``relaybox serve``; ``settings`` by attribute name (gateway_window=8)."""
        srv = Server(data_dir or base() / "data", free_port(), env(**settings),
                     extra_args=args or [])
        started.append(srv)
        srv.start()
        return srv

    return make, started


def _teardown(started: list[Server]) -> None:
    # Check before stopping: the behaviours under test must leave no traceback.
    problems = []
    for srv in started:
        try:
            assert_clean_log(srv)
        except AssertionError as exc:
            problems.append(str(exc))
    for srv in reversed(started):  # later servers may share the first one's Redis
        srv.stop()
    for srv in started:
        srv.kill()
    assert not problems, problems[0]


@pytest.fixture(scope="module")
def module_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MakeServer]:
    """Servers shared by every test of a module (each test uses its own users)."""
    make, started = _factory(lambda: tmp_path_factory.mktemp("gw"))
    yield make
    _teardown(started)


@pytest.fixture
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MakeServer]:
    """Servers for one test only (crashes, restarts, several processes)."""
    make, started = _factory(lambda: tmp_path_factory.mktemp("gw"))
    yield make
    _teardown(started)
