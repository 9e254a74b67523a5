"""Publish→delivery latency at a fixed rate, beside a probe of the storage's own fsyncs."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from pathlib import Path
from typing import Any

import orjson

from relaybox.bench.connection import (
    ACK_EVERY,
    Device,
    LeanConnection,
    catch_up,
    lean_connect,
)
from relaybox.bench.relay import relay_result
from relaybox.bench.stats import ms_summary, stalls
from relaybox.bench.workers import collect, mp_context, run_loop, worker


class LiveReceiver:
    """Device B of a measured run, after its catch-up: each event of ``stream`` past
    ``start_seq`` is timestamped in the callback that parsed it (sender and receiver
    read the same monotonic clock); every ``ACK_EVERY``-th event is acked, and with
    ``want`` the ``want``-th too, which also completes ``done``."""

    def __init__(self, conn: LeanConnection, stream: str, start_seq: int,
                 want: int | None = None) -> None:
        self.conn = conn
        self.stream = stream
        self.start_seq = start_seq
        self.want = want
        self.lat: list[int] = []  # ns from publish to delivery
        self.sent: list[int] = []  # when each of them was published (ns)
        self.first = 0.0  # when the first measured event arrived (monotonic s)
        self.seen = 0
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        conn.on_message = self.on_message
        while conn.messages:
            self.on_message(conn.messages.popleft())

    def on_message(self, text: str) -> None:
        now = time.monotonic_ns()
        msg = orjson.loads(text)
        if msg["type"] != "event":
            return
        self.seen += 1
        stream, seq = msg["stream"], msg["seq"]
        if stream == self.stream and seq > self.start_seq:
            if not self.lat:
                self.first = time.monotonic()
            self.sent.append(msg["body"]["t"])
            self.lat.append(now - msg["body"]["t"])
        complete = self.want is not None and len(self.lat) >= self.want
        if self.seen % ACK_EVERY == 0 or complete:
            self.conn.send(f'{{"type":"ack","stream":"{stream}","seq":{seq}}}')
        if complete and not self.done.done():
            self.done.set_result(None)


def _latency_run(url: str, a: Device, b: Device, n: int, rate: float, body_size: int,
                 out: Any) -> None:
    """Publisher and receiver on one loop: A publishes at ``rate``; B timestamps each event
    in the callback that parsed it (both read the same monotonic clock)."""
    async def run() -> None:
        rx, welcome = await lean_connect(url, b)
        await catch_up(rx)
        live = LiveReceiver(rx, "bench", int(welcome["streams"].get("bench", 0)), want=n)
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
        await asyncio.wait_for(live.done, 120)
        out.put(("publisher", t0, 0.0))
        out.put(("receiver", live.first, time.monotonic(), live.lat))
        out.put(("stalls", t0_ns, stalls(live.sent, live.lat, t0_ns)))
        await tx.close()
        await rx.close()

    run_loop(run())


def latency(url: str, a: Device, b: Device, n: int, rate: float = 2000,
            body_size: int = 200, probe_dir: Path | None = None) -> dict[str, Any]:
    """Publish→delivery latency at a fixed rate (one load-generator process). With
    ``probe_dir``, a storage probe fsyncs a file of its own there meanwhile."""
    ctx = mp_context()
    out = ctx.Queue()
    stop = ctx.Event()
    probe = None
    if probe_dir is not None:
        probe = ctx.Process(target=_storage_probe, args=(probe_dir, PROBE_RATE, stop, out))
        probe.start()
    try:
        proc = worker(ctx, _latency_run, url, a, b, n, rate, body_size, out)
        proc.start()
        results = collect(out, 3, [proc])
        proc.join()
    finally:
        stop.set()  # the probe stops with the run, even one that failed
    t0_ns, late = results["stalls"][1], results["stalls"][2]
    result = {**relay_result(n, results), "stalls": late}
    if probe is not None:
        syncs = collect(out, 1)["probe"][1]
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
    return {
        "fsyncs": len(mine),
        **ms_summary((took for _, took in mine), "fsync_ms"),
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
