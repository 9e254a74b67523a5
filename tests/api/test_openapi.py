"""The OpenAPI document: valid OpenAPI 3, complete, and true to the server (schemathesis)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from typing import Any

import httpx
import pytest
from openapi_spec_validator import validate

from tests.api.helpers import Api

ROUTES = {
    ("get", "/api/v1/status"): None,
    ("post", "/api/v1/auth/token"): None,
    ("post", "/api/v1/auth/refresh"): None,
    ("get", "/api/v1/auth/verify"): "device",
    ("get", "/api/v1/devices"): "device",
    ("patch", "/api/v1/devices/{device_id}"): "device",
    ("post", "/api/v1/pairing/store"): "device",
    ("get", "/api/v1/pairing/lookup/{code}"): None,
    ("post", "/api/v1/pairing/claim"): None,
    ("get", "/api/v1/streams"): "device",
    ("get", "/api/v1/streams/{stream}/events"): "device",
    ("post", "/api/v1/streams/{stream}/events"): "device",
    ("post", "/api/v1/admin/revoke-device"): "admin",
    ("post", "/api/v1/admin/unrevoke-device"): "admin",
    ("get", "/api/v1/admin/revoked-devices"): "admin",
    ("get", "/api/v1/admin/users"): "admin",
    ("post", "/api/v1/admin/users"): "admin",
    ("post", "/api/v1/admin/users/{user}/pairing"): "admin",
}


@pytest.fixture(scope="module")
def document(api: Api) -> dict[str, Any]:
    r = httpx.get(api.server.url + "/docs/openapi.json")
    assert r.status_code == 200
    return dict(r.json())


def test_the_document_is_valid_openapi_3(document: dict[str, Any]) -> None:
    validate(document)
    assert document["openapi"].startswith("3.")
    schemes = document["components"]["securitySchemes"]
    assert schemes["device"] == {"type": "http", "scheme": "bearer", "bearerFormat": "JWT",
                                 "description": schemes["device"]["description"]}
    assert schemes["admin"]["scheme"] == "bearer"


def test_every_route_is_documented_with_its_errors(document: dict[str, Any]) -> None:
    paths = document["paths"]
    documented = {(m, p) for p, ops in paths.items() for m in ops}
    assert set(ROUTES) <= documented, set(ROUTES) - documented
    assert "/api/v1/gateway" not in paths  # a WebSocket, described in protocol.md
    for (method, path), scheme in ROUTES.items():
        op = paths[path][method]
        assert op["summary"], path
        assert op.get("security", []) == ([{scheme: []}] if scheme else []), path
        body = op.get("requestBody")
        if body is not None:
            assert "example" in body["content"]["application/json"], path
        ok = [s for s in op["responses"] if s.startswith("2")]
        assert ok, path
        for status, resp in op["responses"].items():
            media = resp["content"]
            assert "X-Request-ID" in resp["headers"]
            if status.startswith(("4", "5")) and path != "/api/v1/status":
                schema = media["application/problem+json"]["schema"]
                assert schema == {"$ref": "#/components/schemas/Problem"}, (path, status)
            else:
                assert "example" in media["application/json"], (path, status)
        if scheme:
            assert "401" in op["responses"], path
            assert "WWW-Authenticate" in op["responses"]["401"]["headers"]
        if scheme == "admin":
            assert "403" in op["responses"], path
    problem = document["components"]["schemas"]["Problem"]
    assert set(problem["required"]) >= {"type", "title", "status", "code", "detail"}


def test_swagger_ui_is_served(api: Api) -> None:
    r = httpx.get(api.server.url + "/docs")
    assert r.status_code == 200 and "swagger" in r.text.lower()


def _schemathesis(api: Api, token: str, *extra: str) -> str:
    cmd = [os.path.join(os.path.dirname(sys.executable), "schemathesis"), "run",
           api.server.url + "/docs/openapi.json", "--checks", "all",
           "-H", f"Authorization: Bearer {token}", "--max-examples", "25",
           "--workers", "1", "--no-color", "--seed", "1", *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    return out


def test_schemathesis_finds_nothing(api: Api) -> None:
    """Every route, every default check, against the live server with a device token."""
    out = _schemathesis(api, api.token(api.devices["alice"][0]))
    m = re.search(r"Operations:\s+(\d+) selected / (\d+) total", out)
    assert m and m[1] == m[2] and int(m[1]) >= len(ROUTES), out[-3000:]


def test_schemathesis_finds_nothing_on_admin_routes(api: Api) -> None:
    """The same with the admin token, so that the admin routes are exercised past 403."""
    out = _schemathesis(api, api.admin_token, "--include-path-regex", "/admin/")
    assert re.search(r"Operations:\s+6 selected", out), out[-3000:]
