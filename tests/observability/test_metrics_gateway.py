"""/metrics on a real server: protected by its token, fed by the gateway and the HTTP layer."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.observability.helpers import (
    Device,
    await_until,
    parse,
    scrape,
    scrape_text,
    start_server,
    stop_server,
    total,
    value,
)
from tests.support import DeviceKey, Gw, Server, seed, writer_pids

TOKEN = "metrics-secret-7b1d"
DOCS = Path(__file__).resolve().parents[2] / "docs" / "operations.md"


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory
        ) -> Iterator[tuple[Server, dict[str, list[DeviceKey]]]]:
    data = tmp_path_factory.mktemp("metrics") / "data"
    devices = seed(data, {"alice": 4, "bob": 1})
    srv = start_server(data, metrics_token=TOKEN, gateway_publish_rate_per_s=5,
                       gateway_publish_burst=20)
    yield srv, devices
    log = srv.log()
    stop_server(srv)
    assert "Traceback" not in log, log


def test_metrics_need_the_token(env: tuple[Server, dict[str, list[DeviceKey]]]) -> None:
    srv, _ = env
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
        r = httpx.get(srv.url + "/metrics", headers=headers)
        assert r.status_code == 401
        assert r.headers["content-type"] == "application/problem+json"
        assert r.json()["code"] == "unauthorized"
        assert "WWW-Authenticate" in r.headers
    r = httpx.get(srv.url + "/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")


def test_every_documented_metric_is_exported_with_its_type(
        env: tuple[Server, dict[str, list[DeviceKey]]]) -> None:
    srv, _ = env
    _, types = parse(scrape_text(srv, TOKEN))
    # The table of docs/operations.md: | `name` | type | meaning |
    documented = re.findall(r"^\| `(relaybox_[a-z_]+)` \| (counter|gauge|histogram) \|",
                            DOCS.read_text(), re.M)
    assert len(documented) >= 20
    for name, kind in documented:
        family = name.removesuffix("_total") if kind == "counter" else name
        assert types.get(family) == kind, (name, types.get(family))


async def test_publish_delivery_and_sessions_are_counted(
        env: tuple[Server, dict[str, list[DeviceKey]]]) -> None:
    srv, devices = env
    a_key, b_key = devices["alice"][0], devices["alice"][1]
    before = scrape(srv, TOKEN)
    a = await Device.connect(srv, a_key)
    b = await Device.connect(srv, b_key)
    assert value(scrape(srv, TOKEN), "relaybox_gateway_sessions") == 2
    ids = [await a.publish("notes") for _ in range(10)]
    await await_until(lambda: _true(a.answered(ids)), what="acks")
    assert not a.nacks
    await await_until(lambda: _true(len(b.events.get("notes", {})) == 10), what="delivery")
    after = scrape(srv, TOKEN)
    assert total(after, "relaybox_events_published_total") - \
        total(before, "relaybox_events_published_total") == 10
    assert total(after, "relaybox_events_delivered_total") - \
        total(before, "relaybox_events_delivered_total") == 10
    assert value(after, "relaybox_delivery_latency_seconds_count") - \
        value(before, "relaybox_delivery_latency_seconds_count") == 10
    assert value(after, "relaybox_commit_batch_events_sum") - \
        value(before, "relaybox_commit_batch_events_sum") >= 10
    assert value(after, "relaybox_commit_duration_seconds_count") > \
        value(before, "relaybox_commit_duration_seconds_count")
    assert value(after, "relaybox_gateway_handshakes_total", result="ok") - \
        value(before, "relaybox_gateway_handshakes_total", result="ok") == 2
    await a.close()
    await b.close()
    await await_until(lambda: _async_value(srv, "relaybox_gateway_sessions", 0.0),
                      what="sessions gauge back to 0")
    closed = scrape(srv, TOKEN)
    assert value(closed, "relaybox_gateway_sessions_closed_total", code="1000") - \
        value(before, "relaybox_gateway_sessions_closed_total", code="1000") == 2


async def test_failed_handshakes_are_counted(
        env: tuple[Server, dict[str, list[DeviceKey]]]) -> None:
    srv, devices = env
    real = devices["alice"][2]
    forged = DeviceKey(real.device_id, real.user_id, devices["bob"][0].key)  # wrong key
    before = scrape(srv, TOKEN)
    gw = await Gw.connect(srv, forged)
    assert (gw.welcome["type"], gw.welcome["code"]) == ("error", "auth_failed")
    assert await gw.closed_code() == 4401
    after = scrape(srv, TOKEN)
    assert value(after, "relaybox_gateway_handshakes_total", result="auth_failed") - \
        value(before, "relaybox_gateway_handshakes_total", result="auth_failed") == 1


async def test_rate_limited_publishes_are_counted(
        env: tuple[Server, dict[str, list[DeviceKey]]]) -> None:
    srv, devices = env
    before = scrape(srv, TOKEN)
    d = await Device.connect(srv, devices["bob"][0])
    ids = [await d.publish("burst") for _ in range(40)]
    await await_until(lambda: _true(d.answered(ids)), what="answers")
    await d.close()
    limited = sum(1 for code in d.nacks.values() if code == "rate_limited")
    assert limited >= 15  # burst 20, rate 5/s
    after = scrape(srv, TOKEN)
    assert value(after, "relaybox_events_nacked_total", code="rate_limited") - \
        value(before, "relaybox_events_nacked_total", code="rate_limited") == limited
    assert value(after, "relaybox_rate_limited_total", limit="gateway_publish") - \
        value(before, "relaybox_rate_limited_total", limit="gateway_publish") == limited


def test_http_requests_are_labelled_by_route_template(
        env: tuple[Server, dict[str, list[DeviceKey]]]) -> None:
    srv, _ = env
    code = "QX7Z-K2M9"
    r = httpx.get(f"{srv.url}/api/v1/pairing/lookup/{code}")
    assert r.status_code in (404, 429)
    httpx.get(f"{srv.url}/no/such/{code}")
    text = scrape_text(srv, TOKEN)
    assert code not in text  # a raw path never becomes a label
    samples, _ = parse(text)
    routes = {dict(ls).get("route") for (n, ls) in samples if n == "relaybox_http_requests_total"}
    assert any(r and r.startswith("/api/v1/pairing/lookup/<") for r in routes), routes
    assert "unmatched" in routes
    assert value(samples, "relaybox_http_requests_total", route="/api/v1/status", method="GET",
                 status="200") >= 1
    assert value(samples, "relaybox_http_request_duration_seconds_count",
                 route="/api/v1/status", method="GET") >= 1


async def test_delivery_lag_of_a_device_that_does_not_ack(
        env: tuple[Server, dict[str, list[DeviceKey]]]) -> None:
    srv, devices = env
    pub = await Device.connect(srv, devices["alice"][0])
    slow = await Device.connect(srv, devices["alice"][3], auto_ack=False)
    await await_until(lambda: _true(any(f["type"] == "synced" for f in slow.other)),
                      what="catch-up")
    await slow.ack_all()  # earlier tests' events: acked, only the new ones lag
    ids = [await pub.publish("lagging") for _ in range(5)]
    await await_until(lambda: _true(pub.answered(ids)), what="acks")
    await await_until(lambda: _true(len(slow.events.get("lagging", {})) == 5), what="delivery")

    async def lagging() -> bool:
        s = await asyncio.to_thread(scrape, srv, TOKEN)
        return (value(s, "relaybox_delivery_unacked_events_max") >= 5
                and value(s, "relaybox_delivery_sessions_behind") >= 1
                and value(s, "relaybox_delivery_oldest_unacked_age_seconds") > 0)

    await await_until(lagging, what="lag reported")
    await slow.ack_all()

    async def caught_up() -> bool:
        s = await asyncio.to_thread(scrape, srv, TOKEN)
        return value(s, "relaybox_delivery_unacked_events_max") == 0

    await await_until(caught_up, what="lag back to 0")
    await pub.close()
    await slow.close()


async def _true(x: bool) -> bool:
    return x


async def _async_value(srv: Server, name: str, want: float) -> bool:
    return value(await asyncio.to_thread(scrape, srv, TOKEN), name) == want


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


def test_memory_counts_the_writer_process_too(
        env: tuple[Server, dict[str, list[DeviceKey]]]) -> None:
    srv, _ = env
    assert srv.proc is not None
    (writer,) = writer_pids(srv.proc.pid)
    reported = value(scrape(srv, TOKEN), "relaybox_memory_resident_bytes")
    # Both processes, within a fifth for what moved between the scrape and these reads;
    # the server process alone would be short by most of the writer's share.
    assert reported > 0.8 * (_rss(srv.proc.pid) + _rss(writer))
