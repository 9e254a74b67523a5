"""The writer's statements beside the publishes (cursors, touches, positions) and how a
failed statement is told apart: one item's value, or the database itself.

The publishes' own statements (seqs, duplicates, compare-and-set, quotas) are in
store/append.py, which builds on these helpers.
"""

from __future__ import annotations

from typing import Any

import peewee as pw

from relaybox.store.db import is_postgres

# peewee's own: driver exceptions become pw.IntegrityError, pw.OperationalError…
_EXCEPTION_WRAPPER = pw.__exception_wrapper__  # type: ignore[attr-defined]
#: The newest seq of a key in a stream (compare-and-set by key), through the partial
#: index of keyed events: "key = ?" implies "key IS NOT NULL" for both databases.
KEY_HEAD_SQL = "SELECT MAX(seq) FROM event WHERE user_id = {p} AND stream = {p} AND key = {p}"

#: {stream: (head_seq, floor_seq)} of a user, {stream: acked_seq} of a device, and whether
#: the device is revoked (or gone) as of the same transaction.
Positions = tuple[dict[str, tuple[int, int]], dict[str, int], bool]


def param(db: pw.Database) -> str:
    """The driver's placeholder."""
    return "%s" if is_postgres(db) else "?"


def executemany(db: pw.Database, sql: str, rows: list[Any]) -> None:
    """``cursor.executemany`` with the driver's errors turned into peewee's (as
    ``execute_sql`` does), so that every failure of a batch is classified alike."""
    with _EXCEPTION_WRAPPER:
        db.cursor().executemany(sql, rows)


def data_error(exc: BaseException) -> bool:
    """Whether the database (or its driver) refused a value: the fault of one item of a
    batch, not of the database. A lock timeout, a lost connection or a database that is
    down raise OperationalError or InterfaceError instead, and a unique violation is
    another writer storing the same (device, id) at the same time: those fail (or
    re-evaluate) the whole batch."""
    # The drivers refuse some values before sending them: text that is not UTF-8 (both),
    # a NUL (psycopg2), an integer beyond 64 bits (sqlite3). Any other ValueError is
    # taken for a fault of the writer, not of one item.
    if isinstance(exc, UnicodeError | OverflowError):
        return True
    if type(exc) is ValueError and "NUL" in str(exc):
        return True
    orig = getattr(exc, "orig", exc)  # peewee keeps the driver's exception
    pgcode = getattr(orig, "pgcode", None)
    if pgcode is not None:
        # SQLSTATE classes 22 (data exception: too long for varchar(n), out of range…),
        # 23 (integrity: a check) and 54 (program limit exceeded: an index row too large)
        # are the value's fault; 08, 40, 53, 55, 57… are not. A unique violation (23505)
        # is a concurrent writer; a NULL where the writer must put a value (23502), the
        # writer's own fault.
        return pgcode[:2] in ("22", "54") or (pgcode[:2] == "23"
                                               and pgcode not in ("23505", "23502"))
    if isinstance(exc, pw.DataError):
        return True  # SQLite: string or blob too big
    if isinstance(exc, pw.IntegrityError):
        text = str(orig)
        return not ("UNIQUE constraint failed" in text or "NOT NULL constraint failed" in text)
    return False


def connection_lost(exc: Exception) -> bool:
    """Did the database drop the connection (as opposed to refusing the statement)?"""
    text = str(exc).lower()
    return isinstance(exc, pw.InterfaceError) or any(m in text for m in (
        "server closed the connection", "connection already closed",
        "terminating connection", "connection not open", "could not receive data",
        "ssl connection has been closed", "no connection to the server"))


def real_error(exc: Exception) -> Exception:
    """The error that failed a transaction. When SQLite has already rolled back by itself
    (a full disk, an I/O error), the ROLLBACK that follows fails too ("no transaction is
    active") and would hide the cause: report the cause."""
    seen: Exception = exc
    for _ in range(8):  # the driver's error, the ORM's around it, and so on
        if "no transaction is active" not in str(seen):
            return seen
        cause = seen.__context__
        if not isinstance(cause, Exception) or cause is seen:
            break
        seen = cause
    return exc


def transaction(db: pw.Database) -> Any:
    """The writer's transaction for one batch."""
    if is_postgres(db):
        return db.atomic()
    # BEGIN IMMEDIATE: take the write lock before reading heads, so that another
    # process writing the same file can never hand out the same seq.
    return db.atomic(lock_type="IMMEDIATE")


def write_cursors(db: pw.Database, cursors: dict[tuple[str, str], int]) -> None:
    """Move cursors forward, never back (protocol.md §3 Delivery)."""
    if not cursors:
        return
    p = param(db)
    executemany(
        db,
        f'INSERT INTO "cursor" (device_id, stream, acked_seq) VALUES ({p}, {p}, {p}) '
        "ON CONFLICT (device_id, stream) DO UPDATE SET acked_seq = "
        'CASE WHEN excluded.acked_seq > "cursor".acked_seq THEN excluded.acked_seq '
        'ELSE "cursor".acked_seq END',
        # Rows in one order for every writer (no deadlock between nodes' writers).
        [(d, s, q) for (d, s), q in sorted(cursors.items())])


def write_touches(db: pw.Database, touches: list[tuple[str, str | None]], now: int
                  ) -> list[tuple[Any, Exception | None]]:
    """Set ``last_seen_at`` of each device; with a user id, read its ``Positions`` too."""
    if not touches:
        return []
    p = param(db)
    executemany(db, f"UPDATE device SET last_seen_at = {p} WHERE id = {p}",
                [(now, d) for d in sorted({device_id for device_id, _ in touches})])
    return [(positions(db, user_id, device_id) if user_id else None, None)
            for device_id, user_id in touches]


def positions(db: pw.Database, user_id: str, device_id: str) -> Positions:
    """A user's stream heads (streams with events), a device's cursors, and whether the
    device was revoked or removed meanwhile."""
    p = param(db)
    # One statement (each one hands the GIL back and forth with the event loop).
    rows = db.execute_sql(
        f"SELECT 'd', NULL, revoked_at, NULL FROM device WHERE id = {p} "
        f"UNION ALL SELECT 'h', stream, head_seq, floor_seq FROM stream_head "
        f"WHERE user_id = {p} AND head_seq > 0 "
        f'UNION ALL SELECT \'c\', stream, acked_seq, NULL FROM "cursor" WHERE device_id = {p}',
        (device_id, user_id, device_id)).fetchall()
    heads: dict[str, tuple[int, int]] = {}
    cursors: dict[str, int] = {}
    revoked = True  # also when the device row is gone
    for kind, stream, value, floor in rows:
        if kind == "h":
            heads[stream] = (value, floor)
        elif kind == "c":
            cursors[stream] = value
        else:
            revoked = value is not None
    return heads, cursors, revoked
