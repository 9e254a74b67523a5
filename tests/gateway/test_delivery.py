"""protocol.md §3 Delivery, Catch-up and Server notices, and §4 ping/pong."""

from __future__ import annotations

import asyncio
import sqlite3
from typing import Any

import pytest

from relaybox.store.models import Device, Event, StreamHead
from tests.gateway.helpers import (
    Client,
    Frame,
    announce,
    connect_synced,
    database,
    device_token,
    raw,
    recv_json,
    send_auth,
    until_registered,
    users,
)
from tests.plugin import MakeServer
from tests.support import Server

pytestmark = pytest.mark.asyncio(loop_scope="function")
WINDOW = 32


@pytest.fixture(scope="module")
def server(gateway_servers: MakeServer) -> Server:
    return gateway_servers(gateway_publish_rate_per_s=0, gateway_window=WINDOW)


def seqs(events: list[Frame]) -> list[int]:
    return [e["seq"] for e in events]


def only(frames: list[Frame], kind: str) -> list[Frame]:
    return [f for f in frames if f["type"] == kind]


async def test_event_reaches_other_devices_of_the_user_and_nobody_else(server: Server) -> None:
    (a, b, c), (x,) = users(server, 3, 1)
    ca, cb, cc, cx = [await connect_synced(server, d) for d in (a, b, c, x)]
    ack = await ca.publish("clip", {"text": "from a"}, key="k1")
    for peer in (cb, cc):
        ev = await peer.expect_type("event")
        assert ev == {"type": "event", "stream": "clip", "seq": ack["seq"], "id": ack["id"],
                      "from": a.device_id, "key": "k1", "ts": ack["ts"],
                      "body": {"text": "from a"}}
    # Never to the publisher, never to another user.
    ack_x = await cx.publish("clip", {"text": "from x"})
    assert ack_x["seq"] == 1  # x's own stream of that name
    assert only(await ca.barrier(), "event") == []
    assert only(await cx.barrier(), "event") == []
    assert only(await cb.barrier(), "event") == []  # nothing of x reached user a's devices
    assert only(await cc.barrier(), "event") == []
    for cl in (ca, cb, cc, cx):
        await cl.close()


async def test_thousand_events_arrive_in_order_without_gap_or_duplicate(server: Server) -> None:
    a, b = users(server, 2)[0]
    ca, cb = await connect_synced(server, a), await connect_synced(server, b)
    acks, got = await asyncio.gather(ca.publish_many("bulk", list(range(1000))),
                                     cb.events(1000, "bulk"))
    assert seqs(got) == list(range(1, 1001))
    assert [e["id"] for e in got] == [f["id"] for f in acks]
    assert [e["body"] for e in got] == list(range(1000))
    assert only(await cb.barrier(), "event") == []
    await ca.close()
    await cb.close()


async def test_cumulative_ack_is_stored_and_reconnect_resumes_after_it(server: Server) -> None:
    a, b = users(server, 2)[0]
    ca, cb = await connect_synced(server, a), await connect_synced(server, b)
    await ca.publish_many("notes", list(range(5)))
    assert seqs(await cb.events(5, "notes", ack=False)) == [1, 2, 3, 4, 5]
    await cb.ack("notes", 3)
    await cb.barrier()  # the ack was read before the close
    await cb.close()
    cb = await Client.connect(server, b)
    assert cb.welcome["streams"]["notes"] == 5
    assert seqs(await cb.events(2, "notes")) == [4, 5]
    assert (await cb.expect_type("synced"))["streams"] == cb.welcome["streams"]
    await ca.close()
    await cb.close()


async def test_acks_before_a_close_are_durable_before_the_next_catch_up(
        server: Server) -> None:
    (a, b), (x,) = users(server, 2, 1)
    ca, cx = await connect_synced(server, a), await connect_synced(server, x)
    cb = await connect_synced(server, b)
    n = 12
    await ca.publish_many("notes", list(range(n + 1)))
    await cb.events(n + 1, "notes", ack=False)
    for i in range(1, n + 1):
        # Another user keeps the writer busy, so the ack queues behind a commit.
        load = asyncio.create_task(cx.publish_many("load", list(range(200))))
        await asyncio.sleep(0.002)
        await cb.ack("notes", i)
        await cb.barrier()  # the server has read the ack
        await cb.close()
        cb = await Client.connect(server, b)  # reconnect at once
        first = await cb.expect_type("event")
        assert (first["stream"], first["seq"]) == ("notes", i + 1)
        await load
        await cb.events(n - i, "notes", ack=False)
    await ca.close()
    await cb.close()
    await cx.close()


async def test_ack_above_what_was_sent_is_clamped(server: Server) -> None:
    a, b = users(server, 2)[0]
    ca, cb = await connect_synced(server, a), await connect_synced(server, b)
    await ca.publish_many("notes", list(range(3)))
    assert seqs(await cb.events(3, "notes", ack=False)) == [1, 2, 3]
    await cb.ack("notes", 100)  # only 3 were sent: stored as 3
    await cb.ack("never-sent", 7)  # a stream nothing was sent of: ignored
    await cb.barrier()
    await cb.close()
    await ca.publish_many("notes", list(range(2)))
    cb = await Client.connect(server, b)
    assert seqs(await cb.events(2, "notes")) == [4, 5]
    await cb.expect_type("synced")
    await ca.close()
    await cb.close()


async def test_offline_catch_up_of_ten_thousand_events_then_synced(server: Server) -> None:
    a, b = users(server, 2)[0]
    ca = await connect_synced(server, a)
    await ca.publish_many("bulk", list(range(10_000)))
    cb = await Client.connect(server, b)
    assert cb.welcome["streams"] == {"sys.devices": 2, "bulk": 10_000}
    got: dict[str, list[int]] = {}
    while True:
        f = await cb.expect_type("event", "synced")
        if f["type"] == "synced":
            break
        got.setdefault(f["stream"], []).append(f["seq"])
        if f["seq"] % 8 == 0 or f["stream"] != "bulk" or f["seq"] == 10_000:
            await cb.ack(f["stream"], f["seq"])  # acks within window/2
    assert f["streams"] == cb.welcome["streams"]
    assert got == {"sys.devices": [1, 2], "bulk": list(range(1, 10_001))}
    await ca.close()
    await cb.close()


async def test_catch_up_sends_at_most_a_window_before_acks(server: Server) -> None:
    a, b = users(server, 2)[0]
    ca = await connect_synced(server, a)
    await ca.publish_many("backlog", list(range(100)))
    cb = await Client.connect(server, b)
    first = await cb.barrier()
    assert len(only(first, "event")) == WINDOW and only(first, "synced") == []
    got = [(e["stream"], e["seq"]) for e in only(first, "event")]
    for stream, seq in dict(got).items():  # the last seq sent of each stream
        await cb.ack(stream, seq)
    rest = await cb.events(100 + 2 - WINDOW)
    got += [(e["stream"], e["seq"]) for e in rest]
    assert sorted(got) == [("backlog", i) for i in range(1, 101)] + [("sys.devices", 1),
                                                                      ("sys.devices", 2)]
    assert (await cb.expect_type("synced"))["streams"] == {"sys.devices": 2, "backlog": 100}
    await ca.close()
    await cb.close()


async def test_events_published_during_catch_up_follow_without_gap_or_duplicate(
        server: Server) -> None:
    a, b = users(server, 2)[0]
    ca = await connect_synced(server, a)
    await ca.publish_many("live", list(range(1500)))
    cb = await Client.connect(server, b)
    frames: list[Frame] = []

    async def receive() -> None:
        n = 0
        while n < 2000:
            f = await cb.expect_type("event", "synced")
            frames.append(f)
            if f["type"] == "event":
                await cb.ack(f["stream"], f["seq"])
                n += f["stream"] == "live"

    await asyncio.gather(receive(), ca.publish_many("live", list(range(1500, 2000))))
    live = [f for f in frames if f["type"] == "event" and f["stream"] == "live"]
    assert seqs(live) == list(range(1, 2001))
    assert [e["body"] for e in live] == list(range(2000))
    synced_at = next(i for i, f in enumerate(frames) if f["type"] == "synced")
    before = [f["seq"] for f in frames[:synced_at] if f.get("stream") == "live"]
    assert before[-1] >= 1500  # everything that existed at connect came before `synced`
    assert only(await cb.barrier(), "event") == []
    await ca.close()
    await cb.close()


async def test_flow_control_stops_a_device_that_never_acks(server: Server) -> None:
    a, slow, c = users(server, 3)[0]
    ca, cc = await connect_synced(server, a), await connect_synced(server, c)
    cs = await Client.connect(server, slow)
    n = 1100  # more than the server keeps in memory: the rest is read from storage
    acks, got_c = await asyncio.gather(ca.publish_many("flow", list(range(n))),
                                       cc.events(n, "flow"))
    # The publisher and the other device are not slowed down by the stalled one.
    assert seqs(got_c) == list(range(1, n + 1)) and len(acks) == n
    frames = await cs.barrier()  # everything the server queued for it so far
    events = only(frames, "event")
    assert len(events) == WINDOW  # sys.devices catch-up counts in the window too
    assert seqs([e for e in events if e["stream"] == "sys.devices"]) == [1, 2, 3]
    assert seqs([e for e in events if e["stream"] == "flow"]) == list(range(1, WINDOW - 2))
    assert [f["streams"] for f in only(frames, "synced")] == [cs.welcome["streams"]]
    # Acking resumes delivery where it stopped, in order, to the end.
    received = seqs([e for e in events if e["stream"] == "flow"])
    await cs.ack("sys.devices", 3)
    await cs.ack("flow", received[-1])
    rest = await cs.events(n - len(received), "flow")
    assert received + seqs(rest) == list(range(1, n + 1))
    assert only(await cs.barrier(), "event") == []
    for cl in (ca, cc, cs):
        await cl.close()


@pytest.mark.parametrize("publisher_online", [True, False])
async def test_gap_after_retention(server: Server, publisher_online: bool) -> None:
    a, b = users(server, 2)[0]
    ca, cb = await connect_synced(server, a), await connect_synced(server, b)
    await ca.publish_many("ret", list(range(2)))
    assert seqs(await cb.events(2, "ret")) == [1, 2]
    await cb.barrier()
    await cb.close()
    await ca.publish_many("ret", list(range(2, 10)))
    if not publisher_online:
        await ca.close()
    # Retention removed 1..6 (two of them were never acked by b).
    with database(server):
        Event.delete().where((Event.user_id == a.user_id) & (Event.stream == "ret")
                             & (Event.seq <= 6)).execute()
        StreamHead.update(floor_seq=6).where((StreamHead.user_id == a.user_id)
                                             & (StreamHead.stream == "ret")).execute()
    cb = await Client.connect(server, b)
    gap = await cb.expect_type("gap", "event")
    assert gap == {"type": "gap", "stream": "ret", "after": 2, "next": 7}
    assert seqs(await cb.events(4, "ret")) == [7, 8, 9, 10]
    assert (await cb.expect_type("synced"))["streams"] == {"sys.devices": 2, "ret": 10}
    await ca.close()
    await cb.close()


async def test_sys_devices_notices_reach_every_device_of_the_user(server: Server) -> None:
    from relaybox.services import devices as svc

    (a, b), (x,) = users(server, 2, 1)
    ca, cb, cx = [await connect_synced(server, d) for d in (a, b, x)]

    def change(fn: Any) -> None:
        with database(server) as db:
            result = fn(db)
        announce(server, result[1] if isinstance(result, tuple) else result)

    import nacl.signing

    new_key = bytes(nacl.signing.SigningKey.generate().verify_key)
    with database(server) as db:
        from relaybox.store.models import User

        new_dev, added = svc.add_device(db, User.get_by_id(a.user_id), "phone", new_key)
    announce(server, added)
    change(lambda db: svc.rename_device(db, Device.get_by_id(b.device_id), "laptop"))
    change(lambda db: svc.revoke_device(db, Device.get_by_id(new_dev.id)))
    change(lambda db: svc.unrevoke_device(db, Device.get_by_id(new_dev.id)))
    expected = [("device_added", new_dev.id, "phone"), ("device_renamed", b.device_id, "laptop"),
                ("device_revoked", new_dev.id, "phone"),
                ("device_unrevoked", new_dev.id, "phone")]
    for cl in (ca, cb):  # b, the renamed one, included
        got = await cl.events(4, "sys.devices")
        assert seqs(got) == [3, 4, 5, 6]
        assert [(e["body"]["event"], e["body"]["device_id"], e["body"]["name"])
                for e in got] == expected
        assert all(e["from"] is None and e["id"][14] == "7" for e in got)
        assert len({e["id"] for e in got}) == 4
    assert only(await cx.barrier(), "event") == []
    for cl in (ca, cb, cx):
        await cl.close()


async def test_presence_online_and_offline_to_the_other_sessions(server: Server) -> None:
    (a, b), (x,) = users(server, 2, 1)
    ca, cx = await connect_synced(server, a), await connect_synced(server, x)
    cb = await connect_synced(server, b)
    assert await ca.expect_type("presence") == {"type": "presence", "device_id": b.device_id,
                                               "online": True}
    assert only(await cb.barrier(), "presence") == []  # not about itself
    await cb.close()
    assert await ca.expect_type("presence") == {"type": "presence", "device_id": b.device_id,
                                               "online": False}
    assert only(await cx.barrier(), "presence") == []  # another user hears nothing
    await ca.close()
    await cx.close()


@pytest.mark.parametrize("ref", [7, "abc", None, {"n": [1, 2]}])
async def test_ping_is_answered_with_pong_and_the_same_ref(server: Server, ref: Any) -> None:
    (dev,) = users(server, 1)[0]
    c = await Client.connect(server, dev)
    await c.send({"type": "ping", "ref": ref})
    assert await c.expect_type("pong") == {"type": "pong", "ref": ref}
    await c.close()


async def test_a_session_still_in_its_handshake_gets_welcome_before_any_presence(
        server: Server) -> None:
    """protocol.md §2: `welcome` is the first frame after `auth`. A presence change that
    happens while the session is registered but still reading its positions (here: the
    writer is held up by a lock on the database) is not sent to it."""
    a, b = users(server, 2)[0]
    ca = await connect_synced(server, a)
    token = device_token(server, a)  # before the lock: it writes
    lock = sqlite3.connect(server.data_dir / "relaybox.db", isolation_level=None)
    try:
        lock.execute("BEGIN IMMEDIATE")  # the server's writer now waits for this lock
        ws = await raw(server)
        await send_auth(ws, b)
        # b is registered (the server holds its session) but has no welcome yet.
        await until_registered(server, token, b.device_id)
        assert only(await ca.barrier(), "presence") == []  # b is not online until welcomed
        await ca.close()  # a goes offline while b is between auth and welcome
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    first = await recv_json(ws)
    assert first["type"] == "welcome", first
    await ws.close()
