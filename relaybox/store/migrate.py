"""Migrations runner over peewee-migrate (the files of the top-level migrations/ folder)."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import peewee as pw
import relaybox_migrations
from peewee_migrate import Router

# migrations/ is installed as the package relaybox_migrations (setup.py): found the same
# way from a wheel and from a source checkout (an editable install maps it there).
MIGRATIONS_DIR = Path(relaybox_migrations.__file__).resolve().parent
MIGRATE_TABLE = "migratehistory"
# pg_advisory_lock key shared by every relaybox process migrating one PostgreSQL database
# (any fixed 64-bit number; this one spells "relaybox" in ASCII, truncated to fit).
_PG_LOCK_KEY = 0x72656C6179626F78 & 0x7FFFFFFFFFFFFFFF


@dataclass(frozen=True)
class MigrationStatus:
    applied: list[str]
    pending: list[str]


def _router(db: pw.Database) -> Router:
    logger = logging.getLogger("relaybox.migrate")
    return Router(db, migrate_dir=MIGRATIONS_DIR, migrate_table=MIGRATE_TABLE, logger=logger)


def status(db: pw.Database) -> MigrationStatus:
    router = _router(db)
    return MigrationStatus(applied=list(router.done), pending=list(router.diff))


@contextlib.contextmanager
def exclusive(db: pw.Database) -> Iterator[None]:
    """Hold the database's migration lock: one process at a time migrates and sets up a
    database (several nodes started at once on an empty PostgreSQL, or several `init`s
    on one SQLite file). Re-entrant in one process on PostgreSQL; on SQLite a lock file
    beside the database."""
    if isinstance(db, pw.PostgresqlDatabase):
        db.connect(reuse_if_open=True)
        db.execute_sql("SELECT pg_advisory_lock(%s)", (_PG_LOCK_KEY,))
        try:
            yield
        finally:
            with contextlib.suppress(Exception):
                db.execute_sql("SELECT pg_advisory_unlock(%s)", (_PG_LOCK_KEY,))
        return
    path = str(getattr(db, "database", "") or "")
    if not path or path == ":memory:" or path.startswith("file:"):
        yield
        return
    lock_path = path + ".migrate-lock"
    with _held_guard:
        if lock_path in _held:  # this thread holds it already (init → up)
            yield
            return
        with open(lock_path, "a+b") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            _held.add(lock_path)
            try:
                yield
            finally:
                _held.discard(lock_path)
                fcntl.flock(lock.fileno(), fcntl.LOCK_UN)


_held: set[str] = set()  # SQLite migration locks this process holds
_held_guard = threading.RLock()  # one thread of this process at a time takes them


def up(db: pw.Database) -> list[str]:
    """Apply every pending migration (under the migration lock); return the names applied."""
    with exclusive(db):
        return list(_router(db).run())


def down(db: pw.Database, steps: int = 1) -> list[str]:
    """Roll back the last ``steps`` applied migrations; return their names."""
    router = _router(db)
    undone: list[str] = []
    for _ in range(steps):
        done = router.done
        if not done:
            break
        name = done[-1]
        router.rollback()
        undone.append(name)
    return undone


def latest(db: pw.Database) -> str | None:
    done = _router(db).done
    return done[-1] if done else None
