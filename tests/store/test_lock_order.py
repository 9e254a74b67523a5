"""Writers on several nodes take PostgreSQL row locks in one order, so none deadlock.

Two writers whose batches touch users A and B deadlock when one locks A then B and the
other B then A (PostgreSQL detects it after ~1 s and aborts one). Every row a batch
writes (stream heads, the users' quota counters, cursors, devices' last-seen) is
therefore locked in sorted order. Checked without a race: another transaction holds
A's row, the writer's batch lists B first, and once the writer waits for A it must hold
nothing of B's (a second writer could take B and then wait for A forever, never the
other way round).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

import peewee as pw
import pytest

from relaybox.protocol.encoding import uuid4
from relaybox.store import migrate
from relaybox.store.append import append
from relaybox.store.events import Accepted, PublishRequest
from relaybox.store.models import Device, User, database_proxy
from relaybox.store.sql import transaction, write_cursors, write_touches
from tests.plugin import FreshPostgres
from tests.support import pg_database

pytestmark = pytest.mark.postgres


@pytest.fixture
def pg(fresh_postgres: FreshPostgres) -> Iterator[Callable[[], pw.Database]]:
    """A migrated PostgreSQL database of the test's own; each call opens a connection."""
    url = fresh_postgres("relaybox_locks")
    opened: list[pw.Database] = []

    def connect() -> pw.Database:
        db = pg_database(url, urlsplit(url).path.lstrip("/"))
        db.connect()
        opened.append(db)
        return db

    try:
        first = connect()
        migrate.up(first)
        database_proxy.initialize(first)
        yield connect
    finally:
        for db in opened:
            if not db.is_closed():
                db.close()


def _pub(user: str, device: str) -> PublishRequest:
    return PublishRequest(user_id=user, device_id=device, client_id=uuid4(), stream="notes",
                          body='{"n": 1}')


def _waiting_on_lock(admin: pw.Database, pid: int) -> bool:
    row = admin.execute_sql("SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s",
                            (pid,)).fetchone()
    return bool(row) and row[0] == "Lock"


def _until(pred: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def _free(db: pw.Database, sql: str, args: tuple[Any, ...]) -> bool:
    """True when ``sql`` (… FOR UPDATE NOWAIT) gets its rows at once."""
    try:
        with db.atomic():
            db.execute_sql(sql, args).fetchall()
        return True
    except pw.OperationalError as exc:  # LockNotAvailable (55P03)
        if "could not obtain lock" not in str(exc):
            raise
        return False


def _setup(db_of: Callable[[], pw.Database]) -> tuple[list[str], list[str]]:
    """Two users (ids in order) with a device each and a stream each already holding an
    event, a cursor and a quota counter: every row a later batch locks exists."""
    users = sorted([uuid4(), uuid4()])
    devices = sorted([uuid4(), uuid4()])  # A's device sorts first too
    # B's rows are inserted first: a statement over both rows that follows the table's
    # physical order would then lock B first too.
    for i, uid in reversed(list(enumerate(users))):
        user = User.create(id=uid, name=f"lock{i}{uid[:8]}", created_at=1)
        Device.create(id=devices[i], user=user, name="d", public_key=bytes([i]) * 32,
                      created_at=1)
    db = db_of()
    with transaction(db):
        append(db, [_pub(u, d) for u, d in zip(users, devices, strict=True)], 1000)
        write_cursors(db, {(d, "notes"): 1 for d in devices})
    return users, devices


Step = Callable[[pw.Database, list[str], list[str]], Any]


def _publish(db: pw.Database, users: list[str], devices: list[str]) -> Any:
    # B's publish first in the batch: arrival order would lock B before A.
    return append(db, [_pub(users[1], devices[1]), _pub(users[0], devices[0])], 2000)


def _cursors(db: pw.Database, users: list[str], devices: list[str]) -> Any:
    write_cursors(db, {(devices[1], "notes"): 2, (devices[0], "notes"): 2})


def _touches(db: pw.Database, users: list[str], devices: list[str]) -> Any:
    write_touches(db, [(devices[1], None), (devices[0], None)], 3000)


# For each kind of write: the SQL that holds A's row, and the SQL that probes B's.
CASES: dict[str, tuple[Step, str, str]] = {
    "stream heads": (
        _publish,
        "SELECT 1 FROM stream_head WHERE user_id = %s FOR UPDATE",
        "SELECT 1 FROM stream_head WHERE user_id = %s FOR UPDATE NOWAIT"),
    "quota counters": (
        _publish,
        'SELECT 1 FROM "user" WHERE id = %s FOR UPDATE',
        'SELECT 1 FROM "user" WHERE id = %s FOR UPDATE NOWAIT'),
    "cursors": (
        _cursors,
        'SELECT 1 FROM "cursor" WHERE device_id = %s FOR UPDATE',
        'SELECT 1 FROM "cursor" WHERE device_id = %s FOR UPDATE NOWAIT'),
    "last seen": (
        _touches,
        "SELECT 1 FROM device WHERE id = %s FOR UPDATE",
        "SELECT 1 FROM device WHERE id = %s FOR UPDATE NOWAIT"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_writer_waiting_for_one_user_holds_nothing_of_the_next(
        pg: Callable[[], pw.Database], case: str) -> None:
    step, hold_sql, probe_sql = CASES[case]
    users, devices = _setup(pg)
    keys = devices if "device" in hold_sql else users
    holder, writer, prober = pg(), pg(), pg()
    out: dict[str, Any] = {}
    started = threading.Event()

    def write() -> None:
        # peewee keeps a connection per thread: the writer's is the one opened here.
        out["pid"] = writer.execute_sql("SELECT pg_backend_pid()").fetchone()[0]
        started.set()
        try:
            with transaction(writer):
                out["result"] = step(writer, users, devices)
        except Exception as exc:  # reported by the assertions below
            out["error"] = exc

    holder.execute_sql("BEGIN")
    holder.execute_sql(hold_sql, (keys[0],)).fetchall()
    t = threading.Thread(target=write)
    t.start()
    try:
        assert started.wait(30)
        _until(lambda: _waiting_on_lock(prober, out["pid"]), "the writer to wait for A's row")
        # The writer waits for A: it must not already hold B's row.
        assert _free(prober, probe_sql, (keys[1],)), \
            f"{case}: the writer locked B's row before A's"
    finally:
        holder.execute_sql("ROLLBACK")
        t.join(30)
        writer.close()
    assert not t.is_alive()
    assert "error" not in out, out.get("error")
    if step is _publish:
        assert all(isinstance(r, Accepted) for r in out["result"][0])
