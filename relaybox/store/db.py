"""Opening the database (SQLite WAL or PostgreSQL) and binding the models to it."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import peewee as pw

from relaybox.config import Settings
from relaybox.store.models import database_proxy

SQLITE_BUSY_TIMEOUT_MS = 15000


def sqlite_pragmas(synchronous: str, *, replicated: bool = False) -> dict[str, object]:
    # WAL lets readers run beside the single writer. synchronous=FULL fsyncs the WAL
    # on every commit, so an acked event survives power loss (docs/configuration.md).
    pragmas: dict[str, object] = {
        "journal_mode": "wal",
        "synchronous": synchronous,
        "foreign_keys": 1,
        "busy_timeout": SQLITE_BUSY_TIMEOUT_MS,
        "cache_size": -16000,
        "temp_store": "memory",
    }
    if replicated:
        # Litestream copies the WAL before pages leave it, so it alone checkpoints
        # (docs/architecture.md "Durability"): no connection of ours does, not even
        # SQLite's automatic one after a commit.
        pragmas["wal_autocheckpoint"] = 0
    return pragmas


def make_database(settings: Settings) -> pw.Database:
    """A peewee Database for the settings, not yet bound or connected."""
    path = settings.sqlite_path
    if path is not None:
        return make_sqlite(path, settings.sqlite_synchronous,
                           replicated=settings.replication_enabled)
    return make_postgres(settings.database_url)


def make_postgres(url: str) -> pw.PostgresqlDatabase:
    parts = urlsplit(url)
    return pw.PostgresqlDatabase(
        unquote(parts.path.lstrip("/")) or "relaybox",
        user=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
        host=parts.hostname or None,
        port=parts.port or None,
    )


def make_sqlite(path: Path, synchronous: str = "full", *,
                replicated: bool = False) -> pw.SqliteDatabase:
    path.parent.mkdir(parents=True, exist_ok=True)
    return pw.SqliteDatabase(str(path), pragmas=sqlite_pragmas(synchronous,
                                                               replicated=replicated),
                             timeout=SQLITE_BUSY_TIMEOUT_MS / 1000)


def open_database(settings: Settings) -> pw.Database:
    """Make the database and bind every model to it (one database per process)."""
    db = make_database(settings)
    database_proxy.initialize(db)
    return db


def write_transaction(db: pw.Database) -> Any:
    """A transaction that takes the write lock up front (BEGIN IMMEDIATE on SQLite).

    A deferred SQLite transaction that reads and then writes fails at once with
    "database is locked" when another process committed in between (WAL snapshot);
    taking the lock first makes it wait for the busy timeout instead.
    """
    if isinstance(db, pw.SqliteDatabase):
        return db.atomic(lock_type="IMMEDIATE")
    return db.atomic()


def is_postgres(db: pw.Database) -> bool:
    return isinstance(db, pw.PostgresqlDatabase)


def ping(db: pw.Database) -> bool:
    """True when the database answers a trivial query."""
    try:
        db.execute_sql("SELECT 1").fetchone()
        return True
    except Exception:
        try:
            db.close()
        except Exception:  # noqa: S110 - a broken connection may refuse to close
            pass
        return False
