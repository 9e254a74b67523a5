"""Migrations runner over peewee-migrate (files in relaybox/migrations/)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import peewee as pw
from peewee_migrate import Router

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"
MIGRATE_TABLE = "migratehistory"


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


def up(db: pw.Database) -> list[str]:
    """Apply every pending migration; return the names applied."""
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
