"""Tokens: signed token requests, forged and revoked access tokens, refresh rotation."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import httpx
import jwt
import pytest

from relaybox.protocol.encoding import b64url_encode, random_nonce
from tests.api.helpers import Api, assert_problem, signed_request


def _keys(api: Api) -> Any:
    """The server's JWT keys, read from its database as an attacker with the file would."""
    from relaybox.services import identity
    from relaybox.store.db import open_database

    db = open_database(api.settings())
    try:
        return identity.load_secrets()
    finally:
        db.close()


def _claims(api: Api, dev: Any, **over: Any) -> dict[str, Any]:
    now = int(time.time())
    claims = {"iss": "relaybox", "aud": f"relaybox:{api.server_id}", "sub": dev.device_id,
              "uid": dev.user_id, "iat": now, "exp": now + 600, "jti": "x"}
    claims.update(over)
    return claims


def _verify(api: Api, token: str) -> httpx.Response:
    return httpx.get(api.url + "/auth/verify", headers={"Authorization": f"Bearer {token}"})


def test_token_request_gives_a_working_pair(api: Api) -> None:
    dev = api.devices["alice"][0]
    pair = api.token_pair(dev)
    assert pair["token_type"] == "Bearer" and pair["expires_in"] == 900
    assert pair["refresh_token"].startswith("rbr_")
    header = jwt.get_unverified_header(pair["access_token"])
    assert header["alg"] == "HS256" and header["kid"] == _keys(api).jwt_kid
    r = _verify(api, pair["access_token"])
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["device_id"] == dev.device_id and body["user_id"] == dev.user_id
    assert body["expires_at"].endswith("Z")


def test_a_replayed_token_request_is_refused(api: Api) -> None:
    req = signed_request(api.server_id, api.devices["alice"][0])
    assert httpx.post(api.url + "/auth/token", json=req).status_code == 200
    assert_problem(httpx.post(api.url + "/auth/token", json=req), 401, "replayed_request")


@pytest.mark.parametrize("skew", [-400, 400])
def test_a_stale_token_request_is_refused(api: Api, skew: int) -> None:
    req = signed_request(api.server_id, api.devices["alice"][0],
                         timestamp=int(time.time()) + skew)
    r = httpx.post(api.url + "/auth/token", json=req)
    assert_problem(r, 401, "stale_request")
    assert r.headers["www-authenticate"].startswith("Bearer")


def test_a_request_within_the_skew_is_accepted(api: Api) -> None:
    req = signed_request(api.server_id, api.devices["alice"][0],
                         timestamp=int(time.time()) - 100)
    assert httpx.post(api.url + "/auth/token", json=req).status_code == 200


def test_a_bad_signature_or_unknown_device_is_refused(api: Api) -> None:
    dev, other = api.devices["alice"][0], api.devices["alice"][1]
    req = signed_request(api.server_id, other)
    req["device_id"] = dev.device_id  # signed by another key
    assert_problem(httpx.post(api.url + "/auth/token", json=req), 401, "auth_failed")
    wrong_server = signed_request("0192f1b0-aaaa-7bbb-8ccc-dddddddddddd", dev)
    assert_problem(httpx.post(api.url + "/auth/token", json=wrong_server), 401, "auth_failed")
    unknown = signed_request(api.server_id, dev)
    unknown["device_id"] = "0192f1b0-aaaa-7bbb-8ccc-000000000000"
    assert_problem(httpx.post(api.url + "/auth/token", json=unknown), 401, "auth_failed")


def test_a_malformed_token_request_is_422(api: Api) -> None:
    req = signed_request(api.server_id, api.devices["alice"][0])
    for bad in ({**req, "timestamp": str(req["timestamp"])}, {**req, "nonce": "short"},
                {k: v for k, v in req.items() if k != "signature"}):
        assert_problem(httpx.post(api.url + "/auth/token", json=bad), 422, "invalid")


def _forged(api: Api) -> dict[str, str]:
    dev = api.devices["alice"][0]
    keys = _keys(api)
    secret = bytes.fromhex(keys.jwt_keys[keys.jwt_kid])
    kid = {"kid": keys.jwt_kid}
    good = jwt.encode(_claims(api, dev), secret, algorithm="HS256", headers=kid)
    head, body, sig = good.split(".")
    tampered_body = base64.urlsafe_b64encode(json.dumps(
        _claims(api, dev, sub=api.devices["alice"][1].device_id)).encode()).rstrip(b"=")
    none_header = b64url_encode(json.dumps({"alg": "none", "typ": "JWT", **kid}).encode())
    rs_header = b64url_encode(json.dumps({"alg": "RS256", "typ": "JWT", **kid}).encode())
    return {
        "alg none": f"{none_header}.{body}.",
        "wrong key": jwt.encode(_claims(api, dev), b"k" * 32, algorithm="HS256", headers=kid),
        "unknown kid": jwt.encode(_claims(api, dev), secret, algorithm="HS256",
                                  headers={"kid": "nope"}),
        "HS512 with the server key": jwt.encode(_claims(api, dev), secret, algorithm="HS512",
                                                headers=kid),
        # No RSA key exists server side; the header alone must be refused.
        "RS256 header": f"{rs_header}.{body}.{b64url_encode(bytes(256))}",
        "HS256 signature under an RS256 header": f"{rs_header}.{body}.{sig}",
        "HS256 keyed with the device public key": jwt.encode(
            _claims(api, dev), dev.public, algorithm="HS256", headers=kid),
        "expired": jwt.encode(_claims(api, dev, iat=int(time.time()) - 2000,
                                      exp=int(time.time()) - 1000),
                              secret, algorithm="HS256", headers=kid),
        "tampered payload": f"{head}.{tampered_body.decode()}.{sig}",
        "other audience": jwt.encode(_claims(api, dev, aud="relaybox:other"), secret,
                                     algorithm="HS256", headers=kid),
        "user mismatch": jwt.encode(_claims(api, dev, uid=api.devices["bob"][0].user_id),
                                    secret, algorithm="HS256", headers=kid),
        "garbage": "not-a-jwt",
    }


@pytest.mark.filterwarnings("ignore:The HMAC key")
def test_forged_tokens_are_401(api: Api) -> None:
    keys = _keys(api)
    dev = api.devices["alice"][0]
    control = jwt.encode(_claims(api, dev), bytes.fromhex(keys.jwt_keys[keys.jwt_kid]),
                         algorithm="HS256", headers={"kid": keys.jwt_kid})
    assert _verify(api, control).status_code == 200  # the forgeries differ in one thing
    for name, token in _forged(api).items():
        r = _verify(api, token)
        assert r.status_code == 401, name
        assert_problem(r, 401)
        assert r.headers["www-authenticate"].startswith("Bearer"), name


def test_no_token_is_401(api: Api) -> None:
    r = httpx.get(api.url + "/auth/verify")
    assert_problem(r, 401, "missing_token")
    assert "www-authenticate" in r.headers
    r = httpx.get(api.url + "/auth/verify", headers={"Authorization": f"Basic {api.admin_token}"})
    assert_problem(r, 401, "missing_token")


def test_refresh_rotates_and_reuse_revokes_the_family(api: Api) -> None:
    dev = api.devices["bob"][0]
    first = api.token_pair(dev)
    r = httpx.post(api.url + "/auth/refresh", json={"refresh_token": first["refresh_token"]})
    assert r.status_code == 200, r.text
    second = r.json()
    assert second["refresh_token"] != first["refresh_token"]
    assert _verify(api, second["access_token"]).status_code == 200
    # The first token again: theft is assumed and the whole family ends...
    r = httpx.post(api.url + "/auth/refresh", json={"refresh_token": first["refresh_token"]})
    assert_problem(r, 401, "refresh_token_reused")
    # ...including the newest refresh token, which was never used.
    r = httpx.post(api.url + "/auth/refresh", json={"refresh_token": second["refresh_token"]})
    assert_problem(r, 401, "invalid_refresh_token")
    # Another family of the same device is not affected.
    other = api.token_pair(dev)
    r = httpx.post(api.url + "/auth/refresh", json={"refresh_token": other["refresh_token"]})
    assert r.status_code == 200


def test_an_unknown_refresh_token_is_401(api: Api) -> None:
    r = httpx.post(api.url + "/auth/refresh", json={"refresh_token": "rbr_nothing"})
    assert_problem(r, 401, "invalid_refresh_token")


def test_a_revoked_device_loses_its_tokens_at_once(api: Api) -> None:
    dev = api.devices["alice"][2]
    pair = api.token_pair(dev)
    assert _verify(api, pair["access_token"]).status_code == 200
    with api.admin() as admin:
        assert admin.post("/admin/revoke-device", json={"device_id": dev.device_id}
                          ).status_code == 200
    assert_problem(_verify(api, pair["access_token"]), 401, "device_revoked")
    r = httpx.post(api.url + "/auth/refresh", json={"refresh_token": pair["refresh_token"]})
    assert_problem(r, 401)
    r = httpx.post(api.url + "/auth/token", json=signed_request(api.server_id, dev))
    assert_problem(r, 401, "device_revoked")
    with api.admin() as admin:
        assert admin.post("/admin/unrevoke-device", json={"device_id": dev.device_id}
                          ).status_code == 200
    # Unrevoking allows new tokens; the old access token works again only if unexpired.
    assert api.token_pair(dev)["access_token"]


def test_a_rotated_out_key_stops_verifying(api: Api) -> None:
    from relaybox.services import identity
    from relaybox.store.db import open_database

    dev = api.devices["bob"][1]
    old = api.token_pair(dev)["access_token"]
    db = open_database(api.settings())
    try:
        identity.rotate_jwt_key(keep_previous=True)
        assert _verify(api, old).status_code == 200  # the previous key still verifies
        new = api.token_pair(dev)["access_token"]
        assert jwt.get_unverified_header(new)["kid"] != jwt.get_unverified_header(old)["kid"]
        identity.rotate_jwt_key(keep_previous=False)
    finally:
        db.close()
    assert_problem(_verify(api, old), 401, "invalid_token")
    assert_problem(_verify(api, new), 401, "invalid_token")
    assert _verify(api, api.token_pair(dev)["access_token"]).status_code == 200


def test_nonce_must_be_base64url(api: Api) -> None:
    req = signed_request(api.server_id, api.devices["bob"][0], nonce=random_nonce(8))
    assert_problem(httpx.post(api.url + "/auth/token", json=req), 422)
