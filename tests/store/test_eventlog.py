"""The group-commit event log on a real database: seq, dedup, compare-and-set, cursors."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterable
from pathlib import Path
from typing import Any, cast

import peewee as pw
import pytest

from relaybox.protocol.encoding import uuid4
from relaybox.store import queries
from relaybox.store.append import append_now
from relaybox.store.events import (
    Accepted,
    Conflicted,
    Failed,
    PublishRequest,
    PublishResult,
    StoredEvent,
)
from relaybox.store.front import EventLog
from relaybox.store.models import Cursor, Event, StreamHead
from tests.store.helpers import hold_writer

pytestmark = pytest.mark.asyncio(loop_scope="function")
U1, U2 = "u1-" + "0" * 33, "u2-" + "0" * 33
D1, D2 = "d1-" + "0" * 33, "d2-" + "0" * 33


def req(stream: str = "s", *, user: str = U1, device: str | None = D1, id: str | None = None,
        body: str = "1", key: str | None = None, base_seq: int | None = None
        ) -> PublishRequest:
    return PublishRequest(user, device, id or uuid4(), stream, body, key, base_seq)


class Log:
    """An EventLog on the test database, recording what it hands to fan-out."""

    def __init__(self, db: pw.Database, batch_max: int = 1024) -> None:
        self.committed: list[StoredEvent] = []
        self.log = EventLog(db, batch_max=batch_max, read_threads=1,
                            on_committed=self.committed.extend, clock=lambda: 1_700_000_000_000)
        self.log.start(asyncio.get_running_loop())

    async def publish(self, *reqs: PublishRequest) -> list[PublishResult]:
        """Queue all of ``reqs`` at once and wait for their results."""
        futs = [self.log.publish(r) for r in reqs]
        return list(await asyncio.gather(*futs))

    def hold(self) -> Callable[[], None]:
        """Keep the writer busy until the returned function is called (to fill a batch)."""
        return hold_writer(self.log)

    async def barrier(self) -> None:
        await self.log.call(lambda: None)

    def stop(self) -> None:
        self.log.stop()


@pytest.fixture
async def log(db: pw.Database) -> AsyncIterator[Log]:
    lg = Log(db, batch_max=4)
    yield lg
    await asyncio.get_running_loop().run_in_executor(None, lg.stop)


def rows(user: str = U1, stream: str = "s") -> list[tuple[int, str | None, str, str]]:
    q = (Event.select(Event.seq, Event.device_id, Event.client_id, Event.body)
         .where((Event.user_id == user) & (Event.stream == stream)).order_by(Event.seq))
    return list(cast("Iterable[tuple[int, str | None, str, str]]", q.tuples()))


def accepted(results: list[PublishResult]) -> list[int]:
    out = []
    for r in results:
        assert isinstance(r, Accepted), r
        out.append(r.event.seq)
    return out


@pytest.fixture(params=["upsert-returning", "general"])
def append_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Plain batches take the upsert … RETURNING path; SQLite before 3.35 the general one."""
    from relaybox.store import append

    monkeypatch.setattr(append, "_HAS_RETURNING", request.param == "upsert-returning")
    return str(request.param)


@pytest.mark.usefixtures("append_path")
async def test_group_commit_assigns_gap_free_seqs_across_batches(log: Log) -> None:
    release = log.hold()
    reqs = [req("s" if i % 3 else "t", user=U1 if i % 2 else U2) for i in range(22)]
    futs = [log.log.publish(r) for r in reqs]
    release()
    results = list(await asyncio.gather(*futs))
    assert log.log.stats.batches >= 6  # 22 publishes, at most 4 per commit
    assert log.log.stats.last_size <= 4
    expected: dict[tuple[str, str], int] = {}
    for r, res in zip(reqs, results, strict=True):
        assert isinstance(res, Accepted) and not res.duplicate
        k = (r.user_id, r.stream)
        expected[k] = expected.get(k, 0) + 1
        assert res.event.seq == expected[k]
    for (user, stream), n in expected.items():
        assert [row[0] for row in rows(user, stream)] == list(range(1, n + 1))
        heads = queries.stream_heads(user)
        assert heads[stream] == (n, 0)
    # Fan-out got every new event once, in commit order (seq order per stream).
    assert sorted((e.user_id, e.stream, e.seq) for e in log.committed) == sorted(
        (r.user_id, r.stream, res.event.seq) for r, res in zip(reqs, results, strict=True)
        if isinstance(res, Accepted))


@pytest.mark.usefixtures("append_path")
async def test_duplicates_within_one_batch_are_stored_once(log: Log) -> None:
    release = log.hold()
    same = uuid4()
    futs = [log.log.publish(req(id=same, body='"first"')),
            log.log.publish(req(id=same, body='"again"', stream="other")),
            log.log.publish(req(id=same, device=D2, body='"other device"'))]
    release()
    first, again, other_device = await asyncio.gather(*futs)
    assert isinstance(first, Accepted) and not first.duplicate
    assert isinstance(again, Accepted) and again.duplicate and again.event == first.event
    # The id is per device: the same id from another device is another event.
    assert isinstance(other_device, Accepted) and not other_device.duplicate
    assert rows() == [(1, D1, same, '"first"'), (2, D2, same, '"other device"')]
    assert rows(stream="other") == []
    assert [e.seq for e in log.committed] == [1, 2]


async def test_duplicates_across_batches_answer_the_original(log: Log) -> None:
    pid = uuid4()
    (first,) = await log.publish(req(id=pid, key="k"))
    await log.publish(req())
    (again,) = await log.publish(req("elsewhere", id=pid, body='"changed"', base_seq=0))
    assert isinstance(first, Accepted) and isinstance(again, Accepted)
    assert again.duplicate and (again.event.stream, again.event.seq, again.event.key) == (
        "s", 1, "k")
    assert [r[0] for r in rows()] == [1, 2] and rows(stream="elsewhere") == []
    assert len(log.committed) == 2


@pytest.mark.usefixtures("append_path")
async def test_a_batch_repeating_a_stored_event_keeps_seqs_gap_free(
        log: Log, caplog: pytest.LogCaptureFixture) -> None:
    """Batches are first written as new; a repeat of a stored event (a retry after a lost
    ack) sends the batch through the duplicate query, silently and without a gap."""
    pid = uuid4()
    (first,) = await log.publish(req(id=pid, body='"first"'))
    release = log.hold()
    futs = [log.log.publish(req(body='"a"')), log.log.publish(req(id=pid, body='"retry"')),
            log.log.publish(req(body='"b"'))]
    release()
    a, again, b = await asyncio.gather(*futs)
    assert isinstance(first, Accepted) and isinstance(again, Accepted)
    assert again.duplicate and (again.event.seq, again.event.body) == (1, '"first"')
    assert isinstance(a, Accepted) and isinstance(b, Accepted)
    assert (a.event.seq, b.event.seq) == (2, 3)
    assert [(r[0], r[3]) for r in rows()] == [(1, '"first"'), (2, '"a"'), (3, '"b"')]
    assert queries.stream_heads(U1)["s"] == (3, 0)
    assert [e.seq for e in log.committed] == [1, 2, 3]
    assert log.log.healthy
    assert "commit failed" not in caplog.text


async def test_server_notices_are_never_deduplicated(db: pw.Database) -> None:
    nid = uuid4()
    results = append_now(db, [req("sys.devices", device=None, id=nid),
                              req("sys.devices", device=None, id=nid)])
    assert accepted(results) == [1, 2]


async def test_compare_and_set_with_and_without_key(log: Log) -> None:
    r = await log.publish(req(key="a"), req(key="a"), req(key="b"), req())
    assert accepted(r) == [1, 2, 3, 4]
    res = await log.publish(
        req(key="a", base_seq=2),  # key a last written at 2: accepted as 5
        req(key="a", base_seq=4),  # now key a is at 5 (same batch): conflict
        req(key="b", base_seq=2),  # key b at 3: conflict
        req(key="new", base_seq=0),  # never written: counts as 0
        req(base_seq=5),  # no key: the stream head (6 after the accepted ones)
        req(base_seq=6),
    )
    assert isinstance(res[0], Accepted) and res[0].event.seq == 5
    assert res[1] == Conflicted("s", 5)
    assert res[2] == Conflicted("s", 3)
    assert isinstance(res[3], Accepted) and res[3].event.seq == 6
    assert res[4] == Conflicted("s", 6)
    assert isinstance(res[5], Accepted) and res[5].event.seq == 7
    assert [row[0] for row in rows()] == [1, 2, 3, 4, 5, 6, 7]  # conflicts take no seq


async def test_a_conflicted_id_is_evaluated_afresh(log: Log) -> None:
    await log.publish(req())
    pid = uuid4()
    (nack,) = await log.publish(req(id=pid, base_seq=0))
    (ack,) = await log.publish(req(id=pid))
    assert nack == Conflicted("s", 1)
    assert isinstance(ack, Accepted) and not ack.duplicate and ack.event.seq == 2


async def test_cursor_upserts_keep_the_max(log: Log) -> None:
    def stored() -> dict[tuple[str, str], int]:
        q = Cursor.select(Cursor.device_id, Cursor.stream, Cursor.acked_seq).tuples()
        return {(d, s): n for d, s, n in cast("Iterable[tuple[str, str, int]]", q)}

    release = log.hold()
    for seq in (3, 9, 5):  # one batch
        log.log.save_cursor(D1, "s", seq)
    log.log.save_cursor(D2, "s", 2)
    release()
    await log.barrier()
    assert stored() == {(D1, "s"): 9, (D2, "s"): 2}
    log.log.save_cursor(D1, "s", 4)  # later batches: lower never wins
    await log.barrier()
    log.log.save_cursor(D2, "s", 7)
    log.log.save_cursor(D1, "t", 1)
    await log.barrier()
    assert stored() == {(D1, "s"): 9, (D2, "s"): 7, (D1, "t"): 1}
    assert queries.cursors(D1) == {"s": 9, "t": 1}


async def test_queries_read_events_and_heads(log: Log) -> None:
    await log.publish(*[req(body=str(i), key="k" if i % 2 else None) for i in range(10)])
    events = queries.read_events(U1, "s", 3, 4)
    assert [(e.seq, e.body, e.key) for e in events] == [(4, "3", "k"), (5, "4", None),
                                                        (6, "5", "k"), (7, "6", None)]
    assert queries.read_events(U1, "s", 10, 5) == []
    StreamHead.create(user_id=U1, stream="empty", head_seq=0, floor_seq=0)
    assert queries.stream_heads(U1) == {"s": (10, 0)}  # streams with nothing are left out


async def test_storage_failure_answers_failed_and_loses_no_seq(tmp_path: Any) -> None:
    from relaybox.store import migrate
    from relaybox.store.models import database_proxy

    path = tmp_path / "busy.sqlite"
    quick = pw.SqliteDatabase(str(path), pragmas={"journal_mode": "wal", "busy_timeout": 50},
                              timeout=0.05)
    migrate.up(quick)
    database_proxy.initialize(quick)
    lg = Log(quick)
    try:
        (first,) = await lg.publish(req())
        other = pw.SqliteDatabase(str(path), timeout=0.05)
        other.execute_sql("BEGIN IMMEDIATE")  # another writer holds the lock
        try:
            (failed,) = await lg.publish(req())
        finally:
            other.execute_sql("ROLLBACK")
            other.close()
        (after,) = await lg.publish(req())
        assert isinstance(failed, Failed)
        assert accepted([first, after]) == [1, 2]
        assert lg.log.healthy
    finally:
        await asyncio.get_running_loop().run_in_executor(None, lg.stop)


def file_log(path: Path) -> tuple[pw.SqliteDatabase, Log]:
    """A migrated SQLite file of its own (with a checkpointer) and a Log on it."""
    from relaybox.store import migrate
    from relaybox.store.db import make_sqlite
    from relaybox.store.models import database_proxy

    db = make_sqlite(path)
    migrate.up(db)
    database_proxy.initialize(db)
    return db, Log(db)


async def test_checkpoints_run_beside_the_writer_and_keep_the_wal_bounded(
        tmp_path: Path) -> None:
    """The writer never checkpoints; the checkpointer copies the WAL back so SQLite can
    restart it, so writing the same amount twice does not make the WAL twice as long."""
    import os

    db, lg = file_log(tmp_path / "wal.sqlite")
    ckpt = lg.log.checkpointer
    assert ckpt is not None
    wal = db.database + "-wal"
    loop = asyncio.get_running_loop()
    body = '"' + "x" * 3000 + '"'

    async def burst() -> None:
        # 1,500 pages and more: SQLite's own autocheckpoint (1,000 pages) would fire.
        for _ in range(30):
            await lg.publish(*[req("big", body=body) for _ in range(50)])

    async def caught_up() -> tuple[int, int, int]:
        result = await loop.run_in_executor(None, ckpt.wait_caught_up)
        assert result is not None, "no checkpoint after the last commit"
        return result

    try:
        await burst()
        busy, frames, copied = await caught_up()
        assert frames > 1000 and copied == frames and busy == 0
        first_frames, first_size = frames, os.path.getsize(wal)
        await burst()
        busy, frames, copied = await caught_up()
        # The WAL restarted from its beginning: the second burst reused the file
        # (without checkpoints it would hold both bursts).
        assert 1000 < frames < 1.5 * first_frames and copied == frames
        assert os.path.getsize(wal) < 1.5 * first_size
        assert len(rows(stream="big")) == 3000
    finally:
        await loop.run_in_executor(None, lg.stop)


async def test_under_steady_writes_the_wal_still_starts_over(tmp_path: Path) -> None:
    """Every checkpoint overlaps new commits, so the WAL is never fully copied when the
    writer's next transaction starts and SQLite would append to it forever. The writer
    copies the rest itself when asked, and the WAL starts over from its beginning."""
    import os

    db, lg = file_log(tmp_path / "steady.sqlite")
    ckpt = lg.log.checkpointer
    assert ckpt is not None
    ckpt.interval_s, ckpt.restart_frames = 0.02, 256  # 1 MiB of 4 KiB pages
    wal = db.database + "-wal"
    body = '"' + "x" * 3000 + '"'
    n = 0
    try:
        # One event per commit, the next publish as soon as the last one is acked: the
        # writer never pauses for as long as a checkpoint takes.
        while n < 2000 or (ckpt.restarts < 3 and n < 6000):
            await lg.publish(req("steady", body=body))
            n += 1
        assert ckpt.restarts >= 3
        # Each commit appends 4 pages or more: without restarts the WAL would hold them
        # all (over 30 MiB); restarted, it stays near 1 MiB plus one interval's commits.
        assert os.path.getsize(wal) < n * 4 * 4096 / 3
        assert len(rows(stream="steady")) == n
    finally:
        await asyncio.get_running_loop().run_in_executor(None, lg.stop)


async def test_positions_read_heads_cursors_and_revocation(db: pw.Database) -> None:
    """The handshake's positions: heads of the user's streams with events (and their
    floors), this device's cursors, and whether it was revoked or removed."""
    import os

    from relaybox.services.devices import add_device
    from relaybox.services.users import add_user
    from relaybox.store.models import Device
    from relaybox.store.sql import positions

    user = add_user(db, "alice")
    other = add_user(db, "bob")
    phone, _ = add_device(db, user, "phone", os.urandom(32))
    laptop, _ = add_device(db, user, "laptop", os.urandom(32))
    append_now(db, [req("a", user=user.id, device=laptop.id), req("a", user=user.id,
                    device=laptop.id), req("b", user=user.id, device=laptop.id),
                    req("x", user=other.id, device=None)])
    StreamHead.update(floor_seq=1).where((StreamHead.user_id == user.id)
                                         & (StreamHead.stream == "a")).execute()
    Cursor.insert(device_id=phone.id, stream="a", acked_seq=2).execute()
    Cursor.insert(device_id=laptop.id, stream="b", acked_seq=1).execute()

    heads, cursors, revoked = positions(db, user.id, phone.id)
    # add_device also wrote the user's sys.devices notices; bob's stream is not here.
    assert heads == {"a": (2, 1), "b": (1, 0), "sys.devices": (2, 0)}
    assert (cursors, revoked) == ({"a": 2}, False)
    Device.update(revoked_at=1).where(Device.id == phone.id).execute()
    assert positions(db, user.id, phone.id) == (heads, {"a": 2}, True)
    assert positions(db, user.id, uuid4()) == (heads, {}, True)  # removed: revoked too


class Recorder:
    """An ``EventLogObserver`` that notes what it is told, in order."""

    def __init__(self, seen: list[str]) -> None:
        self.seen = seen

    def publishing(self, req: PublishRequest) -> Callable[[PublishResult], None]:
        self.seen.append(f"publishing {req.client_id}")
        return lambda res: self.seen.append(f"done {type(res).__name__}")

    def batch(self, new_events: list[StoredEvent], size: int, seconds: float,
              fanout_start_ns: int, fanout_end_ns: int) -> None:
        assert seconds >= 0 and fanout_start_ns <= fanout_end_ns
        self.seen.append(f"batch {size} {[e.seq for e in new_events]}")


async def test_an_observer_sees_each_publish_and_batch_after_fan_out_and_before_acks(
        log: Log) -> None:
    seen: list[str] = []
    log.log.on_committed = lambda events: seen.append(f"fan-out {len(events)}")
    log.log.observe(Recorder(seen))
    release = log.hold()
    first = req(id="a")
    futs = [log.log.publish(first), log.log.publish(req(id="b"))]
    log.log.publish_cb(first, lambda res: seen.append("ack"))  # a repeat, in the batch
    release()
    await asyncio.gather(*futs)
    await log.barrier()
    assert seen == ["publishing a", "publishing b", "publishing a", "fan-out 2",
                    "batch 3 [1, 2]", "done Accepted", "done Accepted", "ack",
                    "done Accepted"]
