"""Health of the parts a server depends on (database, Redis), behind circuit breakers.

A failing dependency is probed with growing pauses (a circuit breaker), never in a tight
retry loop: while a breaker is open every caller gets "down" at once instead of waiting
on a dead socket. The status route, the metrics and the logs read the same state.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sanic import Sanic

from relaybox.aio import cancel_and_wait
from relaybox.config import Settings
from relaybox.store import queries
from relaybox.store.db import ping

if TYPE_CHECKING:
    from relaybox.server.context import ServerContext

log = logging.getLogger("relaybox.health")

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"
PROBE_TIMEOUT_S = 3.0


class CircuitBreaker:
    """closed → (``threshold`` failures in a row) → open → after a pause, half-open.

    In half-open one trial call is let through: success closes the breaker, failure opens
    it again with a pause twice as long (``base_s`` doubling up to ``max_s``, with jitter so
    that many processes do not retry in step).
    """

    def __init__(self, name: str, *, threshold: int = 1, base_s: float = 0.25,
                 max_s: float = 5.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.name = name
        self.threshold = threshold
        self.base_s = base_s
        self.max_s = max_s
        self.clock = clock
        self.state = CLOSED
        self.failures = 0
        self.opens = 0
        self.retry_at = 0.0
        self.last_error = ""
        self.changed_at = time.time()
        self._trial_at: float | None = None

    @property
    def up(self) -> bool:
        return self.state == CLOSED

    def allow(self) -> bool:
        """May a call be tried now? (False: report the dependency as down right away.)"""
        if self.state == CLOSED:
            return True
        now = self.clock()
        if self.state == OPEN:
            if now < self.retry_at:
                return False
            self.state = HALF_OPEN
            self._trial_at = now
            return True
        # HALF_OPEN: one trial at a time; a trial that never reported back expires.
        if self._trial_at is not None and now - self._trial_at < self.max_s:
            return False
        self._trial_at = now
        return True

    def success(self) -> bool:
        """Record a good call; True when this closed an open breaker (a recovery)."""
        recovered = self.state != CLOSED
        self.state = CLOSED
        self.failures = 0
        self.opens = 0
        self._trial_at = None
        self.last_error = ""
        if recovered:
            self.changed_at = time.time()
        return recovered

    def failure(self, error: str = "") -> bool:
        """Record a failed call; True when this opened a closed breaker (an outage)."""
        self.failures += 1
        self.last_error = error[:200]
        if self.state == CLOSED and self.failures < self.threshold:
            return False
        opened = self.state == CLOSED
        pause = min(self.max_s, self.base_s * (2 ** self.opens))
        self.retry_at = self.clock() + pause * random.uniform(0.8, 1.2)
        self.opens += 1
        self.state = OPEN
        self._trial_at = None
        if opened:
            self.changed_at = time.time()
        return opened


@dataclass(frozen=True, slots=True)
class Snapshot:
    database: bool
    redis: bool

    @property
    def ok(self) -> bool:
        return self.database and self.redis

    @property
    def failing(self) -> list[str]:
        return [name for name, ok in (("database", self.database), ("redis", self.redis))
                if not ok]


class HealthMonitor:
    """Probes the database and Redis of one server process, in the background and on demand."""

    def __init__(self, ctx: ServerContext, *, interval_s: float = 1.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.ctx = ctx
        self.interval_s = interval_s
        # Probes are cheap: retry at least every 2 s so a recovery is seen quickly.
        self.database = CircuitBreaker("database", max_s=2.0, clock=clock)
        self.redis = CircuitBreaker("redis", max_s=2.0, clock=clock)
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self.on_redis_recovered: list[Callable[[], Any]] = [lambda: resync_sessions(ctx)]
        self._sub: Any = None  # the bus's pub/sub object last seen subscribed

    def snapshot(self) -> Snapshot:
        """The last known state, without probing."""
        return Snapshot(database=self.database.up, redis=self.redis.up)

    async def check(self) -> Snapshot:
        """Probe what the breakers allow (concurrent callers share one probe)."""
        async with self._lock:
            await asyncio.gather(self._check_database(), self._check_redis())
        return self.snapshot()

    async def _check_database(self) -> None:
        br = self.database
        if not br.allow():
            return
        ctx = self.ctx
        loop = asyncio.get_running_loop()
        error = ""
        try:
            ok = await asyncio.wait_for(
                loop.run_in_executor(ctx.eventlog.readers, ping, ctx.db), PROBE_TIMEOUT_S)
            if ok and not ctx.eventlog.healthy:
                # Reads work but the last commit failed: a write round trip tells whether
                # writes work again (an empty transaction in the writer thread).
                fut = ctx.eventlog.probe()
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(asyncio.shield(fut), PROBE_TIMEOUT_S)
                ok = ctx.eventlog.healthy
                error = "" if ok else "writes fail"
            elif not ok:
                error = "does not answer"
        except TimeoutError:
            ok, error = False, f"no answer within {PROBE_TIMEOUT_S:g} s"
        except Exception as exc:
            ok, error = False, str(exc)
        self._record(br, ok, error)

    async def _check_redis(self) -> None:
        br = self.redis
        bus = self.ctx.bus
        if bus is None or not br.allow():
            return
        ok = await bus.ping()
        recovered = self._record(br, ok, "" if ok else "does not answer")
        if ok and self._subscription_renewed() and not recovered:
            # The outage was shorter than our probing, but the subscription was lost: what
            # other processes relayed meanwhile never arrived here.
            log.info("redis subscription renewed; sessions re-read their streams")
            self._redis_recovered()

    def _subscription_renewed(self) -> bool:
        """True once each time the bus re-subscribed since the last look.

        Reads the bus's current pub/sub object: Bus makes a new one for every
        (re)subscription, so a different one means the subscription was lost and renewed.
        """
        sub = self.ctx.bus.pubsub if self.ctx.bus is not None else None
        if sub is None or sub is self._sub or not getattr(sub, "subscribed", False):
            return False
        first = self._sub is None
        self._sub = sub
        return not first

    def _record(self, br: CircuitBreaker, ok: bool, error: str) -> bool:
        """Update the breaker; True when this was a recovery."""
        if ok:
            if br.success():
                log.warning("%s is back", br.name)
                if br is self.redis:
                    self._sub = self.ctx.bus.pubsub if self.ctx.bus is not None else None
                    self._redis_recovered()
                return True
        elif br.failure(error):
            log.error("%s is down: %s", br.name, error)
        return False

    def _redis_recovered(self) -> None:
        for cb in self.on_redis_recovered:
            _spawn(cb())

    # -- background probing ----------------------------------------------------------------
    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(),
                                                            name="relaybox-health")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None

    async def _run(self) -> None:
        while True:
            try:
                await self.check()
            except Exception:
                log.exception("health probe failed")
            await asyncio.sleep(self.interval_s)


_background: set[asyncio.Future[Any]] = set()


def _spawn(result: Any) -> None:
    if asyncio.iscoroutine(result):
        task = asyncio.ensure_future(result)
        _background.add(task)
        task.add_done_callback(_background.discard)


async def resync_sessions(ctx: ServerContext) -> None:
    """After a Redis outage: let local sessions catch up on events other processes stored.

    While Redis was down, events committed by other server processes were not relayed
    here; each session learns the current stream heads and its pump sends what it missed
    from storage, exactly as after a reconnect (protocol.md §3 Catch-up).
    """
    hub = ctx.hub
    for user_id in list(hub.by_user):
        try:
            heads = await ctx.eventlog.read(queries.stream_heads, user_id)
        except Exception as exc:
            log.warning("resync after the Redis outage failed: %s", exc)
            return
        for session in list(hub.by_user.get(user_id, ())):
            if not session.ready:  # its handshake reads the positions itself
                continue
            if session.state.learn_heads(heads):  # streams born or grown meanwhile
                session.wake.set()


# -- the app side ----------------------------------------------------------------------------
def install(app: Sanic, settings: Settings) -> None:
    """Start a HealthMonitor in each server process (``app.ctx.health``). Idempotent."""
    if getattr(app.ctx, "health_installed", False):
        return
    app.ctx.health_installed = True
    app.ctx.health = None

    @app.before_server_start
    async def start_health(app: Sanic) -> None:
        monitor = HealthMonitor(app.ctx.relay)
        app.ctx.health = monitor
        await monitor.check()
        monitor.start()

    @app.after_server_stop
    async def stop_health(app: Sanic) -> None:
        monitor: HealthMonitor | None = app.ctx.health
        if monitor is not None:
            await monitor.stop()

