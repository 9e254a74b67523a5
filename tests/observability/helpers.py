"""Observability test helpers: scraping /metrics, waiting for conditions, devices, Redis."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from relaybox.protocol.encoding import uuid4
from tests.support import DeviceKey, Gw, Server, free_port

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def start_server(data_dir: Path, *, args: list[str] | None = None,
                 extra_env: dict[str, str] | None = None, **env: Any) -> Server:
    """``relaybox serve`` on a free port; ``env`` keys are RELAYBOX_* names without prefix."""
    variables = {f"RELAYBOX_{k.upper()}": str(v) for k, v in env.items()}
    srv = Server(data_dir, free_port(), {**variables, **(extra_env or {})},
                 extra_args=args or [])
    srv.start()
    return srv


def stop_server(srv: Server) -> None:
    srv.stop()
    srv.kill()


def scrape_text(server: Server, token: str | None = None) -> str:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    r = httpx.get(server.url + "/metrics", headers=headers, timeout=10)
    assert r.status_code == 200, r.text
    return r.text


def parse(text: str) -> tuple[Samples, dict[str, str]]:
    """(samples by (name, sorted labels), metric types by family name)."""
    samples: Samples = {}
    types: dict[str, str] = {}
    for fam in text_string_to_metric_families(text):
        types[fam.name] = fam.type
        for s in fam.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples, types


def scrape(server: Server, token: str | None = None) -> Samples:
    return parse(scrape_text(server, token))[0]


def value(samples: Samples, name: str, **labels: str) -> float:
    """One sample's value (0 when absent)."""
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def total(samples: Samples, name: str, **labels: str) -> float:
    """Sum over the samples of ``name`` whose labels include ``labels``."""
    return sum(v for (n, ls), v in samples.items()
               if n == name and all(dict(ls).get(k) == w for k, w in labels.items()))


def wait_until(pred: Callable[[], Any], timeout: float = 15, what: str = "condition") -> Any:
    """Poll ``pred`` until it returns something true (or fail after ``timeout``)."""
    deadline = time.monotonic() + timeout
    while True:
        got = pred()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


async def await_until(pred: Callable[[], Awaitable[Any]], timeout: float = 15,
                      what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = await pred()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def status(server: Server) -> tuple[int, dict[str, Any]]:
    r = httpx.get(server.url + "/api/v1/status", timeout=10)
    return r.status_code, r.json()


# -- devices ------------------------------------------------------------------------------------
class Device:
    """A gateway session that records events, acks them when asked, and tracks its publishes."""

    def __init__(self, gw: Gw, dev: DeviceKey) -> None:
        self.gw = gw
        self.dev = dev
        self.events: dict[str, dict[int, str]] = {}  # stream -> seq -> id
        self.acks: dict[str, tuple[str, int]] = {}  # publish id -> (stream, seq)
        self.nacks: dict[str, str] = {}  # publish id -> code
        self.other: list[dict[str, Any]] = []
        self.auto_ack = True
        self._reader: asyncio.Task[None] | None = None
        self.closed = asyncio.Event()

    @classmethod
    async def connect(cls, server: Server, dev: DeviceKey, *, auto_ack: bool = True) -> Device:
        gw = await Gw.connect(server, dev, max_queue=None)
        assert gw.welcome["type"] == "welcome", gw.welcome
        d = cls(gw, dev)
        d.auto_ack = auto_ack
        d._reader = asyncio.create_task(d._read())
        return d

    async def _read(self) -> None:
        try:
            while True:
                msg = json.loads(await self.gw.ws.recv())
                kind = msg["type"]
                if kind == "event":
                    self.events.setdefault(msg["stream"], {})[msg["seq"]] = msg["id"]
                    if self.auto_ack:
                        await self.gw.send({"type": "ack", "stream": msg["stream"],
                                            "seq": msg["seq"]})
                elif kind == "ack":
                    self.acks[msg["id"]] = (msg["stream"], msg["seq"])
                elif kind == "nack":
                    self.nacks[msg["id"]] = msg["code"]
                else:
                    self.other.append(msg)
        except Exception:
            self.closed.set()

    async def publish(self, stream: str, body: Any = None) -> str:
        pid = uuid4()
        await self.gw.send({"type": "publish", "id": pid, "stream": stream,
                            "body": body if body is not None else {"n": pid[:8]}})
        return pid

    async def ack_all(self) -> None:
        for stream, seqs in self.events.items():
            if seqs:
                await self.gw.send({"type": "ack", "stream": stream, "seq": max(seqs)})

    def answered(self, ids: list[str]) -> bool:
        return all(i in self.acks or i in self.nacks for i in ids)

    async def close(self) -> None:
        await self.gw.close()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(BaseException):
                await self._reader


# -- Redis ----------------------------------------------------------------------------------------
def pid_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return True
    return stat.rpartition(b")")[2].split()[0] != b"Z"


def kill(pid: int, sig: int = signal.SIGKILL) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)
