"""Store fixtures: a fresh SQLite file, or a fresh PostgreSQL database, per test.

PostgreSQL tests need RELAYBOX_TEST_POSTGRES_URL (a role that may CREATE DATABASE). Without
it they are skipped on a workstation, but FAIL in CI (CI=true): CI must run them.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import peewee as pw
import pytest

from relaybox.store.db import make_sqlite
from relaybox.store.models import database_proxy

PG_ENV = "RELAYBOX_TEST_POSTGRES_URL"
BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
MakeDb = Callable[[], pw.Database]


def postgres_url() -> str:
    """The test server's URL; fails in CI and skips elsewhere when it is not set."""
    url = os.environ.get(PG_ENV, "")
    if not url:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{PG_ENV} is not set: CI must run the PostgreSQL tests")
        pytest.skip(f"{PG_ENV} is not set (PostgreSQL tests run in CI)")
    return url


def _pg_database(url: str, name: str) -> pw.PostgresqlDatabase:
    parts = urlsplit(url)
    return pw.PostgresqlDatabase(name, user=parts.username, password=parts.password,
                                 host=parts.hostname, port=parts.port or 5432)


@pytest.fixture(params=BACKENDS)
def make_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MakeDb]:
    """Factory of empty databases; every test using it runs on SQLite and PostgreSQL."""
    backend = request.param
    made: list[tuple[pw.Database, str | None]] = []
    admin: pw.PostgresqlDatabase | None = None
    if backend == "postgres":
        url = postgres_url()
        admin = _pg_database(url, urlsplit(url).path.lstrip("/") or "postgres")

    def make() -> pw.Database:
        if admin is None:
            db: pw.Database = make_sqlite(tmp_path / f"db{len(made)}.sqlite")
            made.append((db, None))
        else:
            # A database of its own: other tests may share the server at the same time.
            name = f"relaybox_t_{secrets.token_hex(6)}"
            admin.execute_sql(f'CREATE DATABASE "{name}"')
            db = _pg_database(str(url), name)
            made.append((db, name))
        db.connect()
        return db

    yield make
    for db, name in made:
        if not db.is_closed():
            db.close()
        if admin is not None and name is not None:
            admin.execute_sql(f'DROP DATABASE IF EXISTS "{name}"')
    if admin is not None and not admin.is_closed():
        admin.close()


@pytest.fixture
def db(make_db: MakeDb) -> Iterator[pw.Database]:
    """A migrated database with the models bound to it."""
    from relaybox.store import migrate

    database = make_db()
    migrate.up(database)
    database_proxy.initialize(database)
    yield database
