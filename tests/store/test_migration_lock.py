"""Several processes setting up one empty database at once (nodes started together)."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

from tests.store.conftest import _pg_database, postgres_url


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The URL of an empty database that no process has set up yet."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'shared.db'}"
        return
    url = postgres_url()
    admin = _pg_database(url, urlsplit(url).path.lstrip("/") or "postgres")
    name = f"relaybox_t_{secrets.token_hex(6)}"
    admin.execute_sql(f'CREATE DATABASE "{name}"')
    parts = urlsplit(url)
    try:
        yield urlunsplit((parts.scheme, parts.netloc, f"/{name}", "", ""))
    finally:
        admin.execute_sql(f'DROP DATABASE IF EXISTS "{name}"')
        admin.close()


def test_concurrent_inits_on_one_empty_database_all_succeed(database_url: str,
                                                            tmp_path: Path) -> None:
    """Three `relaybox init` at the same moment on one empty database: migrations and the
    server identity are set up once, under a lock; every run succeeds (or, on a SQLite
    file another run set up first, says so in one line) and all agree on one server id.
    Without the lock two of three failed on PostgreSQL (a duplicate type)."""
    env = {**os.environ, "RELAYBOX_DATABASE_URL": database_url}
    procs = [subprocess.Popen([sys.executable, "-m", "relaybox", "--data-dir",
                               str(tmp_path / f"node{i}"), "init", "--json"],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for i in range(3)]
    outs = [p.communicate(timeout=120) for p in procs]
    ok = 0
    for p, (_out, err) in zip(procs, outs, strict=True):
        # A data dir whose SQLite file another run already set up says so plainly.
        assert p.returncode == 0 or (err.decode().startswith("error: ") and \
            "is already initialised" in err.decode()), err.decode()
        assert "Traceback" not in err.decode()
        ok += p.returncode == 0
    assert ok >= 1
    ids = {line.split('"server_id"')[1].split('"')[1]
           for out, _ in outs for line in out.decode().splitlines() if '"server_id"' in line}
    assert len(ids) == 1, outs
