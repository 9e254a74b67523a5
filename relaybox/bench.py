"""The load generator behind ``relaybox bench`` (docs/performance.md): loopback only."""

from __future__ import annotations

import asyncio
import contextlib
import json
import multiprocessing as mp
import os
import resource
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import nacl.signing
import orjson
import websockets

from relaybox.benchclient import LeanConnection
from relaybox.protocol.encoding import b64url_encode, random_nonce
from relaybox.protocol.handshake import gateway_signing_bytes

ACK_EVERY = 64


@dataclass
class Device:
    device_id: str
    key: bytes  # Ed25519 seed


@dataclass
class BenchServer:
    """A ``relaybox serve`` process on a throwaway data dir and a free loopback port."""

    data_dir: Path
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    env: dict[str, str] = field(default_factory=dict)

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/api/v1/gateway"

    def start(self) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        env = {**os.environ, "RELAYBOX_DATA_DIR": str(self.data_dir),
               "RELAYBOX_GATEWAY_PUBLISH_RATE_PER_S": "0", "RELAYBOX_LOG_LEVEL": "warning",
               "RELAYBOX_METRICS_ENABLED": "false",
               "RELAYBOX_GATEWAY_HANDSHAKE_FAILURES_PER_MIN": "1000000",
               # Thousands of sessions from one loopback address: the per-address cap is
               # for real clients (docs/security.md Limits).
               "RELAYBOX_LIMITS_CONNECTIONS_PER_ADDRESS": "0", **self.env}
        self.log = open(self.data_dir.parent / "server.log", "wb")
        self.proc = subprocess.Popen(  # noqa: S603 - our own interpreter and module
            [sys.executable, "-m", "relaybox", "serve", "--port", str(self.port)],
            env=env, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("server exited during start")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://127.0.0.1:{self.port}/api/v1/status",
                             timeout=1).status_code == 200:
                    return
            time.sleep(0.05)
        raise RuntimeError("server did not start")

    def cpu_seconds(self) -> float:
        """CPU time of the server process and the processes it started (its writer
        process, the embedded Redis)."""
        assert self.proc is not None
        ticks = 0
        todo = [self.proc.pid]
        while todo:
            pid = todo.pop()
            with contextlib.suppress(OSError):
                stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                ticks += int(stat[11]) + int(stat[12])
                for task in Path(f"/proc/{pid}/task").iterdir():
                    todo += [int(c) for c in (task / "children").read_text().split()]
        return ticks / os.sysconf("SC_CLK_TCK")

    def rss_bytes(self) -> int:
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return 0

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


def seed_devices(data_dir: Path, per_user: int, users: int = 1,
                 env: Mapping[str, str] | None = None) -> list[list[Device]]:
    """Initialise ``data_dir`` and create users with devices (before the server starts),
    in the database the server will use (``env``: its RELAYBOX_* settings). Names are new
    on every run, so that a shared PostgreSQL database can be measured again."""
    from relaybox.cli.init_cmd import initialise
    from relaybox.config import load_settings
    from relaybox.services.devices import add_device
    from relaybox.services.users import add_user
    from relaybox.store.db import open_database

    settings = load_settings(data_dir, env=env or {})
    initialise(settings)
    db = open_database(settings)
    out = []
    tag = secrets.token_hex(3)
    try:
        for u in range(users):
            user = add_user(db, f"bench{u}-{tag}")
            devs = []
            for i in range(per_user):
                sk = nacl.signing.SigningKey.generate()
                d, _ = add_device(db, user, f"bench{u}-{i}", bytes(sk.verify_key))
                devs.append(Device(d.id, bytes(sk)))
            out.append(devs)
    finally:
        db.close()
    return out


REFUSED = ("the server dropped the connection during the WebSocket opening handshake "
           "(a refusal: 503 too_many_connections past limits.connections_per_address or "
           "limits.max_connections)")


async def connect(url: str, dev: Device) -> tuple[Any, dict[str, Any]]:
    try:
        ws = await websockets.connect(url, compression=None, max_size=None,
                                      ping_interval=None, max_queue=None)
    except (AssertionError, OSError, EOFError) as exc:
        # A server that answers 503 and drops the connection before the request is
        # written ends the opening handshake this way, not with InvalidStatus.
        raise ConnectionError(REFUSED) from exc
    nonce = random_nonce()
    await ws.send(orjson.dumps({"type": "hello", "protocol": 1, "device_id": dev.device_id,
                                "nonce": nonce}).decode())
    ch = orjson.loads(await ws.recv())
    msg = gateway_signing_bytes(ch["server_id"], ch["session_id"], dev.device_id, nonce,
                                ch["nonce"])
    sig = nacl.signing.SigningKey(dev.key).sign(msg).signature
    await ws.send(orjson.dumps({"type": "auth", "signature": b64url_encode(sig)}).decode())
    welcome = orjson.loads(await ws.recv())
    if welcome.get("type") != "welcome":
        raise RuntimeError(f"handshake failed: {welcome}")
    return ws, welcome


def _run(main: Any) -> Any:
    """Run a load-generator coroutine, on uvloop when it is installed (Sanic brings it):
    the clients share the cores with the server, so their event loop's cost counts."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - Sanic installs uvloop on Linux
        return asyncio.run(main)
    return uvloop.run(main)


# -- worker processes -----------------------------------------------------------------------
def _publisher(url: str, dev: Device, n: int, rate: float, inflight: int, body_size: int,
               out: Any) -> None:
    async def run() -> None:
        ws, _ = await connect(url, dev)
        sem = asyncio.Semaphore(inflight)
        pad = "x" * max(0, body_size - 40)
        acked = 0
        done = asyncio.Event()

        async def reader() -> None:
            nonlocal acked
            async for raw in ws:
                msg = orjson.loads(raw)
                if msg["type"] == "ack":
                    acked += 1
                    sem.release()
                    if acked == n:
                        done.set()
                        return
                elif msg["type"] == "nack":
                    raise RuntimeError(f"nack: {msg}")

        task = asyncio.create_task(reader())
        ids = [str(uuid.uuid4()) for _ in range(n)]
        t0 = time.monotonic()
        interval = 1.0 / rate if rate > 0 else 0.0
        for i in range(n):
            await sem.acquire()
            if interval:
                due = t0 + i * interval
                delay = due - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            await ws.send('{"type":"publish","id":"' + ids[i] +
                          '","stream":"bench","body":{"t":' + str(time.monotonic_ns()) +
                          ',"p":"' + pad + '"}}')
        await done.wait()
        await task
        out.put(("publisher", t0, time.monotonic()))
        await ws.close()

    _run(run())


def _receiver(url: str, dev: Device, n: int, ready: Any, out: Any) -> None:
    async def run() -> None:
        ws, welcome = await connect(url, dev)
        # An online receiver: catch up (acking) until `synced`, then measure live events.
        async for raw in ws:
            msg = orjson.loads(raw)
            if msg["type"] == "event":
                await ws.send(f'{{"type":"ack","stream":"{msg["stream"]}","seq":{msg["seq"]}}}')
            elif msg["type"] == "synced":
                break
        ready.set()
        got = 0
        last_seq = int(welcome["streams"].get("bench", 0))  # only events published from now
        lat: list[int] = []
        first = None
        start_seq = last_seq
        seen = 0
        async for raw in ws:
            msg = orjson.loads(raw)
            if msg["type"] != "event":
                continue
            now = time.monotonic_ns()
            seen += 1
            stream, seq = msg["stream"], msg["seq"]
            if stream == "bench" and seq > start_seq and seq > last_seq:
                if first is None:
                    first = time.monotonic()
                last_seq = seq
                got += 1
                lat.append(now - msg["body"]["t"])
            # Older events (catch-up of earlier runs) are acked too, or the window fills.
            if seen % ACK_EVERY == 0 or got >= n:
                await ws.send(f'{{"type":"ack","stream":"{stream}","seq":{seq}}}')
            if got >= n:
                break
        out.put(("receiver", first, time.monotonic(), lat))
        await ws.close()

    _run(run())


def _mp() -> Any:
    return mp.get_context("fork")


def describe_failure(exc: BaseException) -> str:
    """What a load-generator process ran into, in the server's own terms: a refused
    connection (503 ``too_many_connections``: the per-address cap), a close code
    (4429: too many failed handshakes from this address), a nack."""
    from websockets.exceptions import ConnectionClosed, InvalidStatus

    if isinstance(exc, InvalidStatus):
        resp = exc.response
        body = bytes(resp.body or b"")[:200].decode(errors="replace")
        return (f"the server refused the WebSocket: HTTP {resp.status_code} {body} "
                "(503 too_many_connections: limits.connections_per_address)").strip()
    if isinstance(exc, ConnectionClosed):
        rcvd = exc.rcvd
        if rcvd is not None:
            return f"the server closed the session: {rcvd.code} {rcvd.reason}"
    return f"{type(exc).__name__}: {exc}"


def _guarded(fn: Callable[..., None], *args: Any) -> None:
    """Run a worker; on failure put ("error", what happened) on its queue (its last
    argument) so that the parent reports it at once instead of waiting for results."""
    try:
        fn(*args)
    except BaseException as exc:  # reported to the parent, then exit 1
        args[-1].put(("error", describe_failure(exc)))
        raise SystemExit(1) from None


def _proc(ctx: Any, fn: Callable[..., None], *args: Any) -> Any:
    return ctx.Process(target=_guarded, args=(fn, *args))


def relay(url: str, a: Device, b: Device, n: int, *, rate: float = 0, inflight: int = 1024,
          body_size: int = 200) -> dict[str, Any]:
    """A → server → B: events/s from first publish to last delivery, and latencies."""
    ctx = _mp()
    out = ctx.Queue()
    ready = ctx.Event()
    recv = _proc(ctx, _receiver, url, b, n, ready, out)
    recv.start()
    ready.wait(30)
    pub = _proc(ctx, _publisher, url, a, n, rate, inflight, body_size, out)
    pub.start()
    results = _collect(out, 2, [recv, pub])
    pub.join()
    recv.join()
    return _relay_result(n, results)


class WorkerFailed(RuntimeError):
    """A load-generator process failed (a refusal of the server, a nack, a timeout)."""


def _collect_items(out: Any, n: int, procs: Sequence[Any] = (),
                   timeout: float = 600) -> list[Any]:
    """``n`` results from the worker processes ``procs``; a worker's ("error", …)
    raises WorkerFailed at once, and so do workers that all ended without a result."""
    import queue

    items: list[Any] = []
    deadline = time.monotonic() + timeout
    while len(items) < n:
        try:
            item = out.get(timeout=1.0)
        except queue.Empty:
            if procs and not any(p.is_alive() for p in procs):
                with contextlib.suppress(queue.Empty):
                    items.append(out.get(timeout=0.5))
                    continue
                raise WorkerFailed("the load-generator processes ended without a result "
                                   f"(exit codes {[p.exitcode for p in procs]})") from None
            if time.monotonic() > deadline:
                raise WorkerFailed(f"no result within {timeout:g} s") from None
            continue
        if item[0] == "error":
            for p in procs:
                if p.is_alive():
                    p.terminate()
            raise WorkerFailed(item[1])
        items.append(item)
    return items


def _collect(out: Any, n: int, procs: Sequence[Any] = ()) -> dict[str, Any]:
    """``n`` results from the worker processes, by the name each one starts with."""
    return {item[0]: item for item in _collect_items(out, n, procs)}


def percentile(ordered: list[int], q: float) -> int:
    """The value at quantile ``q`` of an ascending, non-empty list (p50: the middle one;
    p99: the one 1 % of the values are above)."""
    if q == 0.5:
        return ordered[len(ordered) // 2]
    return ordered[max(0, int(len(ordered) * q) - 1)]


def _relay_result(n: int, results: dict[str, Any]) -> dict[str, Any]:
    t0 = results["publisher"][1]
    t_end = results["receiver"][2]
    lat = sorted(results["receiver"][3])
    return {
        "events": n,
        "seconds": t_end - t0,
        "events_per_s": n / (t_end - t0),
        "latency_ms_p50": percentile(lat, 0.5) / 1e6,
        "latency_ms_p99": percentile(lat, 0.99) / 1e6,
        "latency_ms_max": lat[-1] / 1e6,
        "latency_ms_mean": statistics.fmean(lat) / 1e6,
    }


async def lean_connect(url: str, dev: Device, key: nacl.signing.SigningKey | None = None
                       ) -> tuple[LeanConnection, dict[str, Any]]:
    """The handshake on a ``LeanConnection``; returns it with the `welcome` message.
    ``key``: the device's signing key, when the caller keeps it built."""
    try:
        conn = await LeanConnection.connect(url)
    except (ConnectionError, OSError) as exc:
        raise ConnectionError(REFUSED) from exc
    nonce = random_nonce()
    conn.send(orjson.dumps({"type": "hello", "protocol": 1, "device_id": dev.device_id,
                            "nonce": nonce}).decode())
    ch = orjson.loads(await conn.recv())
    msg = gateway_signing_bytes(ch["server_id"], ch["session_id"], dev.device_id, nonce,
                                ch["nonce"])
    sig = (key or nacl.signing.SigningKey(dev.key)).sign(msg).signature
    conn.send(orjson.dumps({"type": "auth", "signature": b64url_encode(sig)}).decode())
    welcome = orjson.loads(await conn.recv())
    if welcome.get("type") != "welcome":
        raise RuntimeError(f"handshake failed: {welcome}")
    return conn, welcome


def _latency_run(url: str, a: Device, b: Device, n: int, rate: float, body_size: int,
                 out: Any) -> None:
    """Publisher and receiver on one loop: A publishes at ``rate``; B timestamps each event
    in the callback that parsed it (both read the same monotonic clock)."""
    async def run() -> None:
        rx, welcome = await lean_connect(url, b)
        while True:  # catch up (acking) until `synced`; only later events are measured
            msg = orjson.loads(await rx.recv())
            if msg["type"] == "event":
                rx.send(f'{{"type":"ack","stream":"{msg["stream"]}","seq":{msg["seq"]}}}')
            elif msg["type"] == "synced":
                break
        start_seq = int(welcome["streams"].get("bench", 0))
        lat: list[int] = []
        sent: list[int] = []
        done = asyncio.get_running_loop().create_future()
        seen = 0
        first: list[float] = []

        def on_event(text: str) -> None:
            nonlocal seen
            now = time.monotonic_ns()
            msg = orjson.loads(text)
            if msg["type"] != "event":
                return
            seen += 1
            stream, seq = msg["stream"], msg["seq"]
            if stream == "bench" and seq > start_seq:
                if not first:
                    first.append(time.monotonic())
                sent.append(msg["body"]["t"])
                lat.append(now - msg["body"]["t"])
            if seen % ACK_EVERY == 0 or len(lat) >= n:
                rx.send(f'{{"type":"ack","stream":"{stream}","seq":{seq}}}')
            if len(lat) >= n and not done.done():
                done.set_result(None)

        rx.on_message = on_event
        while rx.messages:
            on_event(rx.messages.popleft())
        tx, _ = await lean_connect(url, a)
        acked = 0

        def on_reply(text: str) -> None:
            nonlocal acked
            msg = orjson.loads(text)
            if msg["type"] == "ack":
                acked += 1
            elif msg["type"] == "nack":
                raise RuntimeError(f"nack: {msg}")

        tx.on_message = on_reply
        pad = "x" * max(0, body_size - 40)
        ids = [str(uuid.uuid4()) for _ in range(n)]
        t0 = time.monotonic()
        t0_ns = time.monotonic_ns()
        interval = 1.0 / rate
        for i in range(n):
            delay = t0 + i * interval - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tx.send('{"type":"publish","id":"' + ids[i] + '","stream":"bench","body":{"t":' +
                    str(time.monotonic_ns()) + ',"p":"' + pad + '"}}')
        await asyncio.wait_for(done, 120)
        out.put(("publisher", t0, 0.0))
        out.put(("receiver", first[0], time.monotonic(), lat))
        out.put(("stalls", t0_ns, stalls(sent, lat, t0_ns)))
        await tx.close()
        await rx.close()

    _run(run())


def latency(url: str, a: Device, b: Device, n: int, rate: float = 2000,
            body_size: int = 200, probe_dir: Path | None = None) -> dict[str, Any]:
    """Publish→delivery latency at a fixed rate (one load-generator process). With
    ``probe_dir``, a storage probe fsyncs a file of its own there meanwhile."""
    ctx = _mp()
    out = ctx.Queue()
    stop = ctx.Event()
    probe = None
    if probe_dir is not None:
        probe = ctx.Process(target=_storage_probe, args=(probe_dir, PROBE_RATE, stop, out))
        probe.start()
    try:
        proc = _proc(ctx, _latency_run, url, a, b, n, rate, body_size, out)
        proc.start()
        results = _collect(out, 3, [proc])
        proc.join()
    finally:
        stop.set()  # the probe stops with the run, even one that failed
    t0_ns, late = results["stalls"][1], results["stalls"][2]
    result = {**_relay_result(n, results), "stalls": late}
    if probe is not None:
        syncs = _collect(out, 1)["probe"][1]
        probe.join()
        result["storage_probe"] = probe_summary(syncs, t0_ns)
        mark_storage_stalls(late, syncs, t0_ns)
    return result


#: fsyncs per second of the storage probe: next to the writer's ~1,000-2,000 per second
#: at 2,000 events/s, and 4 KiB each against the writer's ~40 MB/s, it adds little.
PROBE_RATE = 250
#: A probe fsync slower than this is a storage stall (the idle disk: under 1 ms).
PROBE_STALL_NS = 5_000_000


def _storage_probe(directory: Path, rate: float, stop: Any, out: Any) -> None:
    """Overwrite one 4 KiB block of a file of our own and fdatasync it, ``rate`` times a
    second, until ``stop``; report when each sync began and how long it took.

    relaybox's writer acks an event only after the fsync of its commit returns, so
    when the disk holds an fsync up, every event waits. The probe tells those stalls
    apart from relaybox's own: it shares the filesystem, nothing else."""
    path = directory / "storage-probe.bin"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    block = b"\xa5" * 4096
    syncs: list[tuple[int, int]] = []
    try:
        os.pwrite(fd, block, 0)
        os.fsync(fd)
        t0 = time.monotonic()
        i = 0
        while not stop.is_set():
            i += 1
            delay = t0 + i / rate - time.monotonic()
            if delay > 0:
                stop.wait(delay)
            began = time.monotonic_ns()
            os.pwrite(fd, block, 0)
            os.fdatasync(fd)
            syncs.append((began, time.monotonic_ns() - began))
    finally:
        os.close(fd)
        path.unlink(missing_ok=True)
    out.put(("probe", syncs))


def probe_summary(syncs: list[tuple[int, int]], t0_ns: int) -> dict[str, Any]:
    """The probe's fsyncs from ``t0_ns`` on (the measured part of the run): their
    times, and the slow ones (when they began, seconds into the run)."""
    mine = [(began, took) for began, took in syncs if began >= t0_ns]
    s = sorted(took for _, took in mine) or [0]
    return {
        "fsyncs": len(mine),
        "fsync_ms_p50": percentile(s, 0.5) / 1e6,
        "fsync_ms_p99": percentile(s, 0.99) / 1e6,
        "fsync_ms_max": s[-1] / 1e6,
        "stalls": [{"at_s": round((began - t0_ns) / 1e9, 3), "ms": round(took / 1e6, 2)}
                   for began, took in mine if took > PROBE_STALL_NS],
    }


def mark_storage_stalls(late: list[dict[str, Any]], syncs: list[tuple[int, int]],
                        t0_ns: int) -> None:
    """Mark each run of late events (``stalls``) that the storage probe saw a stall of
    its own in: a slow fsync of the probe while those events waited."""
    slow = [(began, took) for began, took in syncs if took > PROBE_STALL_NS]
    for run in late:
        begin = t0_ns + int(run["at_s"] * 1e9)
        end = begin + int(run["worst_ms"] * 1e6)
        run["storage"] = any(b < end and b + took > begin for b, took in slow)


def host_cpu(since: dict[str, float] | None = None) -> dict[str, float]:
    """The machine's CPU time by kind, summed over its cores (seconds, from /proc/stat);
    with ``since``, the time spent since then. ``steal`` is time the hypervisor gave this
    virtual machine's cores to someone else: a run with much of it measured the host."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()[1:9]
    except OSError:
        return {}
    tick = os.sysconf("SC_CLK_TCK")
    names = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")
    now = {k: int(v) / tick for k, v in zip(names, fields, strict=False)}
    if since is None:
        return now
    return {k: round(now[k] - since.get(k, 0.0), 2) for k in names if k in now}


STALL_NS = 10_000_000  # an event delivered more than 10 ms after it was sent


def stalls(sent_ns: list[int], lat_ns: list[int], t0_ns: int) -> list[dict[str, Any]]:
    """Runs of events delivered late (> 10 ms), in the order they were sent: when each
    run began (seconds into the run), how many events it held and the worst latency.
    Telling one long stall from many short ones is what the p99 alone cannot do."""
    runs: list[dict[str, Any]] = []
    prev_late = False
    for t, lat in sorted(zip(sent_ns, lat_ns, strict=True)):
        late = lat > STALL_NS
        if late and not prev_late:
            runs.append({"at_s": round((t - t0_ns) / 1e9, 3), "events": 0, "worst_ms": 0.0})
        if late:
            runs[-1]["events"] += 1
            runs[-1]["worst_ms"] = round(max(runs[-1]["worst_ms"], lat / 1e6), 2)
        prev_late = late
    return runs


def catchup(url: str, a: Device, b: Device, n: int) -> dict[str, Any]:
    """B offline while A publishes ``n`` events; then B connects: events/s until `synced`."""
    ctx = _mp()
    out = ctx.Queue()
    pub = _proc(ctx, _publisher, url, a, n, 0, 1024, 200, out)
    pub.start()
    _collect(out, 1, [pub])
    pub.join()

    async def run() -> dict[str, Any]:
        t0 = time.monotonic()
        ws, _ = await connect(url, b)
        got = 0
        last = 0
        async for raw in ws:
            msg = orjson.loads(raw)
            if msg["type"] == "event":
                got += 1
                last = msg["seq"]
                if got % ACK_EVERY == 0:
                    await ws.send(f'{{"type":"ack","stream":"{msg["stream"]}","seq":{last}}}')
            elif msg["type"] == "synced":
                break
        elapsed = time.monotonic() - t0
        await ws.close()
        return {"events": got, "seconds": elapsed, "events_per_s": got / elapsed}

    return _run(run())


def _handshaker(url: str, devs: list[Device], rounds: int, conc: int, out: Any) -> None:
    keys = {d.device_id: nacl.signing.SigningKey(d.key) for d in devs}

    async def run() -> None:
        sem = asyncio.Semaphore(conc)
        count = 0

        async def one(dev: Device) -> None:
            nonlocal count
            async with sem:
                conn, _ = await lean_connect(url, dev, keys[dev.device_id])
                count += 1
                await conn.close()

        t0 = time.monotonic()
        await asyncio.gather(*(one(devs[i % len(devs)]) for i in range(rounds)))
        out.put(("handshakes", count, time.monotonic() - t0))

    _run(run())


def handshakes(url: str, devs: list[Device], rounds: int, procs: int = 1,
               concurrency: int = 16) -> dict[str, Any]:
    ctx = _mp()
    out = ctx.Queue()
    per = max(1, len(devs) // procs)
    ps = [_proc(ctx, _handshaker, url, devs[i * per:(i + 1) * per], rounds // procs,
                concurrency, out)
          for i in range(procs)]
    t0 = time.monotonic()
    for p in ps:
        p.start()
    total = sum(item[1] for item in _collect_items(out, len(ps), ps))
    elapsed = time.monotonic() - t0
    for p in ps:
        p.join()
    return {"handshakes": total, "seconds": elapsed, "per_s": total / elapsed}


def _idle_holder(url: str, devs: list[Device], ready: Any, release: Any) -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    async def run() -> None:
        sem = asyncio.Semaphore(32)
        conns = []

        async def one(dev: Device) -> None:
            async with sem:
                ws, _ = await connect(url, dev)
                conns.append(ws)

        await asyncio.gather(*(one(d) for d in devs))
        ready.set()
        await asyncio.get_running_loop().run_in_executor(None, release.wait)
        for ws in conns:
            with contextlib.suppress(Exception):
                await ws.close()

    _run(run())


def idle_rss(server: BenchServer, url: str, devs: list[Device]) -> dict[str, Any]:
    ctx = _mp()
    ready, release = ctx.Event(), ctx.Event()
    # Warm the server (imports, pools) with a few sessions before the baseline.
    warm = ctx.Process(target=_idle_holder, args=(url, devs[:20], ready, release))
    warm.start()
    ready.wait(120)
    release.set()
    warm.join()
    time.sleep(1.0)
    before = server.rss_bytes()
    ready, release = ctx.Event(), ctx.Event()
    p = ctx.Process(target=_idle_holder, args=(url, devs, ready, release))
    p.start()
    while not ready.wait(1.0):
        if not p.is_alive():  # a session could not connect: no number to report
            raise RuntimeError("idle run: the sessions could not all connect "
                               f"(holder exit code {p.exitcode})")
    time.sleep(1.0)
    after = server.rss_bytes()
    release.set()
    p.join()
    n = len(devs)
    return {"sessions": n, "rss_before_mib": before / 2**20, "rss_after_mib": after / 2**20,
            "kib_per_session": (after - before) / 1024 / n}


# -- the whole run ------------------------------------------------------------------------
TARGETS = {
    "throughput_events_per_s": (">=", 15000),
    "latency_ms_p99_at_2000": ("<=", 3.0),
    "catchup_events_per_s": (">=", 20000),
    "handshakes_per_s": (">=", 1000),
    "idle_kib_per_session": ("<=", 40),
}


def run_all(*, events: int = 50000, sessions: int = 5000, catchup_events: int = 20000,
            handshake_rounds: int = 3000,
            only: set[str] | None = None, log: Callable[[str], None] = print,
            env: dict[str, str] | None = None, settle_s: float = 5.0) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="relaybox-bench-"))
    want = only or {"throughput", "latency", "catchup", "handshakes", "idle"}
    results: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]}}
    server = BenchServer(tmp / "data", env=env or {})
    # The server's settings (this environment and ``env``): seeding must write into the
    # database the server reads, PostgreSQL included.
    server_env = {**os.environ, **(env or {})}
    results["database"] = ("postgresql" if server_env.get("RELAYBOX_DATABASE_URL", "")
                           .startswith("postgres") else "sqlite")
    try:
        n_idle = sessions if "idle" in want else 0
        log("seeding devices…")
        users = seed_devices(server.data_dir, per_user=4, env=server_env)
        extra = seed_devices_more(server.data_dir, max(n_idle, 200), env=server_env) if (
            "idle" in want or "handshakes" in want) else []
        server.start()
        url = server.ws_url
        a, b, c, d = users[0]
        ran = False

        def settle() -> None:
            # A phase's write burst is still being checkpointed for a few seconds after
            # it ends (docs/performance.md); the next phase starts after that.
            if ran and settle_s > 0:
                time.sleep(settle_s)

        if "throughput" in want:
            log(f"throughput: {events} events A → B …")
            cpu0 = server.cpu_seconds()
            r = relay(url, a, b, events)
            r["server_cpu_us_per_event"] = (server.cpu_seconds() - cpu0) / events * 1e6
            results["throughput"] = r
            ran = True
        if "latency" in want:
            settle()
            n = min(events, 20000)
            log(f"latency: {n} events at 2,000/s …")
            host0 = host_cpu()
            results["latency_at_2000"] = latency(url, c, d, n, rate=2000,
                                                 probe_dir=server.data_dir)
            results["latency_at_2000"]["host_cpu_s"] = host_cpu(since=host0)
            ran = True
        if "catchup" in want:
            settle()
            log(f"catch-up: {catchup_events} events …")
            results["catchup"] = catchup(url, a, d, catchup_events)
            ran = True
        if "handshakes" in want:
            settle()
            log("handshakes …")
            cpu0 = server.cpu_seconds()
            r = handshakes(url, extra[:200], handshake_rounds, procs=1)
            r["server_cpu_ms_per_handshake"] = (server.cpu_seconds() - cpu0) / r["handshakes"] * 1e3
            results["handshakes"] = r
            ran = True
        if "idle" in want:
            settle()
            log(f"idle sessions: {n_idle} …")
            results["idle"] = idle_rss(server, url, extra[:n_idle])
            ran = True
    finally:
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    results["summary"] = summarize(results)
    return results


def seed_devices_more(data_dir: Path, n: int,
                      env: Mapping[str, str] | None = None) -> list[Device]:
    """``n`` more devices, spread over users of 50 devices (after ``seed_devices``)."""
    from relaybox.config import load_settings
    from relaybox.protocol.encoding import uuid7
    from relaybox.store.db import open_database
    from relaybox.store.models import Device as DeviceRow
    from relaybox.store.models import User

    settings = load_settings(data_dir, env=env or {})
    db = open_database(settings)
    out = []
    now = int(time.time() * 1000)
    tag = secrets.token_hex(3)
    try:
        with db.atomic():
            user_id = ""
            rows = []
            for i in range(n):
                if i % 50 == 0:
                    user_id = uuid7()
                    User.create(id=user_id, name=f"idle{i // 50}-{tag}", created_at=now)
                sk = nacl.signing.SigningKey.generate()
                did = uuid7()
                rows.append({"id": did, "user": user_id, "name": f"idle-{i}",
                             "public_key": bytes(sk.verify_key), "created_at": now})
                out.append(Device(did, bytes(sk)))
            for i in range(0, len(rows), 200):
                DeviceRow.insert_many(rows[i:i + 200]).execute()
    finally:
        db.close()
    return out


def stall_note(lat: dict[str, Any] | None) -> str | None:
    """One line on the latency run's stalls, and how many the storage probe shared."""
    if not lat or not lat.get("stalls"):
        return None
    late = lat["stalls"]
    worst = max(run["worst_ms"] for run in late)
    line = (f"latency: {len(late)} stall(s) over 10 ms (worst {worst:,.1f} ms, "
            f"{sum(run['events'] for run in late)} events)")
    probe = lat.get("storage_probe")
    if probe is not None:
        shared = sum(1 for run in late if run.get("storage"))
        line += (f"; {shared} of them while the storage probe's own fsync stalled too "
                 f"(its worst: {probe['fsync_ms_max']:,.1f} ms)")
    return line


def summarize(results: dict[str, Any]) -> dict[str, Any]:
    values = {
        "throughput_events_per_s": results.get("throughput", {}).get("events_per_s"),
        "latency_ms_p99_at_2000": results.get("latency_at_2000", {}).get("latency_ms_p99"),
        "catchup_events_per_s": results.get("catchup", {}).get("events_per_s"),
        "handshakes_per_s": results.get("handshakes", {}).get("per_s"),
        "idle_kib_per_session": results.get("idle", {}).get("kib_per_session"),
    }
    out = {}
    for name, value in values.items():
        if value is None:
            continue
        op, target = TARGETS[name]
        ok = value >= target if op == ">=" else value <= target
        out[name] = {"value": round(value, 3), "target": f"{op} {target}", "met": ok}
    return out


def to_json(results: dict[str, Any]) -> str:
    return json.dumps(results, indent=2)
