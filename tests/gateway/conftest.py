"""Gateway fixtures: real servers shared by a module, checked for tracebacks at teardown."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
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
    # Servers on one data dir share the first one's Redis: stop them newest first.
    # Different data dirs stop in parallel (each stop takes seconds).
    groups: dict[Path, list[Server]] = {}
    for srv in started:
        groups.setdefault(srv.data_dir, []).append(srv)

    def stop_group(group: list[Server]) -> None:
        for srv in reversed(group):
            srv.stop()
        for srv in group:
            srv.kill()

    # Stopping takes seconds (mostly the embedded Redis going away): it happens in the
    # background while the next tests run; the session waits for it at the end.
    for group in groups.values():
        _stopping.append(_stopper.submit(stop_group, group))
    assert not problems, problems[0]


_stopper = ThreadPoolExecutor(4, thread_name_prefix="stop-server")
_stopping: list[Future[None]] = []


@pytest.fixture(scope="session", autouse=True)
def _stop_servers_at_the_end() -> Iterator[None]:
    yield
    for fut in _stopping:
        fut.result()


@pytest.fixture(scope="module")
def module_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MakeServer]:
    """Servers shared by every test of a module (each test uses its own users)."""
    make, started = _factory(lambda: tmp_path_factory.mktemp("gw"))
    yield make
    _teardown(started)


# The two ways a gateway connection comes in (relaybox/server/upgrade.py), like uvicorn's
# websocket implementations: "direct", the upgrade answered without Sanic's request path,
# and "through-sanic", the path of every deployment behind a proxy (``proxies_count`` > 0
# sends each upgrade through Sanic, which reads the forwarding headers).
WAYS_IN = {"direct": {}, "through-sanic": {"proxies_count": 1}}


@pytest.fixture(scope="module", params=list(WAYS_IN))
def way_in(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def gateway_servers(tmp_path_factory: pytest.TempPathFactory, way_in: str
                    ) -> Iterator[MakeServer]:
    """Like ``module_servers``, once for each way in: a module whose servers come from
    here runs every test over both."""
    make, started = _factory(lambda: tmp_path_factory.mktemp(f"gw-{way_in}"))

    def make_way(data_dir: Path | None = None, **kw: Any) -> Server:
        return make(data_dir, **{**WAYS_IN[way_in], **kw})

    yield make_way
    _teardown(started)


@pytest.fixture
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MakeServer]:
    """Servers for one test only (crashes, restarts, several processes)."""
    make, started = _factory(lambda: tmp_path_factory.mktemp("gw"))
    yield make
    _teardown(started)
