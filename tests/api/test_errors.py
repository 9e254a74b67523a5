"""problem+json for every error (router 404/405, malformed JSON), request ids, access log."""

from __future__ import annotations

import re

import httpx

from tests.api.helpers import Api, assert_problem


def test_unknown_path_is_a_problem(api: Api) -> None:
    r = httpx.get(api.url + "/no/such/route")
    assert_problem(r, 404, "not_found")


def test_wrong_method_is_405_with_allow(api: Api) -> None:
    r = httpx.delete(api.url + "/devices")
    assert_problem(r, 405, "method_not_allowed")
    assert "GET" in r.headers["allow"]


def test_malformed_json_is_400(api: Api) -> None:
    for raw in (b"{", b"", b"\xff\xfe", b'{"refresh_token": "\\ud800"}'):
        r = httpx.post(api.url + "/auth/refresh", content=raw,
                       headers={"Content-Type": "application/json"})
        assert_problem(r, 400, "malformed_json")


def test_wrong_shapes_are_422_naming_the_field(api: Api) -> None:
    r = httpx.post(api.url + "/auth/refresh", json={"refresh_token": 5})
    doc = assert_problem(r, 422, "invalid")
    assert doc["errors"][0]["field"] == "refresh_token"
    assert_problem(httpx.post(api.url + "/auth/refresh", json=["x"]), 422)


def test_a_sane_request_id_is_echoed_everywhere(api: Api) -> None:
    rid = "client-req.42:a_b"
    for method, path in (("GET", "/status"), ("GET", "/nope"), ("DELETE", "/devices"),
                         ("GET", "/devices"), ("POST", "/auth/refresh")):
        r = httpx.request(method, api.url + path, headers={"X-Request-ID": rid}, content=b"{")
        assert r.headers["x-request-id"] == rid, (method, path)
        if r.status_code >= 400:
            assert r.json()["request_id"] == rid


def test_an_insane_request_id_is_replaced(api: Api) -> None:
    r = httpx.get(api.url + "/nope", headers={"X-Request-ID": "bad id with spaces"})
    rid = r.headers["x-request-id"]
    assert rid != "bad id with spaces" and re.fullmatch(r"[0-9a-f-]{36}", rid)
    assert r.json()["request_id"] == rid
    r2 = httpx.get(api.url + "/status")
    assert r2.headers["x-request-id"] not in ("", rid)


def test_the_access_log_carries_the_request_id(api: Api) -> None:
    rid = "access-log-check-1"
    httpx.get(api.url + "/status", headers={"X-Request-ID": rid})
    httpx.get(api.url + "/pairing/lookup/ABCD-EFGH", headers={"X-Request-ID": rid + "b"})
    text = api.server.log()
    assert f"GET /api/v1/status 200 request_id={rid}" in text
    # The route pattern is logged, not the path: a pairing code never reaches the log.
    assert f"GET /api/v1/pairing/lookup/<code:str> 404 request_id={rid}b" in text
    assert "ABCD-EFGH" not in text


def test_status(api: Api) -> None:
    r = httpx.get(api.url + "/status")
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "ok" and body["server_id"] == api.server_id
    assert body["database"] == "ok" and body["redis"] == "ok"
    assert isinstance(body["connections"], int) and body["uptime_s"] >= 0
