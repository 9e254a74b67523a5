"""Streams over HTTP: list, read pages of events, publish with the gateway's rules."""

from __future__ import annotations

import httpx
import pytest

from relaybox.protocol.encoding import uuid4, uuid7
from tests.api.helpers import Api, assert_problem
from tests.support import Gw


def _publish(c: httpx.Client, stream: str, **body: object) -> httpx.Response:
    return c.post(f"/streams/{stream}/events", json={"id": uuid7(), **body})


def test_publish_then_read_back(api: Api) -> None:
    dev = api.devices["alice"][0]
    with api.as_device(dev) as c:
        seqs = []
        for i in range(3):
            r = _publish(c, "notes", body={"n": i, "text": "héllo"}, key=f"k{i}")
            assert r.status_code == 201, r.text
            assert r.json()["stream"] == "notes" and r.json()["ts"].endswith("Z")
            seqs.append(r.json()["seq"])
        assert seqs == [1, 2, 3]
        page = c.get("/streams/notes/events", params={"after": 1, "limit": 1}).json()
        assert page["head_seq"] == 3 and page["floor_seq"] == 0
        (ev,) = page["events"]
        assert ev == {"type": "event", "stream": "notes", "seq": 2, "id": ev["id"],
                      "from": dev.device_id, "key": "k1", "ts": ev["ts"],
                      "body": {"n": 1, "text": "héllo"}}
        assert [e["seq"] for e in c.get("/streams/notes/events").json()["events"]] == [1, 2, 3]


def test_a_replayed_id_returns_the_original_seq(api: Api) -> None:
    with api.as_device(api.devices["alice"][0]) as c:
        first = c.post("/streams/replay/events", json={"id": (i := uuid4()), "body": 1})
        assert first.status_code == 201
        _publish(c, "replay", body=2)
        again = c.post("/streams/replay/events", json={"id": i, "body": "different"})
        assert again.status_code == 200 and again.json() == first.json()
        # Whatever stream the repeat names (protocol.md §3 Idempotent).
        elsewhere = c.post("/streams/other/events", json={"id": i, "body": 1})
        assert elsewhere.status_code == 200 and elsewhere.json() == first.json()


def test_a_conflict_is_409_with_head_seq(api: Api) -> None:
    with api.as_device(api.devices["alice"][1]) as c:
        assert _publish(c, "cas", body=1, key="doc").status_code == 201
        assert _publish(c, "cas", body=2, key="doc", base_seq=1).status_code == 201
        doc = assert_problem(_publish(c, "cas", body=3, key="doc", base_seq=1), 409, "conflict")
        assert doc["head_seq"] == 2 and doc["stream"] == "cas"
        assert _publish(c, "cas", body=3, key="other", base_seq=0).status_code == 201
        assert_problem(_publish(c, "cas", body=4, base_seq=2), 409)  # the stream head is 3


@pytest.mark.parametrize(("body", "status", "code"), [
    ({"id": "not-a-uuid", "body": 1}, 422, "invalid"),
    ({"id": "0192f1c3-0000-1000-8000-000000000001", "body": 1}, 422, "invalid"),  # v1
    ({"id": "ID", "body": 1, "key": "é" * 129}, 422, "invalid"),
    ({"body": 1}, 422, "invalid"),
    ({"id": "ID"}, 422, "invalid"),
    ({"id": "ID", "body": 1, "base_seq": -1}, 422, "invalid"),
    ({"id": "ID", "body": 1, "base_seq": True}, 422, "invalid"),
    ({"id": "ID", "body": "x" * 70000}, 413, "too_large"),
])
def test_publish_refusals(api: Api, body: dict[str, object], status: int, code: str) -> None:
    if body.get("id") == "ID":
        body = {**body, "id": uuid7()}
    with api.as_device(api.devices["alice"][0]) as c:
        assert_problem(c.post("/streams/refused/events", json=body), status, code)
        assert c.get("/streams/refused/events").json()["events"] == []


def test_a_key_of_256_utf8_bytes_is_accepted(api: Api) -> None:
    with api.as_device(api.devices["alice"][0]) as c:
        assert _publish(c, "keys", body=1, key="é" * 128).status_code == 201


def test_sys_streams_are_written_only_by_the_server(api: Api) -> None:
    with api.as_device(api.devices["alice"][0]) as c:
        assert_problem(_publish(c, "sys.devices", body=1), 403, "forbidden")
        assert_problem(_publish(c, "Bad Name", body=1), 404, "stream_unknown")
        assert_problem(c.get("/streams/Bad%20Name/events"), 404)


def test_malformed_publish_bodies(api: Api) -> None:
    with api.as_device(api.devices["alice"][0]) as c:
        assert_problem(c.post("/streams/x/events", content=b"{nope"), 400, "malformed_json")
        assert_problem(c.post("/streams/x/events", json=[1, 2]), 422)


@pytest.mark.parametrize("query", ["limit=0", "limit=1001", "after=-1", "after=x",
                                   "after=99999999999999999999999", "after=",
                                   "after=1&after=2", "limit=%EF%BC%91"])
def test_bad_page_parameters_are_422(api: Api, query: str) -> None:
    with api.as_device(api.devices["alice"][0]) as c:
        assert_problem(c.get(f"/streams/notes/events?{query}"), 422)


def test_a_limit_of_1000_is_allowed(api: Api) -> None:
    with api.as_device(api.devices["alice"][0]) as c:
        assert c.get("/streams/notes/events?limit=1000").status_code == 200


async def test_streams_list_carries_the_callers_cursor(api: Api) -> None:
    pub, sub = api.devices["bob"][0], api.devices["bob"][1]
    with api.as_device(pub) as c:
        for i in range(3):
            assert _publish(c, "cursor", body=i).status_code == 201
    gw = await Gw.connect(api.server, sub)
    try:
        seen: list[int] = []
        while len(seen) < 3:
            ev = await gw.recv_type("event")
            if ev["stream"] == "cursor":
                seen.append(ev["seq"])
        await gw.send({"type": "ack", "stream": "cursor", "seq": 2})
        await gw.send({"type": "ping", "ref": 1})
        await gw.recv_type("pong")
    finally:
        await gw.close()  # a normal close makes the acks durable (protocol.md §3)
    with api.as_device(sub) as c:
        rows = {s["stream"]: s for s in c.get("/streams").json()}
    assert rows["cursor"] == {"stream": "cursor", "head_seq": 3, "floor_seq": 0,
                              "acked_seq": 2}
    with api.as_device(pub) as c:
        rows = {s["stream"]: s for s in c.get("/streams").json()}
    assert rows["cursor"]["acked_seq"] == 0


async def test_an_http_publish_reaches_the_users_other_devices(api: Api) -> None:
    gw = await Gw.connect(api.server, api.devices["alice"][2])
    try:
        await gw.recv_type("synced")
        with api.as_device(api.devices["alice"][0]) as c:
            r = _publish(c, "live", body={"hi": True})
        ev = await gw.recv_type("event")
        while ev["stream"] != "live":
            ev = await gw.recv_type("event")
        assert ev["seq"] == r.json()["seq"] and ev["body"] == {"hi": True}
    finally:
        await gw.close()
