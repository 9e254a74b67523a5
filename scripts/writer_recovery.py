#!/usr/bin/env python3
"""How long publishes stall when the writer process dies, and how long ``relaybox serve``
takes from exec to its first publish ack after a kill -9 (docs/performance.md).

    python scripts/writer_recovery.py --trials 5

Both runs use one publisher that keeps one publish in flight and sends a publish answered
``unavailable`` again with the same id (as clients do, protocol.md §3 Publish):

- respawn: SIGKILL the server's writer process; the stall is the time from the kill to
  the first ack that follows it. Each trial starts a new server and kills its writer
  process ``--kills`` times, each new one after it served for two seconds: the first
  kill and the next ones are reported apart (a restart policy may treat them apart).
- restart: SIGKILL the server, exec ``relaybox serve`` on the same data dir, and measure
  the time from the exec to the first ack (connection attempts start at once and repeat).

Prints one line per trial and the median and worst of each run, in milliseconds.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import orjson

from relaybox.bench import BenchServer, Device, connect, seed_devices

LIVED_S = 2.0  # how long each writer process serves before it is killed


def _writer_pid(server_pid: int) -> int:
    for task in Path(f"/proc/{server_pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            with contextlib.suppress(OSError):
                if b"relaybox.store.writer_main" in Path(f"/proc/{child}/cmdline").read_bytes():
                    return int(child)
    raise RuntimeError("no writer process")


async def _publish_once(ws: Any, pid: str) -> bool:
    """Publish ``pid``; True when acked, False when answered with an error."""
    await ws.send(orjson.dumps({"type": "publish", "id": pid, "stream": "recovery",
                                "body": 1}).decode())
    while True:
        msg = orjson.loads(await ws.recv())
        if msg.get("id") == pid and msg["type"] in ("ack", "nack", "error"):
            return bool(msg["type"] == "ack")


async def _respawn_stalls(server: BenchServer, dev: Device, kills: int) -> list[float]:
    """Kill the writer process ``kills`` times, each new one after it has served for
    ``LIVED_S``; the stall of each kill."""
    assert server.proc is not None
    ws, _ = await connect(server.ws_url, dev)
    stalls = []
    for _ in range(kills):
        lived = time.monotonic() + LIVED_S
        while time.monotonic() < lived:  # it commits for a while before the kill
            assert await _publish_once(ws, str(uuid.uuid4()))
        os.kill(_writer_pid(server.proc.pid), signal.SIGKILL)
        killed = time.monotonic()
        pid = str(uuid.uuid4())
        while not await _publish_once(ws, pid):
            pass
        stalls.append(time.monotonic() - killed)
    await ws.close()
    return stalls


async def _first_ack(url: str, dev: Device, deadline: float) -> None:
    pid = str(uuid.uuid4())
    while time.monotonic() < deadline:
        try:
            ws, _ = await connect(url, dev)
        except Exception:  # the port is not open yet, or the server is starting
            await asyncio.sleep(0.005)
            continue
        try:
            while not await _publish_once(ws, pid):
                pass
            return
        finally:
            await ws.close()
    raise RuntimeError("no ack within the deadline")


def _restart(server: BenchServer, dev: Device) -> float:
    """kill -9 the server, exec a new one on the same port and data dir: exec → ack."""
    assert server.proc is not None
    server.proc.kill()
    server.proc.wait()
    _kill_embedded_redis(server.data_dir)  # as systemd does: the whole unit dies
    env = {**os.environ, "RELAYBOX_DATA_DIR": str(server.data_dir),
           "RELAYBOX_GATEWAY_PUBLISH_RATE_PER_S": "0", "RELAYBOX_LOG_LEVEL": "warning",
           "RELAYBOX_METRICS_ENABLED": "false",
           "RELAYBOX_GATEWAY_HANDSHAKE_FAILURES_PER_MIN": "1000000"}
    t0 = time.monotonic()
    server.proc = subprocess.Popen(  # noqa: S603 - our own interpreter and module
        [sys.executable, "-m", "relaybox", "serve", "--port", str(server.port)],
        env=env, stdout=server.log, stderr=subprocess.STDOUT)
    asyncio.run(_first_ack(server.ws_url, dev, t0 + 60))
    return time.monotonic() - t0


def _report(name: str, values: list[float]) -> None:
    ms = sorted(v * 1000 for v in values)
    print(f"{name}: median {statistics.median(ms):.0f} ms, worst {ms[-1]:.0f} ms "
          f"({len(ms)} trials)", flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--trials", type=int, default=5)
    ap.add_argument("--only", choices=["respawn", "restart"])
    ap.add_argument("--kills", type=int, default=3,
                    help="writer kills per server in the respawn run")
    args = ap.parse_args()
    stalls: list[float] = []
    again: list[float] = []
    restarts: list[float] = []
    with tempfile.TemporaryDirectory(prefix="relaybox-recovery-") as tmp:
        for i in range(args.trials if args.only != "restart" else 0):
            server = BenchServer(Path(tmp) / f"r{i}" / "data")
            server.data_dir.parent.mkdir(parents=True)
            (dev,) = seed_devices(server.data_dir, per_user=1)[0]
            server.start()
            try:
                first, *later = asyncio.run(_respawn_stalls(server, dev, args.kills))
                stalls.append(first)
                again.extend(later)
                print(f"respawn {i}: {first * 1000:.0f} ms, then "
                      + ", ".join(f"{x * 1000:.0f}" for x in later) + " ms", flush=True)
            finally:
                server.stop()
        if args.only != "respawn":
            server = BenchServer(Path(tmp) / "restart" / "data")
            server.data_dir.parent.mkdir(parents=True)
            (dev,) = seed_devices(server.data_dir, per_user=1)[0]
            server.start()
            try:
                for i in range(args.trials):
                    restarts.append(_restart(server, dev))
                    print(f"restart {i}: {restarts[-1] * 1000:.0f} ms", flush=True)
            finally:
                if server.proc is not None:
                    server.proc.kill()
                    server.proc.wait()
                    server.proc = None
                _kill_embedded_redis(server.data_dir)
    if stalls:
        _report("writer respawn, first kill: kill → first ack", stalls)
    if again:
        _report(f"writer respawn, next kills ({LIVED_S:g} s apart): kill → first ack", again)
    if restarts:
        _report("server restart: exec → first ack", restarts)
    return 0


def _kill_embedded_redis(data_dir: Path) -> None:
    """A killed server leaves its embedded Redis running: stop it."""
    for f in (data_dir / "run").glob("redis.rdb.settings"):
        with contextlib.suppress(Exception):
            pidfile = orjson.loads(f.read_text()).get("pidfile")
            pid = int(Path(pidfile).read_text().strip()) if pidfile else 0
            if pid:
                os.kill(pid, signal.SIGKILL)


if __name__ == "__main__":
    sys.exit(main())
