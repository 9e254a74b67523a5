"""Pairing: codes made by a device or the admin, lookup, single-use atomic claims."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from relaybox.protocol.encoding import b64url_encode
from tests.api.helpers import Api, assert_problem, new_public_key
from tests.support import Gw


def _admin_code(api: Api, user: str, **body: object) -> str:
    with api.admin() as admin:
        r = admin.post(f"/admin/users/{user}/pairing", json=body or None)
    assert r.status_code == 201, r.text
    code = r.json()["code"]
    assert len(code) == 9 and code[4] == "-"
    return str(code)


def _claim(api: Api, code: str, key: str | None = None, name: str = "phone") -> httpx.Response:
    return httpx.post(api.url + "/pairing/claim",
                      json={"code": code, "public_key": key or new_public_key(), "name": name})


def test_a_device_makes_a_code_that_names_it(api: Api) -> None:
    dev = api.devices["alice"][0]
    with api.as_device(dev) as c:
        r = c.post("/pairing/store", json={"payload": "hello from the laptop", "ttl_s": 120})
    assert r.status_code == 201, r.text
    code = r.json()["code"]
    info = httpx.get(f"{api.url}/pairing/lookup/{code}").json()
    assert info["user_name"] == "alice" and info["payload"] == "hello from the laptop"
    assert info["inviter"] == {"device_id": dev.device_id, "name": "alice-dev0"}
    assert info["server_id"] == api.server_id


def test_store_with_no_body_uses_the_defaults(api: Api) -> None:
    with api.as_device(api.devices["alice"][0]) as c:
        r = c.post("/pairing/store")
    assert r.status_code == 201, r.text
    info = httpx.get(f"{api.url}/pairing/lookup/{r.json()['code']}").json()
    assert info["payload"] is None and info["expires_at"] == r.json()["expires_at"]


@pytest.mark.parametrize("ttl", [59, 3601])
def test_store_checks_the_lifetime(api: Api, ttl: int) -> None:
    with api.as_device(api.devices["alice"][0]) as c:
        assert_problem(c.post("/pairing/store", json={"ttl_s": ttl}), 422)


def test_a_code_reads_in_any_case_with_or_without_hyphen(api: Api) -> None:
    code = _admin_code(api, "bob")
    plain = code.replace("-", "")
    # Crockford aliases: 1 may be typed I or L, 0 may be typed O.
    typed = plain.lower().replace("1", "l").replace("0", "o")
    for form in (code, plain, code.lower(), typed):
        r = httpx.get(f"{api.url}/pairing/lookup/{form}")
        assert r.status_code == 200, (form, r.text)
        assert r.json()["user_name"] == "bob" and r.json()["inviter"] is None


def test_claim_adds_a_device_once(api: Api) -> None:
    code = _admin_code(api, "bob")
    key = new_public_key()
    r = _claim(api, code.lower().replace("-", ""), key, "new phone")
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["server_id"] == api.server_id
    assert body["user_id"] == api.devices["bob"][0].user_id
    with api.as_device(api.devices["bob"][0]) as c:
        names = {d["device_id"]: d["name"] for d in c.get("/devices").json()}
    assert names[body["device_id"]] == "new phone"
    assert_problem(_claim(api, code), 404, "pairing_code_unknown")
    assert_problem(httpx.get(f"{api.url}/pairing/lookup/{code}"), 404, "pairing_code_unknown")


def test_unknown_and_malformed_codes_are_404(api: Api) -> None:
    for code in ("ZZZZ-ZZZZ", "UUUU-UUUU", "abc"):
        assert_problem(httpx.get(f"{api.url}/pairing/lookup/{code}"), 404,
                       "pairing_code_unknown")
    assert_problem(_claim(api, "ZZZZ-ZZZZ"), 404, "pairing_code_unknown")


def test_an_expired_code_is_404(api: Api) -> None:
    from relaybox.services.pairing import create_pairing_code
    from relaybox.store.db import open_database

    db = open_database(api.settings())
    try:  # made two hours ago with the longest lifetime
        code, _ = create_pairing_code(db, "bob", ttl_s=3600, clock=lambda: 1_000_000)
    finally:
        db.close()
    assert_problem(httpx.get(f"{api.url}/pairing/lookup/{code}"), 404)
    assert_problem(_claim(api, code), 404)


def test_a_registered_key_is_409_and_leaves_the_code_usable(api: Api) -> None:
    code = _admin_code(api, "bob")
    taken = b64url_encode(api.devices["alice"][0].public)
    assert_problem(_claim(api, code, taken), 409, "public_key_registered")
    assert _claim(api, code).status_code == 201


def test_an_invalid_key_is_422_and_leaves_the_code_usable(api: Api) -> None:
    code = _admin_code(api, "bob")
    # Well-formed base64url of 32 bytes, but a small-order point: not a usable key.
    assert_problem(_claim(api, code, b64url_encode(bytes(32))), 422, "invalid_public_key")
    for body in ({"code": code, "name": "x"}, {"code": code, "public_key": new_public_key(),
                                              "name": ""}):
        assert_problem(httpx.post(api.url + "/pairing/claim", json=body), 422)
    assert _claim(api, code).status_code == 201


async def test_concurrent_claims_of_one_code_have_one_winner(api: Api) -> None:
    code = _admin_code(api, "alice")
    async with httpx.AsyncClient(base_url=api.url, timeout=30) as c:
        rs = await asyncio.gather(*[
            c.post("/pairing/claim", json={"code": code, "public_key": new_public_key(),
                                           "name": f"racer{i}"}) for i in range(8)])
    statuses = sorted(r.status_code for r in rs)
    assert statuses == [201] + [404] * 7, [r.text for r in rs]
    with api.as_device(api.devices["alice"][0]) as c:
        names = [d["name"] for d in c.get("/devices").json()]
    assert sum(n.startswith("racer") for n in names) == 1


async def test_a_claim_is_announced_on_sys_devices(api: Api) -> None:
    gw = await Gw.connect(api.server, api.devices["alice"][1])
    try:
        assert gw.welcome["type"] == "welcome"
        await gw.recv_type("synced")
        r = _claim(api, _admin_code(api, "alice"), name="announced")
        assert r.status_code == 201
        ev = await gw.recv_type("event")
        while ev["body"].get("name") != "announced":  # earlier notices of this module
            ev = await gw.recv_type("event")
        assert ev["stream"] == "sys.devices" and ev["from"] is None
        assert ev["body"] == {"event": "device_added", "device_id": r.json()["device_id"],
                              "name": "announced"}
    finally:
        await gw.close()


def test_admin_pairing_for_an_unknown_user_is_404(api: Api) -> None:
    with api.admin() as admin:
        assert_problem(admin.post("/admin/users/nobody/pairing"), 404, "user_unknown")


def test_codes_of_a_revoked_device_die_with_it(api: Api) -> None:
    dev = api.devices["alice"][2]
    with api.client(api.token_pair(dev)["access_token"]) as c:
        code = c.post("/pairing/store").json()["code"]
    assert httpx.get(f"{api.url}/pairing/lookup/{code}").status_code == 200
    with api.admin() as admin:
        assert admin.post("/admin/revoke-device", json={"device_id": dev.device_id}
                          ).status_code == 200
        try:
            assert_problem(httpx.get(f"{api.url}/pairing/lookup/{code}"), 404)
            assert_problem(_claim(api, code), 404)
        finally:
            admin.post("/admin/unrevoke-device", json={"device_id": dev.device_id})
