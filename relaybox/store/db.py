"""Opening the database (SQLite WAL or PostgreSQL) and binding the models to it."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import peewee as pw
from playhouse.pool import MaxConnectionsExceeded, PooledPostgresqlDatabase

from relaybox.config import Settings
from relaybox.store.models import database_proxy

SQLITE_BUSY_TIMEOUT_MS = 15000
#: A pooled PostgreSQL connection older than this is closed when it comes back, so that a
#: long-lived process picks up a failed-over server or changed settings within minutes.
POOL_RECYCLE_S = 300.0


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
    return make_postgres(settings.database_url, pool_size=settings.pool_max_connections,
                         pool_timeout_s=settings.pool_timeout_s)


class Pool(PooledPostgresqlDatabase):
    """PostgreSQL with a bounded pool of connections per process (docs/deployment.md,
    "PostgreSQL connections"). A thread takes a connection on its first query and gives it
    back on ``close()``; past ``max_connections`` it waits up to the pool timeout, then
    gets the same error as an unreachable database (503 storage_unavailable)."""

    def connect(self, reuse_if_open: bool = False) -> bool:
        try:
            return bool(super().connect(reuse_if_open))
        except MaxConnectionsExceeded as exc:
            raise pw.OperationalError(
                f"all {self._max_connections} pooled database connections are busy") from exc

    def in_use(self) -> int:
        """Connections handed out now (a gauge for tests and metrics)."""
        return len(self._in_use)

    def idle(self) -> int:
        """Open connections waiting in the pool."""
        return len(self._connections)


def make_postgres(url: str, *, pool_size: int = 8, pool_timeout_s: float = 10.0) -> Pool:
    parts = urlsplit(url)
    return Pool(
        unquote(parts.path.lstrip("/")) or "relaybox",
        max_connections=pool_size,
        timeout=pool_timeout_s,
        stale_timeout=POOL_RECYCLE_S,
        user=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
        host=parts.hostname or None,
        port=parts.port or None,
        application_name="relaybox",
    )


class ReadPool(ThreadPoolExecutor):
    """The reader threads of one process. With a pooled database every task hands its
    connection back when it ends, so idle readers hold none and more readers than pooled
    connections simply take turns; SQLite keeps one connection per thread (opening one
    costs its pragmas)."""

    def __init__(self, db: pw.Database, threads: int, name: str = "relaybox-read") -> None:
        super().__init__(threads, thread_name_prefix=name)
        self.db = db
        self.pooled = isinstance(db, Pool)

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        if not self.pooled:
            return super().submit(fn, *args, **kwargs)
        return super().submit(_then_release, self.db, fn, args, kwargs)


def _then_release(db: pw.Database, fn: Callable[..., Any], args: tuple[Any, ...],
                  kwargs: dict[str, Any]) -> Any:
    try:
        return fn(*args, **kwargs)
    finally:
        if not db.is_closed():
            db.close()


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
