"""The two campaigns: one node under crashes, and three nodes behind haproxy.

Both run the same fleet (publishers and compare-and-set writers on the SDK, raw
subscribers) without pause while faults come and go, check after every heal that no
device is left with a hung session, and hand the database to the checker at the end.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from relaybox.client import Identity
from tests.support import DeviceKey, free_port, fresh_database, pg_admin, seed
from tests.torture.checker import Report, check
from tests.torture.devices import CasWriter, Closed, Publisher, SdkDevice, Subscriber
from tests.torture.faults import DiskFull, Haproxy, Node, RedisServer, until
from tests.torture.ledger import Fault, Ledger, now
from tests.torture.race import race

CRASH_FAULTS = ("kill-group", "kill-writer", "kill-redis", "stop-server", "stop-writer",
                "disk-full")
CLUSTER_FAULTS = ("kill-node", "kill-writer", "stop-node", "kill-redis", "pg-terminate")


@dataclass
class Budget:
    """How long and how hard a campaign runs."""

    seconds: float = 40.0
    seed: int = field(default_factory=lambda: random.SystemRandom().randrange(1 << 30))
    users: int = 2
    publishers: int = 2  # per user
    cas_writers: int = 2  # per user, racing on the same keys
    subscribers: int = 2  # per user
    depth: int = 3  # publishes in flight per publisher
    pause_s: float = 0.02  # between one publisher worker's publishes
    between_s: tuple[float, float] = (1.0, 3.0)  # workload alone between faults
    hold_s: tuple[float, float] = (0.5, 3.0)  # how long a stop, outage or full disk lasts
    probe_s: float = 30.0  # bound for every device to be working again after a heal
    quiesce_s: float = 90.0  # bound for every publish answered, every event delivered
    races_per_cycle: int = 4  # cluster: same device on two nodes at once
    faults: tuple[str, ...] = ()  # empty: all of the campaign's kinds
    disk_mb: int = 256  # size of the tmpfs holding the data dir (crash campaign)

    @property
    def per_user(self) -> int:
        return self.publishers + self.cas_writers + self.subscribers


SERVER_ENV = {
    "RELAYBOX_GATEWAY_PUBLISH_RATE_PER_S": "0",
    # A wedged session is cut by the heartbeat (4410) within 2 x 5 s, inside the probe bound.
    "RELAYBOX_GATEWAY_HEARTBEAT_S": "5",
    "RELAYBOX_LOG_LEVEL": "info",
}


class Fleet:
    """Every device of the campaign, and the checks that need all of them."""

    def __init__(self, ledger: Ledger, rng: random.Random, budget: Budget) -> None:
        self.ledger = ledger
        self.rng = rng
        self.budget = budget
        self.closes: list[Closed] = []
        self.sdk: list[SdkDevice] = []
        self.subscribers: list[Subscriber] = []
        self.user_of: dict[str, str] = {}
        self.stop = asyncio.Event()
        self.tasks: list[asyncio.Task[None]] = []

    def build(self, base_url: str, ws_url: str, server_id: str,
              users: dict[str, list[DeviceKey]]) -> None:
        b = self.budget
        for devs in users.values():
            it = iter(devs)
            for role, n in (("publisher", b.publishers), ("cas", b.cas_writers)):
                for _ in range(n):
                    dev = next(it)
                    ident = Identity(server=base_url, server_id=server_id,
                                     device_id=dev.device_id, user_id=dev.user_id,
                                     private_key=bytes(dev.key))
                    device: SdkDevice = (
                        Publisher(ident, self.ledger, self.closes, self.rng, b.depth, b.pause_s)
                        if role == "publisher" else
                        CasWriter(ident, self.ledger, self.closes, self.rng, b.pause_s))
                    self.sdk.append(device)
            for _ in range(b.subscribers):
                dev = next(it)
                self.subscribers.append(Subscriber(ws_url, dev, self.ledger, self.closes,
                                                   self.rng))
                self.user_of[dev.device_id] = dev.user_id

    async def start(self) -> None:
        for d in self.sdk:
            await d.start()
            assert isinstance(d, Publisher | CasWriter)
            self.tasks.append(asyncio.create_task(d.run(self.stop)))
        for s in self.subscribers:
            s.start()

    async def probe(self, fault: Fault) -> None:
        """protocol.md §4, §6: after a heal every device works again (a ping through a live
        session) within the bound, or it was cut with a close code and came back."""
        deadline = now() + self.budget.probe_s
        devices: list[SdkDevice | Subscriber] = [*self.sdk, *self.subscribers]
        answers = await asyncio.gather(*(d.probe(deadline) for d in devices))
        for d, why in zip(devices, answers, strict=True):
            if why is not None:
                self.ledger.violation(
                    f"hung session: {d.role} {d.device_id} not working "
                    f"{self.budget.probe_s:.0f} s after {fault.kind}({fault.target}) was "
                    f"healed: {why}")

    def acked_heads(self) -> dict[tuple[str, str], int]:
        heads: dict[tuple[str, str], int] = defaultdict(int)
        for pid, (stream, seq, _) in self.ledger.acks.items():
            key = (self.ledger.published[pid].user_id, stream)
            heads[key] = max(heads[key], seq)
        return heads

    async def quiesce(self) -> None:
        """Stop publishing; every publish must be answered and every acked event delivered
        to every subscriber of its user (protocol.md §3: an acked event is never lost)."""
        self.stop.set()
        done, pending = await asyncio.wait(self.tasks, timeout=self.budget.quiesce_s)
        if pending:
            unanswered = [p for p in self.ledger.published if p not in self.ledger.acks
                          and p not in self.ledger.conflicts and p not in self.ledger.refused]
            self.ledger.violation(f"{len(unanswered)} publishes still unanswered "
                                  f"{self.budget.quiesce_s:.0f} s after the last heal, e.g. "
                                  f"{unanswered[:3]}")
            for t in pending:
                t.cancel()
        for t in done:
            if t.exception() is not None:
                self.ledger.violation(f"a device task failed: {t.exception()!r}")
        heads = self.acked_heads()

        def caught_up(s: Subscriber) -> bool:
            return all(s.have.get(stream, 0) >= head for (user, stream), head in heads.items()
                       if user == s.dev.user_id)

        for s in self.subscribers:
            try:
                await until(lambda s=s: caught_up(s), self.budget.quiesce_s,  # type: ignore[misc]
                            f"subscriber {s.device_id} to receive every acked event")
            except TimeoutError:
                behind = {stream: (s.have.get(stream, 0), head)
                          for (user, stream), head in heads.items()
                          if user == s.dev.user_id and s.have.get(stream, 0) < head}
                self.ledger.violation(f"subscriber {s.device_id} never received every acked "
                                      f"event: (have, acked head) {behind}")

    async def aclose(self) -> None:
        await asyncio.gather(*(d.aclose() for d in self.sdk),
                             *(s.aclose() for s in self.subscribers),
                             return_exceptions=True)


async def _server_id(url: str) -> str:
    async with httpx.AsyncClient(timeout=10) as http:
        return str((await http.get(url + "/api/v1/status")).json()["server_id"])


async def _hold(rng: random.Random, budget: Budget) -> None:
    await asyncio.sleep(rng.uniform(*budget.hold_s))  # fault pacing


async def _new_pid(get: Callable[[], int | None], old: int | None, what: str,
                   ledger: Ledger) -> None:
    try:
        await until(lambda: get() not in (None, old), 30, what)
    except TimeoutError as exc:
        ledger.violation(str(exc))


class _Cycles:
    """The loop common to both campaigns: workload, fault, heal, probe."""

    def __init__(self, budget: Budget, ledger: Ledger, rng: random.Random, fleet: Fleet,
                 kinds: tuple[str, ...], say: Callable[[str], None]) -> None:
        self.budget, self.ledger, self.rng, self.fleet = budget, ledger, rng, fleet
        self.kinds = budget.faults or kinds
        self.say = say

    async def run(self, inject: Callable[[str, Fault], Any],
                  between: Callable[[], Any] | None = None) -> None:
        end = now() + self.budget.seconds
        while now() < end:
            await asyncio.sleep(self.rng.uniform(*self.budget.between_s))  # workload pacing
            kind = self.rng.choice(self.kinds)
            fault = Fault(kind, "", now())
            self.ledger.faults.append(fault)
            await inject(kind, fault)
            if not fault.heal:
                fault.heal = now()
            probing = now()
            await self.fleet.probe(fault)
            probed = now()
            if between is not None:
                await between()
            self.say(f"cycle {len(self.ledger.faults)}: {kind}({fault.target}) "
                     f"fault {fault.heal - fault.start:.1f} s, probe {probed - probing:.1f} s, "
                     f"then {now() - probed:.1f} s; acked {len(self.ledger.acks)} "
                     f"violations {len(self.ledger.violations)}")


# -- one node: SQLite, embedded Redis, writer process ----------------------------------------
async def crash_campaign(base: Path, budget: Budget,
                         say: Callable[[str], None] = lambda _: None) -> Report:
    rng = random.Random(budget.seed)
    ledger = Ledger()
    ledger.notes.append(f"seed {budget.seed}")
    data = base / "data"
    disk = DiskFull(data, budget.disk_mb)
    kinds: tuple[str, ...] = CRASH_FAULTS
    why = disk.try_mount()
    if why is not None:
        ledger.notes.append(f"disk-full left out: {why}")
        kinds = tuple(k for k in kinds if k != "disk-full")
    else:
        ledger.notes.append(f"data dir on a {budget.disk_mb} MiB tmpfs")
    node = Node(data, free_port(), dict(SERVER_ENV), name="server")
    fleet: Fleet | None = None
    try:
        users = seed(data, {f"user{i}": budget.per_user for i in range(budget.users)})
        await node.start_async()
        fleet = Fleet(ledger, rng, budget)
        fleet.build(node.url, node.ws_url, await _server_id(node.url),
                    users)
        await fleet.start()

        async def inject(kind: str, fault: Fault) -> None:
            fault.target = "server"
            if kind == "kill-group":
                node.kill_group()
                await asyncio.sleep(rng.uniform(0.0, 0.5))  # fault pacing: time to be down
                fault.heal = now()
                await node.start_async()
            elif kind == "kill-writer":
                pid = node.writer_pid()
                fault.target = f"writer {pid}"
                if pid:
                    os.kill(pid, signal.SIGKILL)
                fault.heal = now()
                await _new_pid(node.writer_pid, pid, "a new writer process", ledger)
            elif kind == "kill-redis":
                pid = node.embedded_redis_pid()
                fault.target = f"embedded redis {pid}"
                if pid:
                    os.kill(pid, signal.SIGKILL)
                fault.heal = now()
                await _new_pid(node.embedded_redis_pid, pid, "the embedded redis restarted",
                               ledger)
            elif kind in ("stop-server", "stop-writer"):
                pid = node.pid if kind == "stop-server" else node.writer_pid()
                fault.target = f"pid {pid}"
                if pid:
                    os.kill(pid, signal.SIGSTOP)
                    try:
                        await _hold(rng, budget)
                    finally:
                        os.kill(pid, signal.SIGCONT)
                fault.heal = now()
            elif kind == "disk-full":
                taken = await asyncio.to_thread(disk.fill)
                fault.target = f"{taken >> 20} MiB filler"
                try:
                    await _hold(rng, budget)
                finally:
                    disk.free()
                fault.heal = now()

        await _Cycles(budget, ledger, rng, fleet, kinds, say).run(inject)
        await fleet.quiesce()
        await fleet.aclose()
        shutdown_at = now()
        rc = await node.stop_async()
        if rc != 0:
            ledger.violation(f"the clean stop (SIGTERM) ended with exit status {rc}")
        from relaybox.config import load_settings
        from relaybox.store.db import open_database

        db = open_database(load_settings(data, env={}))
        try:
            return check(db, ledger, fleet.closes, [d[0].user_id for d in users.values()],
                         [node.log_path] if node.log_path else [], shutdown_at)
        finally:
            db.close()
    finally:
        if fleet is not None:
            await fleet.aclose()
        node.cleanup()
        disk.unmount()


# -- three nodes, PostgreSQL, redis-server, haproxy ----------------------------------------
def terminate_backends(url: str) -> int:
    """pg_terminate_backend on every other connection to the campaign's database."""
    db = pg_admin(url)
    try:
        rows = db.execute_sql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                              "WHERE datname = current_database() "
                              "AND pid <> pg_backend_pid()").fetchall()
        return len(rows)
    finally:
        db.close()


async def cluster_campaign(base: Path, budget: Budget, pg_url: str,
                           say: Callable[[str], None] = lambda _: None) -> Report:
    rng = random.Random(budget.seed)
    ledger = Ledger()
    ledger.notes.append(f"seed {budget.seed}")
    (base / "redis").mkdir(parents=True, exist_ok=True)
    redis = RedisServer(base / "redis", free_port())
    nodes: list[Node] = []
    proxy: Haproxy | None = None
    fleet: Fleet | None = None
    with fresh_database(pg_url, "relaybox_torture") as db_url:
        try:
            await redis.start()
            for i in range(3):
                data = base / f"node{i}" / "data"
                data.mkdir(parents=True)
                (data / "relaybox.toml").write_text(
                    f'database_url = "{db_url}"\nredis_url = "{redis.url}"\n')
                nodes.append(Node(data, free_port(), dict(SERVER_ENV), name=f"node{i}"))
            users = seed(nodes[0].data_dir, {f"user{i}": budget.per_user
                                             for i in range(budget.users)})
            racer = seed(nodes[0].data_dir, {"racer": 1})["racer"][0]
            await asyncio.gather(*(n.start_async() for n in nodes))
            proxy = Haproxy(base, free_port(), nodes)
            await proxy.start()
            fleet = Fleet(ledger, rng, budget)
            fleet.build(proxy.url, proxy.ws_url, await _server_id(proxy.url),
                        users)
            await fleet.start()

            async def inject(kind: str, fault: Fault) -> None:
                node = rng.choice(nodes)
                fault.target = node.name
                if kind == "kill-node":
                    node.kill_group()
                    await _hold(rng, budget)
                    fault.heal = now()
                    await node.start_async()
                elif kind == "kill-writer":
                    pid = node.writer_pid()
                    if pid:
                        os.kill(pid, signal.SIGKILL)
                    fault.heal = now()
                    await _new_pid(node.writer_pid, pid, f"a new writer on {node.name}", ledger)
                elif kind == "stop-node":
                    os.kill(node.pid, signal.SIGSTOP)
                    try:
                        await _hold(rng, budget)
                    finally:
                        os.kill(node.pid, signal.SIGCONT)
                    fault.heal = now()
                elif kind == "kill-redis":
                    fault.target = "redis-server"
                    redis.kill()
                    await _hold(rng, budget)
                    fault.heal = now()
                    await redis.start()
                elif kind == "pg-terminate":
                    n = await asyncio.to_thread(terminate_backends, db_url)
                    fault.target = f"{n} connections"
                    fault.heal = now()

            async def races() -> None:
                for _ in range(budget.races_per_cycle):
                    a, b = rng.sample(nodes, 2)
                    await race(a, b, racer, ledger)

            await _Cycles(budget, ledger, rng, fleet, CLUSTER_FAULTS, say).run(inject, races)
            await fleet.quiesce()
            await fleet.aclose()
            shutdown_at = now()
            for n in nodes:
                rc = await n.stop_async()
                if rc != 0:
                    ledger.violation(f"{n.name}: the clean stop ended with exit status {rc}")
            db = pg_admin(db_url)
            try:
                return check(db, ledger, fleet.closes, [d[0].user_id for d in users.values()],
                             [n.log_path for n in nodes if n.log_path], shutdown_at)
            finally:
                db.close()
        finally:
            if fleet is not None:
                await fleet.aclose()
            if proxy is not None:
                proxy.stop()
            for n in nodes:
                n.cleanup()
            redis.kill()
