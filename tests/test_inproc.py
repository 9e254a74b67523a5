"""The in-process servers the REST and CLI tests use (tests/inproc.py over
``runner.start_in_thread``): several at once, each with its own port, database and log,
and nothing left behind once stopped."""

from __future__ import annotations

import dataclasses
import os
import threading
from pathlib import Path

import httpx
import psutil
import pytest

from relaybox.config import load_settings
from relaybox.server import runner
from tests.api.helpers import Api, assert_clean_log, signed_request, start_api
from tests.inproc import PREFIX, InProcServer
from tests.support import DeviceKey


def _ours() -> list[str]:
    return [t.name for t in threading.enumerate()
            if t.name.startswith((PREFIX, "relaybox-in-thread-"))]


def _status(api: Api) -> dict[str, object]:
    r = httpx.get(api.url + "/status", timeout=10)
    assert r.status_code == 200, r.text
    return dict(r.json())


def _device_ids(api: Api, dev: DeviceKey) -> list[str]:
    with api.as_device(dev) as c:
        return [d["device_id"] for d in c.get("/devices").json()]


def test_two_servers_at_once_answer_on_their_ports_and_stop_cleanly(tmp_path: Path) -> None:
    from sanic import Sanic

    before = {p.pid for p in psutil.Process().children(recursive=True)}
    a = start_api(tmp_path / "a" / "data", {"alice": 1})
    b = start_api(tmp_path / "b" / "data", {"bob": 1})
    try:
        assert isinstance(a.server, InProcServer) and isinstance(b.server, InProcServer)
        assert a.server.port != b.server.port
        assert _status(a)["server_id"] == a.server_id != b.server_id == _status(b)["server_id"]
        # Each server's code uses its own database: a device is known to its server only.
        alice, bob = a.devices["alice"][0], b.devices["bob"][0]
        assert _device_ids(a, alice) == [alice.device_id]
        assert _device_ids(b, bob) == [bob.device_id]
        r = httpx.post(b.url + "/auth/token", json=signed_request(b.server_id, alice))
        assert r.status_code == 401, r.text
        # Each log has its own server's lines only; the test's own records are in neither.
        ra = httpx.get(a.url + "/status", headers={"X-Request-ID": "only-in-a"})
        rb = httpx.get(b.url + "/status", headers={"X-Request-ID": "only-in-b"})
        assert ra.status_code == rb.status_code == 200
        assert "only-in-a" in a.server.log() and "only-in-a" not in b.server.log()
        assert "only-in-b" in b.server.log() and "only-in-b" not in a.server.log()
        assert_clean_log(a.server)
        assert_clean_log(b.server)
        # The run records name this process, as a server process's name itself.
        assert a.server.proc is not None and a.server.proc.pid == os.getpid()
        assert len(list((a.server.data_dir / "run").glob("server-*.json"))) == 1
        assert sum(t.startswith(PREFIX) for t in _ours()) >= 2
    finally:
        b.server.stop()
        a.server.stop()
    assert a.server.stop() is None  # idempotent
    assert _ours() == []
    assert not any(name.startswith(PREFIX) for name in Sanic._app_registry)
    assert list((a.server.data_dir / "run").glob("server-*.json")) == []
    assert not (a.server.data_dir / "run" / "redis.socket").exists()
    left = [p for p in psutil.Process().children(recursive=True) if p.pid not in before]
    assert [p.cmdline() for p in left if p.is_running()
            and p.status() != psutil.STATUS_ZOMBIE] == []
    for srv in (a.server, b.server):  # the port is free again
        with pytest.raises(httpx.ConnectError):
            httpx.get(srv.url + "/api/v1/status", timeout=2)


def test_a_server_that_cannot_start_raises_and_leaves_no_thread(tmp_path: Path) -> None:
    settings = load_settings(tmp_path / "data", env={
        "RELAYBOX_TLS_CERT_FILE": str(tmp_path / "missing.pem"),
        "RELAYBOX_TLS_KEY_FILE": str(tmp_path / "missing.key")})
    with pytest.raises(runner.StartError, match=r"tls\.cert_file"):
        runner.start_in_thread(dataclasses.replace(settings, port=0))
    assert _ours() == []
    with pytest.raises(runner.StartError, match="workers"):
        runner.start_in_thread(dataclasses.replace(settings, workers=2))
