"""Several processes setting up one empty database at once (nodes started together)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.plugin import FreshPostgres


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The URL of an empty database that no process has set up yet."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'shared.db'}"
    fresh_postgres: FreshPostgres = request.getfixturevalue("fresh_postgres")
    return fresh_postgres(force=False)


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
