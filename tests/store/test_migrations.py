"""Migrations: a migrated database has exactly the models' schema; up → down → up works."""

from __future__ import annotations

from typing import Any

import peewee as pw

from relaybox.store import migrate
from relaybox.store.models import MODELS
from relaybox.store.sql import KEY_HEAD_SQL
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
            "indexes": sorted((i.name, tuple(i.columns), i.unique, partial(i.sql))
                              for i in db.get_indexes(table)),
            "foreign_keys": sorted((f.column, f.dest_table, f.dest_column)
                                   for f in db.get_foreign_keys(table)),
        }
    return out


def partial(sql: str | None) -> str | None:
    """A partial index's condition, spelled alike whatever wrote it (SQLite keeps the
    statement as given; PostgreSQL rewrites it; peewee qualifies the columns)."""
    if not sql or " WHERE " not in sql.upper():
        return None
    cond = sql[sql.upper().index(" WHERE ") + 7:].lower()
    for noise in ('"', "(", ")", "event."):
        cond = cond.replace(noise, "")
    return " ".join(cond.split())


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


def test_the_newest_seq_of_a_key_is_read_through_the_key_index(make_db: MakeDb) -> None:
    """Only keyed events are in the (user_id, stream, key, seq) index; the
    compare-and-set query must still be answered from it, not by scanning events."""
    db = make_db()
    migrate.up(db)
    pg = isinstance(db, pw.PostgresqlDatabase)
    sql = KEY_HEAD_SQL.format(p="%s" if pg else "?")
    if pg:
        db.execute_sql("SET enable_seqscan = off")  # an empty table: force the choice
        plan = " ".join(r[0] for r in db.execute_sql("EXPLAIN " + sql, ("u", "s", "k")))
    else:
        plan = " ".join(str(r[-1]) for r in
                        db.execute_sql("EXPLAIN QUERY PLAN " + sql, ("u", "s", "k")))
    assert "event_user_id_stream_key_seq" in plan, plan


def test_002_keeps_every_event_and_indexes_only_the_keyed_ones(make_db: MakeDb) -> None:
    db = make_db()
    applied = migrate.up(db)
    undone = migrate.down(db, steps=len(applied) - 1)  # back to 001
    assert undone[-1] == "002_fewer_event_indexes"
    p = "%s" if isinstance(db, pw.PostgresqlDatabase) else "?"
    rows = [("u", "s", seq, "d", f"id-{seq}", "k" if seq % 3 == 0 else None, "{}", seq)
            for seq in range(1, 31)]
    db.execute_sql("BEGIN")
    for row in rows:
        db.execute_sql("INSERT INTO event (user_id, stream, seq, device_id, client_id, key, "
                       f"body, ts) VALUES ({p}, {p}, {p}, {p}, {p}, {p}, {p}, {p})", row)
    db.execute_sql("COMMIT")
    assert migrate.up(db) == applied[1:]
    assert db.execute_sql("SELECT COUNT(*) FROM event").fetchone()[0] == 30
    head = db.execute_sql(KEY_HEAD_SQL.format(p=p), ("u", "s", "k")).fetchone()[0]
    assert head == 30
    if not isinstance(db, pw.PostgresqlDatabase):
        # The index holds the ten keyed events only.
        n = db.execute_sql("SELECT COUNT(*) FROM event INDEXED BY "
                           "event_user_id_stream_key_seq WHERE key IS NOT NULL").fetchone()[0]
        assert n == 10
        assert db.execute_sql("PRAGMA integrity_check").fetchone()[0] == "ok"
