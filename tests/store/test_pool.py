"""The bounded PostgreSQL pool of one process (docs/deployment.md, "PostgreSQL
connections"): never more connections than ``storage.pool_max_connections``, a clear
storage error when they are all busy past the pool timeout, and readers that hand their
connection back after every read."""

from __future__ import annotations

import threading
from urllib.parse import urlsplit

import peewee as pw
import pytest

from relaybox.config import Settings
from relaybox.store.db import Pool, ReadPool, make_database, make_postgres
from tests.plugin import FreshPostgres
from tests.support import pg_database

pytestmark = pytest.mark.postgres


@pytest.fixture
def pg_url(fresh_postgres: FreshPostgres) -> str:
    return fresh_postgres("relaybox_pool")


def _server_side_count(url: str) -> int:
    """Connections named relaybox on the test database, as PostgreSQL sees them."""
    probe = pg_database(url, urlsplit(url).path.lstrip("/"))
    try:
        row = probe.execute_sql(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND application_name = 'relaybox'").fetchone()
        return int(row[0])
    finally:
        probe.close()


def test_settings_make_a_bounded_pool(pg_url: str) -> None:
    db = make_database(Settings(database_url=pg_url, pool_max_connections=3,
                                pool_timeout_s=2.5))
    assert isinstance(db, Pool)
    assert db._max_connections == 3
    assert db._wait_timeout == 2.5


def test_readers_never_hold_more_than_the_pool_and_busy_means_a_storage_error(
        pg_url: str) -> None:
    db = make_postgres(pg_url, pool_size=2, pool_timeout_s=0.3)
    readers = ReadPool(db, 4)
    holding = [threading.Event(), threading.Event()]
    release = threading.Event()

    def hold(i: int) -> int:
        db.execute_sql("SELECT 1").fetchone()
        holding[i].set()
        release.wait(30)
        return i

    try:
        held = [readers.submit(hold, i) for i in range(2)]
        for ev in holding:
            assert ev.wait(30)
        assert db.in_use() == 2
        assert _server_side_count(pg_url) == 2
        # A third read finds both connections busy: after the pool timeout it fails the
        # way an unreachable database does (REST answers 503 storage_unavailable).
        third = readers.submit(lambda: db.execute_sql("SELECT 1").fetchone())
        with pytest.raises(pw.OperationalError, match="pooled database connections"):
            third.result(30)
        release.set()
        assert [f.result(30) for f in held] == [0, 1]
        # Every reader gave its connection back: more reads than connections take turns.
        results = [readers.submit(lambda: db.execute_sql("SELECT 2").fetchone()[0])
                   for _ in range(20)]
        assert [f.result(30) for f in results] == [2] * 20
        assert db.in_use() == 0
        assert db.idle() <= 2
        assert _server_side_count(pg_url) <= 2
    finally:
        release.set()
        readers.shutdown(wait=True)
        db.close_all()


def test_a_reader_gives_back_a_connection_even_when_its_read_fails(pg_url: str) -> None:
    db = make_postgres(pg_url, pool_size=1, pool_timeout_s=0.3)
    readers = ReadPool(db, 2)
    try:
        bad = readers.submit(lambda: db.execute_sql("SELECT * FROM no_such_table"))
        with pytest.raises(pw.ProgrammingError):
            bad.result(30)
        assert db.in_use() == 0
        ok = readers.submit(lambda: db.execute_sql("SELECT 3").fetchone()[0])
        assert ok.result(30) == 3
    finally:
        readers.shutdown(wait=True)
        db.close_all()
