"""A throwaway ``relaybox serve`` process for the bench, and what it costs the machine."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx


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
