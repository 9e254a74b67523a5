"""Log lines: plain or JSON, tagged with request/session ids, never carrying secrets."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import sys
from pathlib import Path

import httpx
import pytest

from relaybox.config import load_settings
from relaybox.server.observability import logs
from tests.observability.helpers import Device, start_server, stop_server, wait_until
from tests.support import DeviceKey, Gw, seed

JWT = "eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJkZXZpY2UifQ.c2lnbmF0dXJlLWJ5dGVz"


@pytest.mark.parametrize(("line", "secret"), [
    ("headers: {'Authorization': 'Bearer rbadm_s3cr3tTOKENvalue'}", "rbadm_s3cr3tTOKENvalue"),
    ("Authorization: Basic dXNlcjpwYXNzd29yZA==", "dXNlcjpwYXNzd29yZA=="),
    (f"refresh failed for token {JWT}", JWT),
    ("bad request body refresh_token=rt_abcdef123456&x=1", "rt_abcdef123456"),
    ('{"access_token": "at-998877", "token_type": "Bearer"}', "at-998877"),
    ("cannot connect to postgresql://relay:hunter2@db:5432/relaybox", "hunter2"),
    ("redis_url = redis://:p4ss@cache:6379/0", "p4ss"),
    ("admin_token=rbadm_xyz password: opensesame", "opensesame"),
])
def test_secrets_are_redacted(line: str, secret: str) -> None:
    out = logs.redact(line)
    assert secret not in out
    assert "[redacted]" in out


def test_harmless_text_is_left_alone() -> None:
    line = "GET /api/v1/status 200 request_id=01a2 session closed: 4410 heartbeat_timeout"
    assert logs.redact(line) == line


def _record(msg: str, *args: object, exc: bool = False) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise ValueError(f"boom with Bearer {JWT}")
        except ValueError:
            exc_info = sys.exc_info()
    return logging.LogRecord("relaybox.gateway", logging.WARNING, __file__, 1, msg, args,
                             exc_info)


def test_json_lines_carry_the_context_ids_and_no_secret(tmp_path: Path) -> None:
    settings = load_settings(tmp_path, env={"RELAYBOX_LOG_FORMAT": "json"})
    stream = io.StringIO()
    handler = logs.make_handler(settings, stream)
    token = logs.request_id_var.set("req-1")
    logs.bind_session("sess-1", "dev-1")
    try:
        handler.handle(_record("token %s refused", JWT, exc=True))
    finally:
        logs.request_id_var.reset(token)
        logs.session_id_var.set(None)
        logs.device_id_var.set(None)
    doc = json.loads(stream.getvalue())
    assert doc["level"] == "warning" and doc["logger"] == "relaybox.gateway"
    assert (doc["request_id"], doc["session_id"], doc["device_id"]) == ("req-1", "sess-1",
                                                                        "dev-1")
    assert doc["msg"] == "token [redacted] refused"
    assert "ValueError" in doc["exc"] and JWT not in stream.getvalue()


def test_plain_lines_append_the_ids_once(tmp_path: Path) -> None:
    settings = load_settings(tmp_path, env={})
    stream = io.StringIO()
    handler = logs.make_handler(settings, stream)
    token = logs.request_id_var.set("req-2")
    try:
        handler.handle(_record("GET /x 200 request_id=req-2"))
        handler.handle(_record("something happened"))
    finally:
        logs.request_id_var.reset(token)
    first, second = stream.getvalue().splitlines()
    assert first.endswith("relaybox.gateway: GET /x 200 request_id=req-2")
    assert second.endswith("relaybox.gateway: something happened [request_id=req-2]")


@pytest.fixture(scope="module")
def server_log(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, str]]:
    """The JSON log of a server that saw HTTP requests and gateway sessions."""
    data = tmp_path_factory.mktemp("logs") / "data"
    keys = seed(data, {"alice": 2})["alice"]
    srv = start_server(data, log_format="json", metrics_token="metrics-tok-31337")
    try:
        r = httpx.get(srv.url + "/metrics", headers={"Authorization": "Bearer metrics-tok-31337",
                                                     "X-Request-ID": "trace-me-42"})
        assert r.status_code == 200
        httpx.get(srv.url + "/api/v1/devices", headers={"Authorization": f"Bearer {JWT}"})

        async def sessions() -> str:
            d = await Device.connect(srv, keys[0])
            forged = DeviceKey(keys[1].device_id, keys[1].user_id, keys[0].key)
            gw = await Gw.connect(srv, forged)
            assert await gw.closed_code() == 4401
            await d.close()
            return str(d.gw.welcome["session_id"])

        session_id = asyncio.run(sessions())
        wait_until(lambda: "session closed" in srv.log(), what="the session's last line")
        return srv.log(), {"session_id": session_id, "device_id": keys[0].device_id}
    finally:
        stop_server(srv)


def test_server_log_is_json_with_request_ids_and_without_secrets(
        server_log: tuple[str, dict[str, str]]) -> None:
    log, _ = server_log
    lines = [json.loads(line) for line in log.splitlines() if line.strip()]
    assert all({"ts", "level", "logger", "msg"} <= set(x) for x in lines)
    assert any(x.get("request_id") == "trace-me-42" for x in lines)
    assert any(x["msg"] == "handshake refused: auth_failed" for x in lines)
    assert "metrics-tok-31337" not in log and JWT not in log
    assert "Traceback" not in log


def test_session_lines_carry_the_session_and_device_ids(
        server_log: tuple[str, dict[str, str]]) -> None:
    log, ids = server_log
    lines = [json.loads(line) for line in log.splitlines() if line.strip()]
    opened = [x for x in lines if x["msg"] == "session opened"]
    closed = [x for x in lines if x["msg"].startswith("session closed: 1000")]
    assert len(opened) == 1 and len(closed) == 1
    for line in (opened[0], closed[0]):
        assert line.get("session_id") == ids["session_id"], line
        assert line.get("device_id") == ids["device_id"], line
