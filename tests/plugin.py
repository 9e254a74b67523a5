"""The suite's pytest plugin: the fixtures that several test packages share.

Loaded once, from ``tests/conftest.py`` (``pytest_plugins = ["tests.plugin"]``). The split:
``tests/support.py`` is the helper library (plain functions and classes that start
servers, seed users, open databases; no pytest in it), and this module builds the
fixtures on those helpers, with the pytest-only behaviour they need (skip, fail,
teardown). A package's own ``conftest.py`` holds only what that package alone uses.

- ``postgres_url()``: the test PostgreSQL server (RELAYBOX_TEST_POSTGRES_URL); without it
  a test fails in CI (CI=true) and is skipped elsewhere.
- ``fresh_postgres``: a factory of empty PostgreSQL databases of the test's own (URLs),
  dropped at teardown.
- ``make_server``: a factory of real ``relaybox serve`` processes on free ports.
- ``module_servers`` (module) and ``servers`` (one test): ``relaybox serve`` processes
  started with settings by attribute name, checked for tracebacks, stopped in the
  background (``stop_later``; the session waits for them at its end).
- ``data_dir`` (an initialised data dir) and ``live`` (an in-process server for the
  module, ``tests.inproc``), for the CLI and operations tests.
- ``redis_url``: a real embedded Redis (as ``serve`` runs it) for one test.
- ``api_factory`` (module) and ``fresh_api`` (one test): factories of real servers with
  seeded users for the REST tests (``tests.api.helpers.Api``), in-process unless asked
  for with ``own_process=True``, checked for tracebacks and 500s at teardown.

The session's end waits for the servers stopping in the background and checks that no
in-process server is left running.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.api.helpers import Api, assert_clean_log, start_api
from tests.gateway.helpers import assert_clean_log as assert_clean_gateway_log
from tests.gateway.helpers import env
from tests.inproc import InProcServer, assert_none_left
from tests.support import Server, free_port, fresh_database

PG_ENV = "RELAYBOX_TEST_POSTGRES_URL"
FreshPostgres = Callable[..., str]


def postgres_url() -> str:
    """The test server's URL; fails in CI and skips elsewhere when it is not set."""
    url = os.environ.get(PG_ENV, "")
    if not url:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{PG_ENV} is not set: CI must run the PostgreSQL tests")
        pytest.skip(f"{PG_ENV} is not set (PostgreSQL tests run in CI)")
    return url


@pytest.fixture
def fresh_postgres() -> Iterator[FreshPostgres]:
    """Factory: ``fresh_postgres(prefix="relaybox_t", force=True)`` creates an empty
    PostgreSQL database and returns its URL; every one is dropped after the test
    (``support.fresh_database``). Fails in CI, skips elsewhere, without a test server."""
    with contextlib.ExitStack() as made:

        def make(prefix: str = "relaybox_t", *, force: bool = True) -> str:
            return made.enter_context(fresh_database(postgres_url(), prefix, force=force))

        yield make


def _env_name(key: str) -> str:
    name = key.upper()
    return name if name.startswith("RELAYBOX_") else "RELAYBOX_" + name


@pytest.fixture
def make_server(tmp_path: Path) -> Iterator[Callable[..., Server]]:
    """Factory: ``make_server(**env)`` starts a real server on a free port."""
    servers: list[Server] = []

    def make(data_dir: Path | None = None, *, start: bool = True, args: list[str] | None = None,
             **env: str) -> Server:
        d = data_dir or tmp_path / f"data{len(servers)}"
        srv = Server(d, free_port(), {_env_name(k): str(v) for k, v in env.items()},
                     extra_args=args or [])
        servers.append(srv)
        if start:
            srv.start()
        return srv

    yield make
    for srv in servers:
        srv.stop()
        srv.kill()


# -- REST API servers ---------------------------------------------------------------
StartApi = Callable[..., Api]


def _api_factory(tmp: pytest.TempPathFactory) -> tuple[StartApi, list[Api]]:
    started: list[Api] = []

    def start(users: dict[str, int] | None = None, *, own_process: bool = False,
              **env: Any) -> Api:
        api = start_api(tmp.mktemp("api") / "data", users or {}, own_process=own_process,
                        **env)
        started.append(api)
        return api

    return start, started


def _stop_apis(started: list[Api]) -> None:
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
    """Factory: ``api_factory(users, **env)`` starts a server the whole module shares
    (``own_process=True``: a ``relaybox serve`` process)."""
    start, started = _api_factory(tmp_path_factory)
    yield start
    _stop_apis(started)


@pytest.fixture
def fresh_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StartApi]:
    """Servers for a single test (limits, Redis failures, several processes): initialised
    data dir, seeded users, embedded Redis; checked for tracebacks and 500s at teardown.
    ``own_process=True``: a ``relaybox serve`` process (to kill or signal it)."""
    start, started = _api_factory(tmp_path_factory)
    yield start
    _stop_apis(started)


# -- stopping servers in the background --------------------------------------------------
# Stopping a server takes seconds (mostly the embedded Redis going away): it happens in the
# background while the next tests run; the session waits for all of it at the end.
_stopper = ThreadPoolExecutor(4, thread_name_prefix="stop-server")
_stopping: list[Future[None]] = []


def stop_later(stop: Callable[..., None], *args: Any) -> None:
    """Run ``stop(*args)`` in the background; the session waits for it at its end."""
    _stopping.append(_stopper.submit(stop, *args))


@pytest.fixture(scope="session", autouse=True)
def _stop_servers_at_the_end() -> Iterator[None]:
    yield
    for fut in _stopping:
        fut.result()
    assert_none_left()


@pytest.fixture
def redis_url(tmp_path: Path) -> Iterator[str]:
    """A real embedded Redis for one test, as ``serve`` runs it: its URL."""
    from relaybox.bus import EmbeddedRedis, url_from_socket

    server = EmbeddedRedis(tmp_path / "redis")
    yield url_from_socket(server.start())
    server.stop()


# -- gateway servers ------------------------------------------------------------------
MakeServer = Callable[..., Server]


def gateway_factory(base: Callable[[], Path]) -> tuple[MakeServer, list[Server]]:
    """A server factory and the list of what it started (for ``gateway_teardown``)."""
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


def gateway_teardown(started: list[Server]) -> None:
    """Fail on a traceback in any log; stop the servers in the background."""
    # Check before stopping: the behaviours under test must leave no traceback.
    problems = []
    for srv in started:
        try:
            assert_clean_gateway_log(srv)
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
        stop_later(stop_group, group)
    assert not problems, problems[0]


@pytest.fixture(scope="module")
def module_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MakeServer]:
    """Servers shared by every test of a module (each test uses its own users), started
    with settings by attribute name (``gateway_window=8``), checked for tracebacks."""
    make, started = gateway_factory(lambda: tmp_path_factory.mktemp("gw"))
    yield make
    gateway_teardown(started)

@pytest.fixture
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MakeServer]:
    """Servers for one test only (crashes, restarts, several processes)."""
    make, started = gateway_factory(lambda: tmp_path_factory.mktemp("gw"))
    yield make
    gateway_teardown(started)


# -- CLI and operations ---------------------------------------------------------------
@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """A freshly initialised data dir (no server running)."""
    from relaybox.cli.init_cmd import initialise
    from relaybox.config import load_settings

    d = tmp_path / "data"
    initialise(load_settings(d, env={}))
    return d


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcServer]:
    """One real server for the module, in this process; each test uses its own users. (A
    test that needs a ``relaybox serve`` process of its own uses ``make_server``.)"""
    srv = InProcServer(tmp_path_factory.mktemp("live") / "data")
    srv.start()
    yield srv
    srv.stop()
