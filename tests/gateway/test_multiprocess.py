"""Two `relaybox serve` processes on one data dir: one relay, whichever process a device uses."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import time

import pytest

from tests.gateway.helpers import (
    Client,
    connect_synced,
    publish_on_both,
    revoke,
    until_close,
    users,
)
from tests.plugin import MakeServer
from tests.support import Server, writer_pids

pytestmark = pytest.mark.asyncio(loop_scope="function")


@pytest.fixture(scope="module")
def pair(module_servers: MakeServer) -> tuple[Server, Server]:
    first = module_servers(gateway_publish_rate_per_s=0)
    # Same data dir: the second process shares the SQLite file and the first one's
    # embedded Redis (found through <data_dir>/run/server-*.json).
    second = module_servers(first.data_dir, gateway_publish_rate_per_s=0)
    return first, second


async def test_second_process_uses_the_first_ones_redis(pair: tuple[Server, Server]) -> None:
    from relaybox.bus import live_servers

    first, second = pair
    records = live_servers(first.data_dir / "run")
    assert sorted(r["port"] for r in records) == sorted([first.port, second.port])
    assert [bool(r["redis_socket"]) for r in records].count(True) == 1


async def test_events_cross_processes_both_ways(pair: tuple[Server, Server]) -> None:
    first, second = pair
    a, b = users(first, 2)[0]
    ca, cb = await connect_synced(first, a), await connect_synced(second, b)
    ack = await ca.publish("notes", "from the first process")
    ev = await cb.expect_type("event")
    assert (ev["seq"], ev["id"], ev["body"]) == (ack["seq"], ack["id"],
                                                 "from the first process")
    ack = await cb.publish("notes", "from the second process")
    ev = await ca.expect_type("event")
    assert (ev["seq"], ev["body"]) == (2, "from the second process") == (ack["seq"],
                                                                           ev["body"])
    await ca.close()
    await cb.close()


async def test_concurrent_publishers_on_two_processes_share_one_gap_free_seq(
        pair: tuple[Server, Server]) -> None:
    await publish_on_both(*pair, 300)


async def test_new_session_on_one_process_replaces_the_one_on_the_other(
        pair: tuple[Server, Server]) -> None:
    first, second = pair
    (dev,) = users(first, 1)[0]
    old = await connect_synced(first, dev)
    new = await connect_synced(second, dev)
    assert await old.closed_code() == 4409
    await new.barrier()
    await new.close()


async def test_revoke_closes_a_session_on_either_process(pair: tuple[Server, Server]) -> None:
    first, second = pair
    keep, gone = users(first, 2)[0]
    ck = await connect_synced(first, keep)
    cg = await connect_synced(second, gone)
    started = time.monotonic()
    revoke(first, gone)
    _, code = await until_close(cg.ws, timeout=5)
    assert code == 4403 and time.monotonic() - started < 1.0
    notice = await ck.expect_type("event")
    assert (notice["body"]["event"], notice["body"]["device_id"]) == ("device_revoked",
                                                                      gone.device_id)
    await ck.close()


async def test_a_device_moving_to_the_other_process_resumes_after_its_last_ack(
        pair: tuple[Server, Server]) -> None:
    """protocol.md §3 Delivery: acks of the replaced session are stored before the new
    session's catch-up starts, also when the two sessions live in different processes."""
    first, second = pair
    pub, dev = users(first, 2)[0]
    cp = await connect_synced(first, pub)
    old = await connect_synced(first, dev)
    await cp.publish_many("moves", list(range(50)))
    got = await old.events(50, "moves", ack=False)
    assert [e["seq"] for e in got] == list(range(1, 51))
    # Both processes' writers wait for this lock: the old session's last ack cannot be
    # stored before the new session asks for its positions, unless the new one waits.
    lock = sqlite3.connect(first.data_dir / "relaybox.db", isolation_level=None)
    try:
        lock.execute("BEGIN IMMEDIATE")
        await old.ack("moves", 50)  # the last ack, and at once the device moves
        moving = asyncio.ensure_future(Client.connect(second, dev))
        assert await old.closed_code() == 4409
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    new = await moving
    assert new.welcome["streams"]["moves"] == 50
    first_frame = await new.expect_type("event", "synced")
    assert first_frame["type"] == "synced", first_frame  # nothing replayed
    assert first_frame["streams"]["moves"] == 50
    for c in (cp, new):
        await c.close()


async def _attempt(server: Server, dev: object) -> tuple[str, int | None, Client | None]:
    """Connect; ("welcome", None, client) or ("closed", code, None)."""
    try:
        c = await Client.connect(server, dev)  # type: ignore[arg-type]
    except Exception:
        return "closed", None, None
    return "welcome", None, c


async def test_the_same_device_on_two_processes_at_once_keeps_exactly_one_session(
        pair: tuple[Server, Server]) -> None:
    """Both processes get the device at the same moment, many times over: the newer
    session stays, the other is closed with 4409, whichever order the notices cross in.
    Each connection ends in a live session or a close, never hangs, never both closed."""
    first, second = pair
    (dev,) = users(first, 1)[0]
    for _ in range(12):
        got = await asyncio.gather(_attempt(first, dev), _attempt(second, dev))
        live = [c for _, _, c in got if c is not None]
        assert live, got  # at least one was welcomed
        if len(live) == 2:
            # One of the two is closed (4409) as soon as the notices have crossed.
            waits = [asyncio.ensure_future(c.closed_code(timeout=10)) for c in live]
            done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            (closed,) = done
            assert closed.result() == 4409
            survivor = live[1 - waits.index(closed)]
            waits[1 - waits.index(closed)].cancel()
        else:
            survivor = live[0]
        # The other one lives and works: a ping is answered (a hung session would not).
        await survivor.barrier(timeout=10)
        await survivor.close()


async def test_a_device_of_a_crashed_process_is_not_kept_waiting_elsewhere(
        servers: MakeServer) -> None:
    """The process holding a device is SIGKILLed: the device reconnects to the other
    process, which sees the holder's Redis subscription gone and does not wait for a
    hand-over that can never come (it waited 3 s before)."""
    first = servers(gateway_publish_rate_per_s=0)
    second = servers(first.data_dir, gateway_publish_rate_per_s=0)
    (dev,) = users(first, 1)[0]
    held = await connect_synced(second, dev)
    await held.barrier()
    assert second.proc is not None
    second.proc.kill()  # the process only: the embedded Redis belongs to the first
    second.proc.wait()
    second.proc = None
    again = await connect_synced(first, dev)
    await again.barrier()
    await again.close()
    assert "no hand-over" not in first.log()


async def test_acks_before_a_normal_close_hold_on_the_other_process(
        pair: tuple[Server, Server]) -> None:
    """protocol.md §3 Delivery: acks received before a normal close are durable before
    the device's next catch-up starts, also when it reconnects to another process at
    once. Here the first process's writer is stopped while the device closes, so its acks
    are not stored yet: the answer to the close frame waits for them (and so does a
    hand-over), and the catch-up on the second process replays nothing."""
    first, second = pair
    writer, reader = users(first, 2)[0]
    cw = await connect_synced(second, writer)
    cr = await connect_synced(first, reader)
    await cw.publish_many("acked", [f"e{i}" for i in range(20)])
    got = await cr.events(20, "acked", ack=False)
    assert first.proc is not None
    (pid,) = writer_pids(first.proc.pid)
    os.kill(pid, signal.SIGSTOP)
    # The writer resumes a second later, whatever the test is doing then (the stall is
    # the fault being tested).
    resume = asyncio.get_running_loop().call_later(1.0, os.kill, pid, signal.SIGCONT)
    try:
        await cr.ack("acked", got[-1]["seq"])
        await cr.barrier()  # the server has read the ack; its writer cannot store it yet
        await cr.close()  # answered once the ack is stored
        again = await Client.connect(second, reader)
        replayed = []
        while (f := await again.expect_type("event", "synced"))["type"] == "event":
            replayed.append(f["seq"])
    finally:
        resume.cancel()
        os.kill(pid, signal.SIGCONT)
    assert replayed == []
    await again.close()
    await cw.close()
