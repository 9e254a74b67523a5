"""After Redis restarts, the first request that needs it works: pooled connections opened
before the restart are replaced on the spot, not failed once."""

from __future__ import annotations

from pathlib import Path

import httpx

from relaybox.protocol.encoding import uuid4
from tests.api.helpers import signed_request
from tests.observability.helpers import start_server, stop_server
from tests.observability.test_degradation import RedisServer
from tests.support import free_port, seed


def test_token_requests_work_right_after_a_redis_restart(tmp_path: Path) -> None:
    """A token request checks its nonce in Redis. Right after Redis restarted, the pooled
    connection of the request before is dead: the request is answered 200 (the command is
    retried once on a new connection), not 503."""
    redis = RedisServer(tmp_path, port=free_port())  # TCP, as a cluster's Redis
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

    redis = RedisServer(tmp_path, port=free_port())  # TCP, as a cluster's Redis
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
