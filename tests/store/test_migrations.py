"""Migrations: a migrated database has exactly the models' schema; up → down → up works."""

from __future__ import annotations

from typing import Any

import peewee as pw

from relaybox.store import migrate
from relaybox.store.models import MODELS
from tests.store.conftest import MakeDb


def schema(db: pw.Database) -> dict[str, Any]:
    """Tables with their columns, primary key, indexes and foreign keys, comparable."""
    out: dict[str, Any] = {}
    for table in sorted(db.get_tables()):
        if table == migrate.MIGRATE_TABLE:
            continue
        out[table] = {
            "columns": sorted((c.name, c.data_type.lower(), c.null, c.primary_key)
                              for c in db.get_columns(table)),
            "primary_key": sorted(db.get_primary_keys(table)),
            "indexes": sorted((i.name, tuple(i.columns), i.unique)
                              for i in db.get_indexes(table)),
            "foreign_keys": sorted((f.column, f.dest_table, f.dest_column)
                                   for f in db.get_foreign_keys(table)),
        }
    return out


def differences(migrated: dict[str, Any], models: dict[str, Any]) -> list[str]:
    """One line per table part where the migrated schema differs from the models'."""
    out = []
    for table in sorted(set(migrated) | set(models)):
        got, want = migrated.get(table, {}), models.get(table, {})
        for part in sorted(set(got) | set(want)):
            if got.get(part) != want.get(part):
                out.append(f"{table}.{part}: migrated {got.get(part)} != models {want.get(part)}")
    return out


def from_models(make_db: MakeDb) -> dict[str, Any]:
    db = make_db()
    with db.bind_ctx(MODELS):
        db.create_tables(MODELS)
    return schema(db)


def test_fresh_database_migrated_up_matches_the_models(make_db: MakeDb) -> None:
    expected = from_models(make_db)
    db = make_db()
    applied = migrate.up(db)
    assert applied and migrate.status(db).pending == []
    assert differences(schema(db), expected) == []
    assert set(expected) == {m._meta.table_name for m in MODELS}


def test_up_down_up(make_db: MakeDb) -> None:
    expected = from_models(make_db)
    db = make_db()
    applied = migrate.up(db)
    assert migrate.up(db) == []  # nothing twice
    assert migrate.down(db, steps=len(applied)) == list(reversed(applied))
    assert schema(db) == {}
    assert migrate.status(db).applied == []
    assert migrate.up(db) == applied
    assert differences(schema(db), expected) == []
