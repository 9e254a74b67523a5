"""User isolation: a device sees and changes only its own user's data (404, never 403)."""

from __future__ import annotations

import httpx
import pytest

from relaybox.protocol.encoding import uuid7
from tests.api.helpers import Api, assert_problem


@pytest.fixture(scope="module")
def alice_data(api: Api) -> dict[str, str]:
    """Objects of alice's: a device, a stream with events, a pairing code."""
    with api.as_device(api.devices["alice"][0]) as c:
        for i in range(2):
            r = c.post("/streams/diary/events", json={"id": uuid7(), "body": f"secret {i}"})
            assert r.status_code == 201
        code = c.post("/pairing/store", json={"payload": "alice only"}).json()["code"]
    return {"device": api.devices["alice"][1].device_id, "stream": "diary", "code": code}


def test_devices_of_another_user_are_invisible(api: Api, alice_data: dict[str, str]) -> None:
    with api.as_device(api.devices["bob"][0]) as bob:
        ids = {d["device_id"] for d in bob.get("/devices").json()}
        assert ids == {d.device_id for d in api.devices["bob"]}
        r = bob.patch(f"/devices/{alice_data['device']}", json={"name": "pwned"})
        doc = assert_problem(r, 404, "device_unknown")
        # Same answer as for a device that does not exist: no existence oracle.
        r2 = bob.patch(f"/devices/{uuid7()}", json={"name": "pwned"})
        assert assert_problem(r2, 404, "device_unknown")["title"] == doc["title"]
    with api.as_device(api.devices["alice"][0]) as alice:
        names = {d["device_id"]: d["name"] for d in alice.get("/devices").json()}
    assert names[alice_data["device"]] == "alice-dev1"


def test_streams_of_another_user_are_invisible(api: Api, alice_data: dict[str, str]) -> None:
    with api.as_device(api.devices["bob"][0]) as bob:
        assert "diary" not in {s["stream"] for s in bob.get("/streams").json()}
        page = bob.get(f"/streams/{alice_data['stream']}/events").json()
        assert page == {"events": [], "head_seq": 0, "floor_seq": 0}
        # Bob's own "diary" is a different stream: his seq starts at 1.
        r = bob.post("/streams/diary/events", json={"id": uuid7(), "body": "bob's"})
        assert r.status_code == 201 and r.json()["seq"] == 1
    with api.as_device(api.devices["alice"][0]) as alice:
        bodies = [e["body"] for e in alice.get("/streams/diary/events").json()["events"]]
    assert bodies == ["secret 0", "secret 1"]


def test_an_id_used_by_another_user_is_not_a_replay(api: Api) -> None:
    ident = uuid7()
    with api.as_device(api.devices["alice"][0]) as alice:
        mine = alice.post("/streams/ids/events", json={"id": ident, "body": "alice"})
    with api.as_device(api.devices["bob"][0]) as bob:
        theirs = bob.post("/streams/ids/events", json={"id": ident, "body": "bob"})
    assert mine.status_code == 201 and theirs.status_code == 201


def test_every_device_route_with_another_users_object(api: Api,
                                                      alice_data: dict[str, str]) -> None:
    """The matrix: each device route, given alice's object, answers bob 404 or empty."""
    with api.as_device(api.devices["bob"][1]) as bob:
        cases = {
            "GET /devices": bob.get("/devices"),
            "PATCH /devices/{alice's}": bob.patch(f"/devices/{alice_data['device']}",
                                                  json={"name": "x"}),
            "GET /streams": bob.get("/streams"),
            "GET /streams/{alice's}/events": bob.get(f"/streams/{alice_data['stream']}/events"),
            "GET /auth/verify": bob.get("/auth/verify"),
            "POST /pairing/store": bob.post("/pairing/store", json={}),
        }
    for name, r in cases.items():
        assert r.status_code in (200, 201, 404), (name, r.text)
        assert "alice" not in r.text and "secret" not in r.text, (name, r.text)
        if r.status_code != 404:  # a 404 may echo the id it was asked for, nothing more
            assert alice_data["device"] not in r.text, name
    assert cases["PATCH /devices/{alice's}"].status_code == 404
    # A code bob makes names bob, whatever he knows of alice.
    code = cases["POST /pairing/store"].json()["code"]
    assert httpx.get(f"{api.url}/pairing/lookup/{code}").json()["user_name"] == "bob"
