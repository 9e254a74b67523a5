"""Per-user quotas through a real server: one device cannot create streams, keys or bytes
without bound (docs/protocol.md §3 Quotas).

Without them, one device once created 11,600 streams in a minute: the `welcome` frame,
which lists every stream of the user, grew to 824 KB and each reconnect of each of the
user's devices cost seconds of server CPU.
"""

from __future__ import annotations

import json

import httpx
import pytest

from relaybox.protocol.encoding import uuid4
from tests.gateway.helpers import (
    Client,
    connect_synced,
    database,
    device_token,
    users,
)
from tests.plugin import MakeServer
from tests.support import Server

pytestmark = pytest.mark.asyncio(loop_scope="function")
STREAMS, KEYS, BYTES = 4, 3, 200


@pytest.fixture(scope="module")
def server(module_servers: MakeServer) -> Server:
    return module_servers(gateway_publish_rate_per_s=0, quota_streams_per_user=STREAMS,
                          quota_keys_per_stream=KEYS, quota_stored_bytes_per_user=BYTES)


async def publish_all(c: Client, frames: list[dict[str, object]]) -> list[dict[str, object]]:
    """Send every publish at once (they share batches), then collect the replies."""
    for f in frames:
        await c.send({"type": "publish", **f})
    return [await c.reply_to(str(f["id"])) for f in frames]


async def test_streams_quota_bounds_a_users_streams_and_its_welcome(server: Server) -> None:
    a, b = users(server, 2)[0]
    ca = await connect_synced(server, a)
    frames: list[dict[str, object]] = [{"id": uuid4(), "stream": f"s{i:03d}", "body": i}
                                       for i in range(60)]
    replies = await publish_all(ca, frames)
    assert [r["type"] for r in replies[:STREAMS]] == ["ack"] * STREAMS
    for r in replies[STREAMS:]:
        assert (r["type"], r["code"], r["quota"]) == ("nack", "forbidden", "streams"), r
        assert r["message"]
    # The streams it has take any number of events; the session goes on.
    assert (await ca.publish("s000", "more"))["type"] == "ack"
    # The welcome lists the user's streams: at most the quota (and sys.devices).
    cb = await Client.connect(server, b)
    listed = cb.welcome["streams"]
    assert set(listed) - {"sys.devices"} == {f"s{i:03d}" for i in range(STREAMS)}
    assert len(json.dumps(cb.welcome)) < 2000
    # Another user has a quota of its own.
    [[other]] = users(server, 1)
    co = await connect_synced(server, other)
    assert (await co.publish("s059", 1))["type"] == "ack"
    for c in (ca, cb, co):
        await c.close()


async def test_keys_quota_bounds_distinct_keys_in_a_stream(server: Server) -> None:
    [[a]] = users(server, 1)
    ca = await connect_synced(server, a)
    frames: list[dict[str, object]] = [{"id": uuid4(), "stream": "notes", "body": 1,
                                        "key": f"k{i}"} for i in range(6)]
    replies = await publish_all(ca, frames)
    assert [r["type"] for r in replies] == ["ack"] * KEYS + ["nack"] * (6 - KEYS)
    assert {r.get("quota") for r in replies[KEYS:]} == {"keys"}
    # A key already there can be written again, and compare-and-set on it works.
    again = await ca.publish("notes", 2, key="k1", base_seq=2)
    assert again["type"] == "ack", again
    assert (await ca.publish("notes", 3))["type"] == "ack"  # no key
    await ca.close()


async def test_bytes_quota_and_retention_gives_bytes_back(server: Server) -> None:
    from relaybox.config import load_settings
    from relaybox.services import retention

    [[a]] = users(server, 1)
    ca = await connect_synced(server, a)
    body = "x" * 78  # 80 bytes of JSON text
    assert (await ca.publish("big", body))["type"] == "ack"
    assert (await ca.publish("big", body))["type"] == "ack"
    over = await ca.publish("big", body)
    assert (over["type"], over["code"], over["quota"]) == ("nack", "forbidden", "bytes")
    assert (await ca.publish("big", "small"))["type"] == "ack"  # 7 bytes still fit
    # Retention removes old events: their bytes count no more.
    settings = load_settings(server.data_dir, env={
        "RELAYBOX_RETENTION_MAX_EVENTS_PER_STREAM": "1"})
    with database(server) as db:
        report = retention.prune(db, settings, 0, pause_s=0)
    assert report.events >= 2
    assert (await ca.publish("big", body))["type"] == "ack"
    await ca.close()


async def test_rest_publish_over_a_quota_is_403(server: Server) -> None:
    [[a]] = users(server, 1)
    token = device_token(server, a)
    async with httpx.AsyncClient(base_url=server.url, timeout=10,
                                 headers={"Authorization": f"Bearer {token}"}) as http:
        for i in range(STREAMS):
            r = await http.post(f"/api/v1/streams/r{i}/events", json={"id": uuid4(), "body": i})
            assert r.status_code == 201, r.text
        r = await http.post("/api/v1/streams/one-more/events", json={"id": uuid4(), "body": 1})
    assert r.status_code == 403, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    problem = r.json()
    assert (problem["code"], problem["quota"]) == ("quota_exceeded", "streams")


async def test_sys_streams_written_by_the_server_are_exempt(server: Server) -> None:
    from relaybox.services.devices import add_device
    from relaybox.store.models import User

    a, b = users(server, 2)[0]
    ca = await connect_synced(server, a)
    frames: list[dict[str, object]] = [{"id": uuid4(), "stream": f"s{i}", "body": "y" * 40}
                                       for i in range(STREAMS)]
    assert [r["type"] for r in await publish_all(ca, frames)] == ["ack"] * STREAMS
    # At its streams quota and near its bytes quota, the user still gets the server's
    # notice of a new device (sys.devices), in full.
    with database(server) as db:
        add_device(db, User.get_by_id(a.user_id), "extra-device", bytes(range(32)))
    cb = await Client.connect(server, b)
    notices = await cb.events(3, "sys.devices")
    assert notices[-1]["body"]["event"] == "device_added"
    await ca.close()
    await cb.close()


async def test_quotas_hold_with_the_writer_thread_too(module_servers: MakeServer) -> None:
    """storage.writer_process = false commits in a thread of the server process: the same
    quotas apply there."""
    srv = module_servers(gateway_publish_rate_per_s=0, writer_process="false",
                         quota_streams_per_user=2)
    [[a]] = users(srv, 1)
    ca = await connect_synced(srv, a)
    replies = await publish_all(ca, [{"id": uuid4(), "stream": f"t{i}", "body": i}
                                     for i in range(5)])
    assert [r["type"] for r in replies] == ["ack", "ack", "nack", "nack", "nack"]
    assert {r.get("quota") for r in replies[2:]} == {"streams"}
    await ca.close()
