"""A writer process that dies: what it was sent and had not answered goes to the next
one, in order (protocol.md §3 Delivery: acks before a normal close are durable before the
next catch-up; an acked publish is never lost), and only a crash loop is restarted slowly.

Real writer processes on a real SQLite file, stopped and killed with real signals.
"""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path
from typing import Any

import peewee as pw
import pytest

from relaybox.store import queries, writerproc
from relaybox.store.events import Accepted, Failed, PublishRequest
from relaybox.store.models import Cursor
from tests.store.helpers import D1, D2, U1, Writer, req, spec_for, stored

pytestmark = pytest.mark.asyncio(loop_scope="function")


class Clock:
    """The writer's monotonic clock, moved by the test."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def crashing(db: pw.Database, **how: Any) -> Writer:
    """A writer whose processes die as ``how`` says (tests/store/crashing_writer.py)."""
    return Writer(db, {**spec_for(db), **how}, module="tests.store.crashing_writer")


async def kill_with_queued(writer: Writer, *send: Any) -> list[Any]:
    """Stop the writer process, hand it what ``send`` makes (each a callable), let the
    loop write it to the socket, then kill the process: it dies with all of it unread.
    Returns once the loop has seen it die."""
    os.kill(writer.pid(), signal.SIGSTOP)
    made = [f() for f in send]
    await asyncio.sleep(0)  # one loop iteration: the frame goes out
    link = writer.log.writer._link
    os.kill(writer.pid(), signal.SIGKILL)
    while writer.log.writer._link is link:  # until the loop has seen the socket close
        await asyncio.sleep(0)
    return made


def cursor_of(device_id: str, stream: str) -> int | None:
    row = Cursor.get_or_none((Cursor.device_id == device_id) & (Cursor.stream == stream))
    return None if row is None else int(row.acked_seq)


async def test_acks_a_writer_died_with_are_durable_before_the_next_catch_up(
        writer: Writer, db: pw.Database) -> None:
    for _ in range(3):
        await writer.log.publish(req())
    # A session acks and closes normally (its close flushes with a touch), the writer
    # process dies with both unread, and the device's next session reads positions.
    _, _, flushed, positions = await kill_with_queued(
        writer,
        lambda: writer.log.save_cursor(D2, "s", 2),
        lambda: writer.log.save_cursor(D2, "s", 3),
        lambda: writer.log.touch(D2),
        lambda: writer.log.touch(D2, U1))
    # Sent after the death, before the next writer process is connected or as it is.
    writer.log.save_cursor(D2, "t", 1)
    later = writer.log.touch(D2, U1)
    assert await flushed is None
    # A touch never overtakes the cursor saves sent before it (it may see later ones: a
    # batch's touches read after all of its cursors are written).
    assert (await positions)[1]["s"] == 3
    assert (await later)[1] == {"s": 3, "t": 1}
    assert cursor_of(D2, "s") == 3
    assert writer.log.writer.started == 2


async def test_publishes_a_writer_died_with_are_stored_once_and_acked(
        writer: Writer, db: pw.Database) -> None:
    first = await writer.log.publish(req())
    assert isinstance(first, Accepted)
    lost = await kill_with_queued(writer, *[lambda: writer.log.publish(req())] * 5)
    results = [await f for f in lost]
    assert [(type(r), r.event.seq) for r in results  # type: ignore[union-attr]
            ] == [(Accepted, seq) for seq in range(2, 7)]
    assert [q for _, q, _ in stored(db)] == list(range(1, 7))
    assert [e.seq for e in writer.committed] == list(range(1, 7))  # fanned out once


async def test_publishes_committed_by_a_writer_that_died_unanswered_are_not_stored_twice(
        db: pw.Database, tmp_path: Path) -> None:
    w = crashing(db, die_after_commit=str(tmp_path / "died"))
    try:
        await w.log.ready()
        reqs = [req(body=str(i)) for i in range(5)]
        results = await asyncio.gather(*(w.log.publish(r) for r in reqs))
        assert (tmp_path / "died").exists() and w.log.writer.started == 2
        # The next writer process finds them stored: each is answered with its event.
        assert all(isinstance(r, Accepted) and r.duplicate for r in results)
        assert [r.event.seq for r in results] == [1, 2, 3, 4, 5]  # type: ignore[union-attr]
        assert [(q, c) for _, q, c in stored(db)] == [
            (i + 1, r.client_id) for i, r in enumerate(reqs)]
    finally:
        await w.stop()


async def test_an_item_every_writer_dies_of_is_given_up_and_what_follows_goes_on(
        db: pw.Database, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(writerproc, "RESTART_PAUSES_S", (0.0,))  # no pause: a short test
    w = crashing(db, die_on_body="poison")
    try:
        await w.log.ready()
        assert await w.log.publish(req(body="poison")) == Failed(
            "the writer process stopped")
        res = await w.log.publish(req(body="fine"))
        assert isinstance(res, Accepted) and res.event.seq == 1
        assert w.log.writer.started == writerproc.MAX_ATTEMPTS + 1
        assert [b for b in (e.body for e in w.committed)] == ["fine"]
    finally:
        await w.stop()


async def test_a_server_made_publish_is_not_sent_twice(writer: Writer) -> None:
    notice = PublishRequest(U1, None, "notice-1", "sys.devices", "{}")
    (lost,) = await kill_with_queued(writer, lambda: writer.log.publish(notice))
    # No (device, id) to deduplicate it by: the dead writer may have stored it.
    assert await lost == Failed("the writer process stopped")
    assert isinstance(await writer.log.publish(req()), Accepted)


async def test_only_writers_that_die_soon_after_starting_are_restarted_after_a_pause(
        db: pw.Database, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(writerproc, "RESTART_PAUSES_S", (0.0, 0.05, 60.0))
    clock = Clock()
    w = Writer(db, monotonic=clock)
    await w.log.ready()
    try:
        for _ in range(3):
            # Each lived long and answered: restarted at once, never counted as a loop.
            clock.now += writerproc.QUICK_DEATH_S
            (probe,) = await kill_with_queued(w, w.log.probe)
            assert w.log.writer._respawn is None and w.log.writer.quick_deaths == 0
            await probe
        assert w.log.writer.started == 4
        # Dying soon after starting, one after the other: the first of them is restarted
        # at once, the next ones after growing pauses.
        (probe,) = await kill_with_queued(w, w.log.probe)
        assert w.log.writer._respawn is None and w.log.writer.quick_deaths == 1
        await probe
        (probe,) = await kill_with_queued(w, w.log.probe)
        assert w.log.writer._respawn is not None and w.log.writer.quick_deaths == 2
        await probe  # after the pause
        # A stop during a pause still has the next writer commit what the last one left.
        await kill_with_queued(w, lambda: w.log.save_cursor(D1, "s", 7))
        assert w.log.writer._respawn is not None and w.log.writer.quick_deaths == 3
    finally:
        await w.stop()
    assert cursor_of(D1, "s") == 7
    assert queries.stream_heads(U1) == {}
