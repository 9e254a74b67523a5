"""protocol.md §3 Publish: acks after commit, seq, idempotency, compare-and-set, nacks."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterable
from typing import Any, cast

import pytest

from relaybox.protocol.encoding import uuid4, uuid7
from relaybox.store.models import Event
from tests.gateway.helpers import Client, database, users
from tests.plugin import MakeServer
from tests.support import Server

pytestmark = pytest.mark.asyncio(loop_scope="function")
TS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


@pytest.fixture(scope="module")
def server(gateway_servers: MakeServer) -> Server:
    return gateway_servers(gateway_publish_rate_per_s=0)


@pytest.fixture(scope="module")
def limited(gateway_servers: MakeServer) -> Server:
    return gateway_servers(gateway_publish_rate_per_s=1, gateway_publish_burst=2)


def stored(server: Server, **where: Any) -> list[tuple[str, int, str, str]]:
    """(stream, seq, client_id, body) of the stored events matching ``where``."""
    with database(server):
        q = Event.select(Event.stream, Event.seq, Event.client_id, Event.body)
        for k, v in where.items():
            q = q.where(getattr(Event, k) == v)
        rows = q.order_by(Event.stream, Event.seq).tuples()
        return list(cast("Iterable[tuple[str, int, str, str]]", rows))


async def test_ack_only_after_commit_with_seq_and_ts(server: Server) -> None:
    (dev,) = users(server, 1)[0]
    c = await Client.connect(server, dev)
    pid = uuid7()
    ack = await c.publish("notes", {"text": "hi"}, id=pid)
    assert ack == {"type": "ack", "id": pid, "stream": "notes", "seq": 1, "ts": ack["ts"]}
    assert TS.match(ack["ts"])
    # The ack is out, so the event is already committed: another connection reads it.
    assert stored(server, client_id=pid) == [("notes", 1, pid, '{"text":"hi"}')]
    await c.close()


async def test_seq_counts_per_user_and_stream_without_gaps(server: Server) -> None:
    (a,), (b,) = users(server, 1, 1)
    ca, cb = await Client.connect(server, a), await Client.connect(server, b)
    seqs: dict[tuple[str, str], list[int]] = {}
    for stream in ["s1", "s2", "s1", "s1", "s2"]:
        for who, c in (("a", ca), ("b", cb)):
            seqs.setdefault((who, stream), []).append((await c.publish(stream, 0))["seq"])
    assert seqs == {("a", "s1"): [1, 2, 3], ("b", "s1"): [1, 2, 3],
                    ("a", "s2"): [1, 2], ("b", "s2"): [1, 2]}
    await ca.close()
    await cb.close()


async def test_concurrent_publishers_of_one_user_get_distinct_gap_free_seqs(
        server: Server) -> None:
    devs = users(server, 3)[0]
    clients = [await Client.connect(server, d) for d in devs]
    acks = await asyncio.gather(*(c.publish_many("shared", list(range(150)))
                                  for c in clients))
    seqs = sorted(a["seq"] for per in acks for a in per)
    assert seqs == list(range(1, 451))
    for per in acks:  # one connection's publishes are stored in the order sent
        assert [a["seq"] for a in per] == sorted(a["seq"] for a in per)
    for c in clients:
        await c.close()


async def test_retry_with_the_same_id_gets_the_original_ack(server: Server) -> None:
    a, b = users(server, 2)[0]
    ca, cb = await Client.connect(server, a), await Client.connect(server, b)
    await cb.drain_catch_up()
    pid = uuid4()
    first = await ca.publish("notes", {"v": 1}, id=pid)
    await ca.publish("notes", {"v": 2})
    again = await ca.publish("notes", {"v": 1}, id=pid)
    other = await ca.publish("elsewhere", {"v": "changed"}, id=pid, key="k", base_seq=0)
    assert first["seq"] == 1
    assert again == first and other == first
    await ca.close()
    # After a reconnect too.
    ca = await Client.connect(server, a)
    assert await ca.publish("notes", "whatever", id=pid) == first
    assert stored(server, client_id=pid) == [("notes", 1, pid, '{"v":1}')]
    assert stored(server, stream="elsewhere", user_id=a.user_id) == []
    # The other device got the event once, and nothing for the repeats.
    got = await cb.events(2, "notes")
    assert [e["seq"] for e in got] == [1, 2]
    assert [f for f in await cb.barrier() if f["type"] == "event"] == []
    await ca.close()
    await cb.close()


async def test_a_nacked_id_is_evaluated_afresh(server: Server) -> None:
    (dev,) = users(server, 1)[0]
    c = await Client.connect(server, dev)
    await c.publish("notes", 1)
    pid = uuid4()
    nack = await c.publish("notes", 2, id=pid, base_seq=0)
    assert (nack["type"], nack["code"]) == ("nack", "conflict")
    ack = await c.publish("notes", 2, id=pid)
    assert (ack["type"], ack["seq"]) == ("ack", 2)
    await c.close()


async def test_conflict_without_key_compares_the_stream_head(server: Server) -> None:
    (dev,) = users(server, 1)[0]
    c = await Client.connect(server, dev)
    for i in range(3):
        await c.publish("doc", i)
    pid = uuid4()
    nack = await c.publish("doc", "stale", id=pid, base_seq=2)
    assert nack == {"type": "nack", "id": pid, "code": "conflict", "stream": "doc",
                    "head_seq": 3}
    assert (await c.publish("doc", "fresh", base_seq=3))["seq"] == 4
    assert (await c.publish("doc", "ahead", base_seq=99))["seq"] == 5
    assert (await c.publish("doc", "no base"))["seq"] == 6  # last writer wins
    assert [r[1] for r in stored(server, user_id=dev.user_id, stream="doc")] == [1, 2, 3, 4,
                                                                              5, 6]
    await c.close()


async def test_conflict_with_key_compares_the_latest_event_of_that_key(server: Server) -> None:
    (dev,) = users(server, 1)[0]
    c = await Client.connect(server, dev)
    assert (await c.publish("kv", 1, key="a"))["seq"] == 1
    assert (await c.publish("kv", 2, key="a"))["seq"] == 2
    assert (await c.publish("kv", 3, key="b"))["seq"] == 3
    assert (await c.publish("kv", 4))["seq"] == 4
    # Key "a" was last written at 2: base_seq 2 wins although the stream head is 4.
    assert (await c.publish("kv", 5, key="a", base_seq=2))["seq"] == 5
    nack = await c.publish("kv", 6, key="a", base_seq=4)
    assert (nack["code"], nack["head_seq"], nack["stream"]) == ("conflict", 5, "kv")
    nack = await c.publish("kv", 7, key="b", base_seq=2)
    assert (nack["code"], nack["head_seq"]) == ("conflict", 3)
    # A key never written counts as 0.
    assert (await c.publish("kv", 8, key="new", base_seq=0))["seq"] == 6
    await c.close()


async def test_conflicts_inside_one_commit_batch(server: Server) -> None:
    (dev,) = users(server, 1)[0]
    c = await Client.connect(server, dev)
    ids = [uuid4() for _ in range(4)]
    # Pipelined: these usually share one commit; each sees the ones before it.
    for pid in ids:
        await c.send({"type": "publish", "id": pid, "stream": "cas", "body": 0, "key": "k",
                      "base_seq": 0})
    replies = [await c.reply_to(pid) for pid in ids]
    assert [r["type"] for r in replies] == ["ack", "nack", "nack", "nack"]
    assert {r["head_seq"] for r in replies[1:]} == {1}
    await c.close()


async def _nack(c: Client, frame: dict[str, Any] | str) -> dict[str, Any]:
    await c.send(frame)
    return await c.expect_type("nack")


@pytest.mark.parametrize(("fields", "echo_id"), [
    pytest.param({"id": "not-a-uuid"}, False, id="bad-id"),
    pytest.param({"id": "6ba7b810-9dad-11d1-80b4-00c04fd430c8"}, False, id="uuid-v1-id"),
    pytest.param({"id": "ABCDEF00-0000-4000-8000-000000000000"}, False, id="uppercase-id"),
    pytest.param({"stream": "Bad Name"}, True, id="bad-stream"),
    pytest.param({"stream": "x" * 65}, True, id="long-stream"),
    pytest.param({"key": "é" * 129}, True, id="key-258-bytes"),
    pytest.param({"key": 5}, True, id="key-not-a-string"),
    pytest.param({"base_seq": -1}, True, id="negative-base-seq"),
    pytest.param({"base_seq": 1.5}, True, id="float-base-seq"),
    pytest.param({"body": None, "drop": "body"}, True, id="missing-body"),
])
async def test_invalid_publish_is_nacked_and_the_session_goes_on(
        server: Server, fields: dict[str, Any], echo_id: bool) -> None:
    (dev,) = users(server, 1)[0]
    c = await Client.connect(server, dev)
    frame: dict[str, Any] = {"type": "publish", "id": uuid4(), "stream": "notes", "body": 1}
    frame.update(fields)
    if "drop" in frame:
        del frame[frame.pop("drop")]
    nack = await _nack(c, json.dumps(frame, ensure_ascii=False))
    assert nack["code"] == "invalid"
    assert nack["id"] == (frame["id"] if echo_id else None)
    assert (await c.publish("notes", 1))["type"] == "ack"  # a nack never closes
    await c.close()


async def test_key_of_256_bytes_is_accepted(server: Server) -> None:
    (dev,) = users(server, 1)[0]
    c = await Client.connect(server, dev)
    assert (await c.publish("notes", 1, key="é" * 128))["type"] == "ack"
    await c.close()


async def test_body_size_boundary(server: Server) -> None:
    (dev,) = users(server, 1)[0]
    c = await Client.connect(server, dev)
    limit = 65536
    for text, unit in (("x", 1), ("é", 2)):  # counted as UTF-8 of compact JSON
        body = text * ((limit - 2) // unit)
        assert len(json.dumps(body, ensure_ascii=False).encode()) == limit
        pid = uuid4()
        await c.send(json.dumps({"type": "publish", "id": pid, "stream": "big", "body": body},
                                ensure_ascii=False))
        assert (await c.reply_to(pid))["type"] == "ack"
        pid = uuid4()
        await c.send(json.dumps({"type": "publish", "id": pid, "stream": "big",
                                 "body": body + "x"}, ensure_ascii=False))
        nack = await c.reply_to(pid)
        assert (nack["type"], nack["code"]) == ("nack", "too_large")
    # Compact encoding: spaces the client added do not count.
    pid = uuid4()
    ones = ", ".join(["1"] * ((limit - 1) // 2))
    await c.send(f'{{"type": "publish", "id": "{pid}", "stream": "big", "body": [ {ones} ]}}')
    assert (await c.reply_to(pid))["type"] == "ack"
    await c.close()


@pytest.mark.parametrize("stream", ["sys.devices", "sys.other"])
async def test_sys_streams_are_forbidden(server: Server, stream: str) -> None:
    (dev,) = users(server, 1)[0]
    c = await Client.connect(server, dev)
    pid = uuid4()
    nack = await c.publish(stream, {"event": "device_added"}, id=pid)
    assert (nack["type"], nack["id"], nack["code"]) == ("nack", pid, "forbidden")
    assert c.welcome["streams"] == {"sys.devices": 1}
    assert (await c.publish("notes", 1))["type"] == "ack"
    await c.close()
    # Nothing was stored on the sys. stream.
    assert [r[1] for r in stored(server, user_id=dev.user_id, stream=stream)] == (
        [1] if stream == "sys.devices" else [])


async def test_rate_limited_nack_with_retry_after(limited: Server) -> None:
    (dev,) = users(limited, 1)[0]
    c = await Client.connect(limited, dev)
    replies = [await c.publish("notes", i) for i in range(3)]
    assert [r["type"] for r in replies[:2]] == ["ack", "ack"]  # the burst
    nack = replies[2]
    assert (nack["type"], nack["code"]) == ("nack", "rate_limited")
    assert isinstance(nack["retry_after_ms"], int) and 0 < nack["retry_after_ms"] <= 1000
    await c.barrier()  # the session is still open
    await c.close()


@pytest.fixture(scope="module")
def slow(gateway_servers: MakeServer) -> Server:
    return gateway_servers(gateway_publish_rate_per_s=0.05, gateway_publish_burst=2)


async def test_the_rate_limit_is_per_device_and_survives_a_reconnect(slow: Server) -> None:
    """protocol.md §7: publish_rate_per_s is per device. Reconnecting must not give a
    device a full bucket again, and another device of the same user has its own."""
    dev, other = users(slow, 2)[0]
    c = await Client.connect(slow, dev)
    assert [(await c.publish("notes", i))["type"] for i in range(3)] == [
        "ack", "ack", "nack"]
    await c.close()
    c = await Client.connect(slow, dev)  # a new session of the same device
    nack = await c.publish("notes", 3)
    assert (nack["type"], nack["code"]) == ("nack", "rate_limited")
    assert nack["retry_after_ms"] > 1000  # one token takes 20 s at 0.05/s
    o = await Client.connect(slow, other)
    assert (await o.publish("notes", "mine"))["type"] == "ack"
    await c.close()
    await o.close()


async def test_unknown_type_is_a_non_fatal_error(server: Server) -> None:
    (dev,) = users(server, 1)[0]
    c = await Client.connect(server, dev)
    await c.send({"type": "subscribe", "stream": "notes"})
    err = await c.expect_type("error")
    assert err["code"] == "unknown_type" and "ref" in err
    assert (await c.publish("notes", 1))["type"] == "ack"
    await c.close()


async def test_ack_with_bad_fields_is_a_non_fatal_error(server: Server) -> None:
    (dev,) = users(server, 1)[0]
    c = await Client.connect(server, dev)
    await c.send({"type": "ack", "stream": "notes", "seq": -3})
    assert (await c.expect_type("error"))["code"] == "invalid"
    await c.barrier()
    await c.close()
