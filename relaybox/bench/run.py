"""``relaybox bench`` on a throwaway local server: every part, and the summary against
the targets (docs/performance.md)."""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from relaybox.bench.latency import latency
from relaybox.bench.relay import catchup, relay
from relaybox.bench.seed import seed_devices, seed_devices_more
from relaybox.bench.server import BenchServer, host_cpu
from relaybox.bench.sessions import handshakes, idle_rss

TARGETS = {
    "throughput_events_per_s": (">=", 15000),
    "latency_ms_p99_at_2000": ("<=", 3.0),
    "catchup_events_per_s": (">=", 20000),
    "handshakes_per_s": (">=", 1000),
    "idle_kib_per_session": ("<=", 40),
}


class Parts:
    """The parts of one run in order, each started once the previous one settled."""

    def __init__(self, want: set[str], settle_s: float, log: Callable[[str], None]) -> None:
        self.want = want
        self.settle_s = settle_s
        self.log = log
        self.ran = False

    def start(self, part: str, what: str) -> bool:
        """True if ``part`` is wanted; then it has waited for the previous part to settle
        and logged ``what``."""
        if part not in self.want:
            return False
        # A part's write burst is still being checkpointed for a few seconds after it
        # ends (docs/performance.md); the next part starts after that.
        if self.ran and self.settle_s > 0:
            time.sleep(self.settle_s)
        self.ran = True
        self.log(what)
        return True


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
        parts = Parts(want, settle_s, log)
        if parts.start("throughput", f"throughput: {events} events A → B …"):
            cpu0 = server.cpu_seconds()
            r = relay(url, a, b, events)
            r["server_cpu_us_per_event"] = (server.cpu_seconds() - cpu0) / events * 1e6
            results["throughput"] = r
        n = min(events, 20000)
        if parts.start("latency", f"latency: {n} events at 2,000/s …"):
            host0 = host_cpu()
            results["latency_at_2000"] = latency(url, c, d, n, rate=2000,
                                                 probe_dir=server.data_dir)
            results["latency_at_2000"]["host_cpu_s"] = host_cpu(since=host0)
        if parts.start("catchup", f"catch-up: {catchup_events} events …"):
            results["catchup"] = catchup(url, a, d, catchup_events)
        if parts.start("handshakes", "handshakes …"):
            cpu0 = server.cpu_seconds()
            r = handshakes(url, extra[:200], handshake_rounds, procs=1)
            r["server_cpu_ms_per_handshake"] = (server.cpu_seconds() - cpu0) / r["handshakes"] * 1e3
            results["handshakes"] = r
        if parts.start("idle", f"idle sessions: {n_idle} …"):
            results["idle"] = idle_rss(server, url, extra[:n_idle])
    finally:
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    results["summary"] = summarize(results)
    return results


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
