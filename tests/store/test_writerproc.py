"""The event log with its writer in a process of its own (how ``relaybox serve`` runs it),
on a real SQLite file or PostgreSQL database, through the real socket pair."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path
from typing import Any

import peewee as pw
import pytest

from relaybox.protocol.encoding import uuid4
from relaybox.store import queries, writerproc
from relaybox.store.events import Accepted, Conflicted, PublishRequest
from relaybox.store.writerproc import WriterGone
from tests.store.helpers import D1, D2, U1, Writer, req, spec_for, stored

pytestmark = pytest.mark.asyncio(loop_scope="function")


async def test_publishes_cursors_and_touches_go_through_the_writer_process(
        writer: Writer, db: pw.Database) -> None:
    first = req()
    results = await asyncio.gather(*(writer.log.publish(r)
                                      for r in (first, req(), req("t"), first)))
    assert all(isinstance(r, Accepted) for r in results)
    seqs = [(r.event.stream, r.event.seq, r.duplicate) for r in results
            if isinstance(r, Accepted)]
    assert seqs == [("s", 1, False), ("s", 2, False), ("t", 1, False), ("s", 1, True)]
    # Fan-out gets each new event once, built in the writer and rebuilt here.
    assert [(e.stream, e.seq) for e in writer.committed] == [("s", 1), ("s", 2), ("t", 1)]
    assert writer.committed[0].body == "1"
    assert [(s, q) for s, q, _ in stored(db)] == [("s", 1), ("s", 2), ("t", 1)]
    # A later repeat gets the stored event (body included); compare-and-set conflicts.
    again = await writer.log.publish(PublishRequest(U1, D1, first.client_id, "s", "2"))
    assert isinstance(again, Accepted) and again.duplicate
    assert (again.event.seq, again.event.body, again.event.ts_text) == (
        1, "1", results[0].event.ts_text)  # type: ignore[union-attr]
    cas = await writer.log.publish(PublishRequest(U1, D1, uuid4(), "s", "3", base_seq=1))
    assert cas == Conflicted("s", 2)
    assert len(writer.committed) == 3

    writer.log.save_cursor(D2, "s", 2)
    heads, cursors, revoked = await writer.log.touch(D2, U1)
    assert heads == {"s": (2, 0), "t": (1, 0)}
    assert cursors == {"s": 2}
    assert revoked  # no such device row
    assert await writer.log.touch(D2) is None
    assert queries.stream_heads(U1) == {"s": (2, 0), "t": (1, 0)}
    await writer.log.probe()
    assert writer.log.healthy
    assert writer.log.stats.events == 3


async def test_stop_commits_everything_sent_before_it(db: pw.Database) -> None:
    w = Writer(db)
    futs = [w.log.publish(req(body=str(i))) for i in range(300)]
    await w.stop()  # right away: the items are still on their way to the writer process
    results = [await f for f in futs]
    assert [r.event.seq for r in results if isinstance(r, Accepted)] == list(range(1, 301))
    assert len(stored(db)) == 300
    assert w.log.writer.proc is not None and w.log.writer.proc.returncode == 0


async def test_the_writer_process_ignores_interrupts_and_ends_with_its_input(
        writer: Writer, db: pw.Database) -> None:
    os.kill(writer.pid(), signal.SIGINT)
    os.kill(writer.pid(), signal.SIGTERM)
    res = await writer.log.publish(req())
    assert isinstance(res, Accepted) and res.event.seq == 1
    # The server dying looks like this to the writer: its socket closes.
    proc = writer.log.writer.proc
    assert proc is not None and writer.log.writer._link is not None
    writer.log.writer._stopping = True
    writer.log.writer._link.transport.abort()
    code = await asyncio.get_running_loop().run_in_executor(None, proc.wait, 30)
    assert code == 0


async def test_ready_fails_when_the_writer_cannot_open_the_database(
        db: pw.Database, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    w = Writer(db, {"sqlite": str(blocker / "sub" / "db.sqlite"), "synchronous": "full",
                    "log_level": "error"})
    with pytest.raises(WriterGone, match="could not open the database"):
        await w.log.ready()
    await w.stop()
    assert w.log.writer.started == 1  # no restarts after giving up


async def test_a_prestarted_writer_process_is_taken_by_the_first_event_log(
        db: pw.Database) -> None:
    writerproc.prestart()
    proc, _ = writerproc._prestarted[writerproc.WRITER_MODULE]
    w = Writer(db)
    try:
        await w.log.ready()
        assert w.log.writer.proc is proc and w.log.writer.started == 1
        res = await w.log.publish(req())
        assert isinstance(res, Accepted) and res.event.seq == 1
    finally:
        await w.stop()
    assert writerproc._prestarted == {}
    assert proc.returncode == 0


async def test_a_prestarted_writer_process_nobody_took_exits_quietly(
        capfd: pytest.CaptureFixture[str]) -> None:
    writerproc.prestart()
    proc, _ = writerproc._prestarted[writerproc.WRITER_MODULE]
    writerproc.discard_prestarted()
    assert proc.returncode == 0
    assert "error" not in capfd.readouterr().err


def note_setup(spec: dict[str, Any]) -> None:
    """A set-up handed to the writer process (it crosses by name, as the server's does)."""
    Path(spec["note"]).write_text(f"{os.getpid()} {spec['log_level']}")


async def test_the_set_up_it_is_handed_runs_in_the_writer_process_first(
        db: pw.Database, tmp_path: Path) -> None:
    note = tmp_path / "setup-ran"
    w = Writer(db, {**spec_for(db), "note": str(note)}, setup=note_setup)
    try:
        await w.log.ready()
        assert note.read_text() == f"{w.pid()} warning"
    finally:
        await w.stop()


async def test_a_set_up_that_cannot_be_found_stops_the_writer_process_with_its_reason(
        db: pw.Database, capfd: pytest.CaptureFixture[str]) -> None:
    w = Writer(db, {**spec_for(db), "setup": "tests.store.test_writerproc:no_such_setup"})
    with pytest.raises(WriterGone, match="could not open the database"):
        await w.log.ready()
    await w.stop()
    assert "set-up 'tests.store.test_writerproc:no_such_setup'" in capfd.readouterr().err
