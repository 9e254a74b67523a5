"""Admin routes: the admin guard, users, revocation reaching tokens and live sessions."""

from __future__ import annotations

import httpx
import pytest

from tests.api.helpers import Api, assert_problem
from tests.support import Gw

ADMIN_ROUTES = [
    ("GET", "/admin/users", None),
    ("POST", "/admin/users", {"name": "mallory"}),
    ("POST", "/admin/users/alice/pairing", {}),
    ("POST", "/admin/revoke-device", {"device_id": "0192f1b0-aaaa-7bbb-8ccc-dddddddddddd"}),
    ("POST", "/admin/unrevoke-device", {"device_id": "0192f1b0-aaaa-7bbb-8ccc-dddddddddddd"}),
    ("GET", "/admin/revoked-devices", None),
]


@pytest.mark.parametrize(("method", "path", "body"), ADMIN_ROUTES)
def test_the_admin_guard(api: Api, method: str, path: str, body: object) -> None:
    for headers in ({}, {"Authorization": "Bearer rbadm_wrong"},
                    {"Authorization": "Bearer not-even-a-token"}):
        r = httpx.request(method, api.url + path, json=body, headers=headers)
        assert_problem(r, 401)
        assert r.headers["www-authenticate"].startswith("Bearer")
    device = {"Authorization": f"Bearer {api.token(api.devices['alice'][0])}"}
    r = httpx.request(method, api.url + path, json=body, headers=device)
    assert_problem(r, 403, "admin_only")
    with api.admin() as admin:
        assert admin.request(method, path, json=body).status_code not in (401, 403)


def test_users(api: Api) -> None:
    with api.admin() as admin:
        r = admin.post("/admin/users", json={"name": "carol"})
        assert r.status_code == 201, r.text
        assert r.json()["name"] == "carol" and r.json()["created_at"].endswith("Z")
        names = [u["name"] for u in admin.get("/admin/users").json()]
        assert {"alice", "bob", "carol"} <= set(names)
        assert_problem(admin.post("/admin/users", json={"name": "carol"}), 409, "user_exists")
        assert_problem(admin.post("/admin/users", json={"name": "bad name!"}), 422)
        assert_problem(admin.post("/admin/users", json={}), 422)
        code = admin.post(f"/admin/users/{r.json()['user_id']}/pairing").json()["code"]
    assert httpx.get(f"{api.url}/pairing/lookup/{code}").json()["user_name"] == "carol"


async def test_revocation_ends_sessions_and_tokens(api: Api) -> None:
    dev = api.devices["bob"][1]
    token = api.token_pair(dev)["access_token"]
    gw = await Gw.connect(api.server, dev)
    assert gw.welcome["type"] == "welcome"
    with api.admin() as admin:
        r = admin.post("/admin/revoke-device", json={"device_id": dev.device_id,
                                                     "reason": "lost"})
        assert r.status_code == 200, r.text
        assert r.json()["reason"] == "lost" and r.json()["revoked_at"]
        assert await gw.closed_code() == 4403
        again = admin.post("/admin/revoke-device", json={"device_id": dev.device_id})
        assert again.status_code == 200 and again.json() == r.json()  # idempotent
        listed = {d["device_id"]: d for d in admin.get("/admin/revoked-devices").json()}
        assert listed[dev.device_id]["reason"] == "lost"
        assert listed[dev.device_id]["user_id"] == dev.user_id
        assert_problem(httpx.get(api.url + "/devices", headers={
            "Authorization": f"Bearer {token}"}), 401, "device_revoked")
        r = admin.post("/admin/unrevoke-device", json={"device_id": dev.device_id})
        assert r.status_code == 200 and r.json()["revoked_at"] is None
        assert admin.post("/admin/unrevoke-device", json={"device_id": dev.device_id}
                          ).status_code == 200
        assert dev.device_id not in {d["device_id"] for d in
                                     admin.get("/admin/revoked-devices").json()}
    # Issued before the revocation: it stays invalid after the unrevoke (protocol.md §5).
    assert_problem(httpx.get(api.url + "/devices", headers={
        "Authorization": f"Bearer {token}"}), 401, "invalid_token")


def test_revoking_an_unknown_device(api: Api) -> None:
    with api.admin() as admin:
        r = admin.post("/admin/revoke-device",
                       json={"device_id": "0192f1b0-aaaa-7bbb-8ccc-dddddddddddd"})
        assert_problem(r, 404, "device_unknown")
        assert_problem(admin.post("/admin/revoke-device", json={"device_id": "x"}), 422)
