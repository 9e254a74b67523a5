"""Throughput and catch-up: device A publishes, device B receives (docs/performance.md)."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import orjson

from relaybox.bench.connection import ACK_EVERY, Device, connect
from relaybox.bench.stats import ms_summary
from relaybox.bench.workers import collect, mp_context, run_loop, worker


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

    run_loop(run())


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

    run_loop(run())


def relay(url: str, a: Device, b: Device, n: int, *, rate: float = 0, inflight: int = 1024,
          body_size: int = 200) -> dict[str, Any]:
    """A → server → B: events/s from first publish to last delivery, and latencies."""
    ctx = mp_context()
    out = ctx.Queue()
    ready = ctx.Event()
    recv = worker(ctx, _receiver, url, b, n, ready, out)
    recv.start()
    # Until the receiver listens, or has failed (refused, say): its error is collected below.
    deadline = time.monotonic() + 30
    while not ready.wait(0.05) and recv.is_alive() and time.monotonic() < deadline:
        pass
    pub = worker(ctx, _publisher, url, a, n, rate, inflight, body_size, out)
    pub.start()
    results = collect(out, 2, [recv, pub])
    pub.join()
    recv.join()
    return relay_result(n, results)


def relay_result(n: int, results: dict[str, Any]) -> dict[str, Any]:
    t0 = results["publisher"][1]
    t_end = results["receiver"][2]
    return {
        "events": n,
        "seconds": t_end - t0,
        "events_per_s": n / (t_end - t0),
        **ms_summary(results["receiver"][3], "latency_ms", mean=True),
    }



def catchup(url: str, a: Device, b: Device, n: int) -> dict[str, Any]:
    """B offline while A publishes ``n`` events; then B connects: events/s until `synced`."""
    ctx = mp_context()
    out = ctx.Queue()
    pub = worker(ctx, _publisher, url, a, n, 0, 1024, 200, out)
    pub.start()
    collect(out, 1, [pub])
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

    return run_loop(run())
