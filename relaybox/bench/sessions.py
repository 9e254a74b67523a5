"""Handshakes per second, and the server's memory per idle session."""

from __future__ import annotations

import asyncio
import contextlib
import resource
import time
from typing import Any

import nacl.signing

from relaybox.bench.connection import Device, connect, lean_connect
from relaybox.bench.server import BenchServer
from relaybox.bench.workers import collect_items, mp_context, run_loop, worker


def _handshaker(url: str, devs: list[Device], rounds: int, conc: int, out: Any) -> None:
    keys = {d.device_id: nacl.signing.SigningKey(d.key) for d in devs}

    async def run() -> None:
        count = 0

        # Each device belongs to one worker, which connects it again only after its last
        # session closed: two sessions of one device at once would replace each other
        # (4409), and on two nodes the one still handshaking could be the one closed.
        async def loop(mine: list[Device]) -> None:
            nonlocal count
            i = 0
            while count < rounds:
                count += 1
                dev = mine[i % len(mine)]
                i += 1
                conn, _ = await lean_connect(url, dev, keys[dev.device_id])
                await conn.close()

        workers = max(1, min(conc, len(devs)))
        t0 = time.monotonic()
        await asyncio.gather(*(loop(devs[w::workers]) for w in range(workers)))
        out.put(("handshakes", count, time.monotonic() - t0))

    run_loop(run())


def handshakes(url: str, devs: list[Device], rounds: int, procs: int = 1,
               concurrency: int = 16) -> dict[str, Any]:
    ctx = mp_context()
    out = ctx.Queue()
    per = max(1, len(devs) // procs)
    ps = [worker(ctx, _handshaker, url, devs[i * per:(i + 1) * per], rounds // procs,
                concurrency, out)
          for i in range(procs)]
    t0 = time.monotonic()
    for p in ps:
        p.start()
    total = sum(item[1] for item in collect_items(out, len(ps), ps))
    elapsed = time.monotonic() - t0
    for p in ps:
        p.join()
    return {"handshakes": total, "seconds": elapsed, "per_s": total / elapsed}


def idle_holder(url: str, devs: list[Device], ready: Any, release: Any) -> None:
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

    run_loop(run())


def idle_rss(server: BenchServer, url: str, devs: list[Device]) -> dict[str, Any]:
    ctx = mp_context()
    ready, release = ctx.Event(), ctx.Event()
    # Warm the server (imports, pools) with a few sessions before the baseline.
    warm = ctx.Process(target=idle_holder, args=(url, devs[:20], ready, release))
    warm.start()
    ready.wait(120)
    release.set()
    warm.join()
    time.sleep(1.0)
    before = server.rss_bytes()
    ready, release = ctx.Event(), ctx.Event()
    p = ctx.Process(target=idle_holder, args=(url, devs, ready, release))
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
