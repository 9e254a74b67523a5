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
- ``api_factory`` (module) and ``fresh_api`` (one test): factories of real servers with
  seeded users for the REST tests (``tests.api.helpers.Api``), checked for tracebacks
  and 500s at teardown.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.api.helpers import Api, assert_clean_log, start_api
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

    def start(users: dict[str, int] | None = None, **env: Any) -> Api:
        api = start_api(tmp.mktemp("api") / "data", users or {}, **env)
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
    """Factory: ``api_factory(users, **env)`` starts a server the whole module shares."""
    start, started = _api_factory(tmp_path_factory)
    yield start
    _stop_apis(started)


@pytest.fixture
def fresh_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StartApi]:
    """Servers for a single test (limits, Redis failures, several processes): initialised
    data dir, seeded users, embedded Redis; checked for tracebacks and 500s at teardown."""
    start, started = _api_factory(tmp_path_factory)
    yield start
    _stop_apis(started)
