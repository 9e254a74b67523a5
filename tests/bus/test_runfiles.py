"""Server records in <data_dir>/run (bus/runfiles.py): live while their server holds the lock."""

from __future__ import annotations

import json
import os
from pathlib import Path

import httpx

from relaybox.bus import live_servers
from tests.support import Server, free_port, seed


def test_a_record_nobody_holds_is_stale_even_if_its_pid_runs(tmp_path: Path) -> None:
    """A killed server's record whose pid now belongs to another process (here: this
    test's own) is not taken for a running server, and is cleared away."""
    run = tmp_path / "run"
    run.mkdir()
    stale = run / "server-1.json"
    stale.write_text(json.dumps({"pid": os.getpid(), "locked": True,
                                 "redis_socket": str(run / "gone.sock")}))
    assert live_servers(run) == []
    assert not stale.exists()


def test_serve_ignores_a_stale_record_and_starts_its_own_redis(tmp_path: Path) -> None:
    """A stale record naming a live pid (pid 1 always runs) and a dead Redis socket: the
    next `relaybox serve` starts its embedded Redis and is healthy, instead of pointing at
    the dead socket with /status 503 "redis: down" forever."""
    data = tmp_path / "data"
    seed(data, {})
    run = data / "run"
    run.mkdir(exist_ok=True)
    (run / "server-1.json").write_text(json.dumps({
        "pid": 1, "locked": True, "redis_socket": str(run / "dead-redis.sock"),
        "url": "http://127.0.0.1:1"}))
    srv = Server(data, free_port(), {})
    srv.start()
    try:
        body = httpx.get(srv.url + "/api/v1/status", timeout=5).json()
        assert body["redis"] == "ok" and body["status"] == "ok", body
        live = live_servers(run)  # the running server's own record, locked by it
        assert [s["pid"] for s in live] == [srv.proc.pid if srv.proc else None]
    finally:
        srv.stop()
    assert live_servers(run) == []
