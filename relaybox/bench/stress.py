"""``relaybox bench --stress``: ramp events/s and open sessions in steps until an
objective breaks, and report where and what broke first (docs/performance.md)."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import orjson

from relaybox.bench.connection import Device, catch_up, lean_connect
from relaybox.bench.latency import LiveReceiver
from relaybox.bench.seed import seed_devices, seed_devices_more
from relaybox.bench.server import BenchServer
from relaybox.bench.sessions import idle_holder
from relaybox.bench.stats import ms_summary
from relaybox.bench.workers import WorkerFailed, collect_items, mp_context, run_loop, worker


@dataclass(frozen=True)
class Objectives:
    """What a step must hold to pass."""

    p99_ms: float = 25.0  # publish → delivery latency, 99th percentile
    max_rss_mib: float = 1024.0  # the server process's memory (local server only)
    min_rate_ratio: float = 0.9  # events/s reached, against the step's rate


@dataclass(frozen=True)
class Ramp:
    rate: float = 500.0  # events/s of the first step
    connections: int = 100  # idle sessions held during the first step (local only)
    growth: float = 2.0  # each step multiplies both by this
    steps: int = 6
    step_s: float = 5.0  # publishing time of one step
    grace_s: float = 5.0  # how long a step waits for its last deliveries


def _step_run(url: str, a: Device, b: Device, rate: float, seconds: float, grace_s: float,
              out: Any) -> None:
    """Publish at ``rate`` for ``seconds`` (at most 1,000 unacked); B measures latency.
    Ends by itself ``grace_s`` after the last publish, counting what never arrived."""
    async def run() -> None:
        rx, welcome = await lean_connect(url, b)
        await catch_up(rx)  # only this step's events are measured
        live = LiveReceiver(rx, "stress", int(welcome["streams"].get("stress", 0)))
        lat = live.lat
        tx, _ = await lean_connect(url, a)
        acked = nacked = 0
        nack_codes: dict[str, int] = {}

        def on_reply(text: str) -> None:
            nonlocal acked, nacked
            msg = orjson.loads(text)
            if msg["type"] == "ack":
                acked += 1
            elif msg["type"] == "nack":
                nacked += 1
                code = str(msg.get("code") or msg.get("reason") or "?")
                nack_codes[code] = nack_codes.get(code, 0) + 1

        tx.on_message = on_reply
        n = max(1, int(rate * seconds))
        sent = 0
        t0 = time.monotonic()
        end = t0 + seconds * 2  # publishing may run late; it stops at twice its time
        while sent < n and time.monotonic() < end:
            due = min(n, int((time.monotonic() - t0) * rate) + 1)
            while sent < due and sent - acked - nacked < 1000:
                tx.send('{"type":"publish","id":"' + str(uuid.uuid4()) +
                        '","stream":"stress","body":{"t":' + str(time.monotonic_ns()) + '}}')
                sent += 1
            if tx.closed.done() or rx.closed.done():
                break
            await asyncio.sleep(0.001)
        t_pub = time.monotonic() - t0
        deadline = time.monotonic() + grace_s
        while len(lat) < sent - nacked and time.monotonic() < deadline:
            if tx.closed.done() or rx.closed.done():
                break
            await asyncio.sleep(0.01)
        elapsed = time.monotonic() - t0
        out.put(("step", {
            "sent": sent, "planned": n, "acked": acked, "nacked": nacked,
            "nack_codes": nack_codes, "delivered": len(lat),
            "lost": max(0, sent - nacked - len(lat)),
            "closed": tx.closed.done() or rx.closed.done(),
            "publish_s": round(t_pub, 3),
            "events_per_s": round(len(lat) / max(elapsed if len(lat) < n else t_pub, 1e-9), 1),
            **ms_summary(lat, "latency_ms"),
        }))
        with contextlib.suppress(Exception):
            await asyncio.wait_for(tx.close(), 2)
            await asyncio.wait_for(rx.close(), 2)

    run_loop(run())


def judge(step: dict[str, Any], obj: Objectives, rss_mib: float | None) -> list[str]:
    """The objectives a step broke, most telling first: errors, then latency, then
    memory, then a rate the server could not keep up with."""
    broke = []
    if step.get("error"):
        broke.append(f"error: {step['error']}")
    if step.get("nacked"):
        broke.append(f"nacks: {step['nacked']} {step.get('nack_codes')}")
    if step.get("lost"):
        broke.append(f"lost: {step['lost']} events not delivered within the grace time")
    if step.get("closed"):
        broke.append("a session was closed by the server")
    if step.get("latency_ms_p99", 0) > obj.p99_ms:
        broke.append(f"p99 latency {step['latency_ms_p99']:.1f} ms > {obj.p99_ms:g} ms")
    if rss_mib is not None and rss_mib > obj.max_rss_mib:
        broke.append(f"server memory {rss_mib:.0f} MiB > {obj.max_rss_mib:g} MiB")
    if "events_per_s" in step and step["events_per_s"] < obj.min_rate_ratio * step["rate"]:
        broke.append(f"rate: {step['events_per_s']:,.0f} events/s reached of "
                     f"{step['rate']:,.0f}")
    return broke


def ramp(url: str, a: Device, b: Device, idle: list[Device], ramp: Ramp, obj: Objectives,
         *, rss: Callable[[], int] | None = None,
         log: Callable[[str], None] = print) -> dict[str, Any]:
    """Steps of growing events/s (and idle sessions, with ``idle`` devices) until one
    breaks an objective; every step is bounded in time, and so is the whole run."""
    ctx = mp_context()
    steps: list[dict[str, Any]] = []
    broken: dict[str, Any] | None = None
    for k in range(ramp.steps):
        rate = ramp.rate * ramp.growth ** k
        conns = min(len(idle), int(ramp.connections * ramp.growth ** k)) if idle else 0
        step: dict[str, Any] = {"step": k + 1, "rate": rate, "connections": conns}
        log(f"step {k + 1}: {rate:,.0f} events/s, {conns} idle sessions …")
        budget = ramp.step_s * 2 + ramp.grace_s + 30
        holder = None
        release = ctx.Event()
        try:
            if conns:
                ready = ctx.Event()
                holder = ctx.Process(target=idle_holder, args=(url, idle[:conns], ready,
                                                                release))
                holder.start()
                t_end = time.monotonic() + budget
                while not ready.wait(0.5):
                    if not holder.is_alive() or time.monotonic() > t_end:
                        raise WorkerFailed(f"{conns} idle sessions could not all connect")
            out = ctx.Queue()
            p = worker(ctx, _step_run, url, a, b, rate, ramp.step_s, ramp.grace_s, out)
            p.start()
            try:
                step.update(collect_items(out, 1, [p], timeout=budget)[0][1])
            finally:
                p.join(5)
                if p.is_alive():
                    p.kill()
        except WorkerFailed as exc:
            step["error"] = str(exc)
        rss_mib = rss() / 2**20 if rss is not None else None
        if rss_mib is not None:
            step["server_rss_mib"] = round(rss_mib, 1)
        release.set()
        if holder is not None:
            holder.join(30)
            if holder.is_alive():
                holder.kill()
        step["broke"] = judge(step, obj, rss_mib)
        steps.append(step)
        if step["broke"]:
            broken = step
            log(f"step {k + 1} broke: {'; '.join(step['broke'])}")
            break
    last_ok = steps[-2] if broken is not None and len(steps) > 1 else (
        None if broken is not None else steps[-1])
    return {
        "objectives": asdict(obj), "ramp": asdict(ramp), "steps": steps,
        "breaking_point": None if broken is None else {
            "step": broken["step"], "rate": broken["rate"],
            "connections": broken["connections"], "broke_first": broken["broke"][0],
            "broke": broken["broke"]},
        "last_good": None if last_ok is None else {
            "step": last_ok["step"], "rate": last_ok["rate"],
            "connections": last_ok["connections"],
            "events_per_s": last_ok.get("events_per_s"),
            "latency_ms_p99": last_ok.get("latency_ms_p99")},
    }


def run_local(ramp_: Ramp, obj: Objectives, *, log: Callable[[str], None] = print,
              env: dict[str, str] | None = None) -> dict[str, Any]:
    """The ramp against a throwaway local server (its memory is an objective too)."""
    import os

    tmp = Path(tempfile.mkdtemp(prefix="relaybox-stress-"))
    server = BenchServer(tmp / "data", env=env or {})
    server_env = {**os.environ, **(env or {})}
    try:
        log("seeding devices…")
        a, b = seed_devices(server.data_dir, per_user=2, env=server_env)[0]
        most = int(ramp_.connections * ramp_.growth ** (ramp_.steps - 1)) if (
            ramp_.connections) else 0
        idle = seed_devices_more(server.data_dir, most, env=server_env) if most else []
        server.start()
        res = ramp(server.ws_url, a, b, idle, ramp_, obj, rss=server.rss_bytes, log=log)
    finally:
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return {"server": "local", **res}


def run_target(base: str, admin_token: str, ramp_: Ramp, obj: Objectives, *,
               log: Callable[[str], None] = print) -> dict[str, Any]:
    """The ramp of events/s against a running server; no idle sessions (each needs a
    device, made by a rate-limited pairing claim) and no memory objective."""
    from relaybox.bench.target import TargetAccounts, gateway_url

    accounts = TargetAccounts(base, admin_token, log=log)
    try:
        a, b = accounts.make_devices(accounts.make_user(), 2)
        res = ramp(gateway_url(base), a, b, [], Ramp(**{**asdict(ramp_), "connections": 0}),
                   obj, log=log)
    finally:
        cleanup = accounts.cleanup()
        accounts.close()
    return {"server": base, "cleanup": cleanup, "refusals": accounts.refusals,
            "skipped": {"memory": "the server's memory is not visible from here",
                        "connections": "idle sessions are not ramped against --target"},
            **res}
