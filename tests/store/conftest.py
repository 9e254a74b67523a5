"""Store fixtures: a fresh SQLite file, or a fresh PostgreSQL database, per test.

PostgreSQL tests need RELAYBOX_TEST_POSTGRES_URL (a role that may CREATE DATABASE). Without
it they are skipped on a workstation, but FAIL in CI (CI=true): CI must run them
(``tests.plugin.postgres_url``).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import peewee as pw
import pytest

from relaybox.store.db import make_sqlite
from relaybox.store.models import database_proxy
from tests.plugin import postgres_url
from tests.store.helpers import Writer
from tests.support import fresh_database, pg_database

BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
MakeDb = Callable[[], pw.Database]


@pytest.fixture(params=BACKENDS)
def make_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MakeDb]:
    """Factory of empty databases; every test using it runs on SQLite and PostgreSQL."""
    url = postgres_url() if request.param == "postgres" else None
    count = 0
    with contextlib.ExitStack() as made:

        def make() -> pw.Database:
            nonlocal count
            count += 1
            if url is None:
                db: pw.Database = make_sqlite(tmp_path / f"db{count - 1}.sqlite")
            else:
                # A database of its own: other tests may share the server at the same
                # time. Dropped without FORCE: a connection left open fails the test.
                own = made.enter_context(fresh_database(url, force=False))
                db = pg_database(own, urlsplit(own).path.lstrip("/"))
            made.callback(lambda: None if db.is_closed() else db.close())
            db.connect()
            return db

        yield make


@pytest.fixture
def db(make_db: MakeDb) -> Iterator[pw.Database]:
    """A migrated database with the models bound to it."""
    from relaybox.store import migrate

    database = make_db()
    migrate.up(database)
    database_proxy.initialize(database)
    yield database


@pytest.fixture
async def writer(db: pw.Database) -> AsyncIterator[Writer]:
    """A process event log on ``db`` whose writer process is ready."""
    w = Writer(db)
    await w.log.ready()
    yield w
    await w.stop()
