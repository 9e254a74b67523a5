"""Rate limits: HTTP limits shared through Redis (the ``limits`` library), and the publish
bucket of each gateway device, local to a process alone or leased from Redis among peers."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio as aioredis
from limits import RateLimitItemPerMinute
from limits.aio.storage import MemoryStorage, RedisStorage, Storage
from limits.aio.strategies import MovingWindowRateLimiter

from relaybox.bus import BUS_ERRORS, reconnect_once, redis_pool
from relaybox.config import SENTINEL_SCHEMES
from relaybox.errors import RateLimited

log = logging.getLogger("relaybox.http")
gateway_log = logging.getLogger("relaybox.gateway")  # the publish buckets are the gateway's

KEY_PREFIX = "relaybox:rl"
_SCHEMES = {"unix": "async+redis+unix", "redis": "async+redis", "rediss": "async+rediss"}


def limits_uri(redis_url: str) -> str:
    """The ``limits`` storage URI for a redis-py URL (``unix:///s`` → ``async+redis+unix:///s``).
    A Sentinel URL gets a placeholder: the storage uses the pool made for it
    (``bus.redis_pool``), which finds the master through the Sentinels."""
    scheme, sep, rest = redis_url.partition("://")
    if scheme in SENTINEL_SCHEMES:
        return "async+redis://sentinel-master:6379"
    if not sep or scheme not in _SCHEMES:
        raise ValueError(f"unsupported Redis URL scheme {scheme!r}")
    return f"{_SCHEMES[scheme]}://{rest}"


class RateLimiter:
    """Moving-window limits per (scope, who); one storage per server process.

    With a Redis URL every process and node counts together; without one (a bare app in a
    test) the counts are per process. While Redis is unreachable each process counts on
    its own with the same limits (docs/api.md Rate limits): an outage neither lifts a
    limit nor refuses requests that are within it.
    """

    #: Seconds a failed Redis is left alone before the next try: meanwhile requests are
    #: counted here without paying for a connection attempt each.
    RETRY_REDIS_S = 1.0

    def __init__(self, redis_url: str | None, clock: Any = time.monotonic) -> None:
        self._pool: aioredis.ConnectionPool | None = None
        self._shared: MovingWindowRateLimiter | None = None
        if redis_url:
            # Short timeouts: a dead Redis must cost a request little, never hang it.
            self._pool = redis_pool(redis_url, socket_timeout=2.0, socket_connect_timeout=2.0,
                                    **reconnect_once())
            pool: dict[str, Any] = {"connection_pool": self._pool}
            storage: Storage = RedisStorage(limits_uri(redis_url), implementation="redispy",
                                            key_prefix=KEY_PREFIX, **pool)
            self._shared = MovingWindowRateLimiter(storage)
        self._local = MovingWindowRateLimiter(MemoryStorage())
        self._clock = clock
        self._redis_down_until = 0.0

    async def hit(self, scope: str, who: str, per_min: int) -> None:
        """Count one request; RateLimited (429) past ``per_min`` within the last minute.

        Counted in Redis (shared by every process and node); while Redis is down, in this
        process (the same limit per process), so that no request is let through unlimited
        and none is refused for want of Redis.
        """
        item = RateLimitItemPerMinute(per_min)
        limiter = self._local
        if self._shared is not None and self._clock() >= self._redis_down_until:
            try:
                if await self._shared.hit(item, scope, who):
                    self._redis_down_until = 0.0
                    return
                stats = await self._shared.get_window_stats(item, scope, who)
                self._refuse(scope, stats.reset_time)
            except RateLimited:
                raise
            except Exception as exc:
                if not self._redis_down_until:
                    log.warning("rate limit storage unavailable (%s); counting per process "
                                "until it is back", exc)
                self._redis_down_until = self._clock() + self.RETRY_REDIS_S
        if not await limiter.hit(item, scope, who):
            self._refuse(scope, (await limiter.get_window_stats(item, scope, who)).reset_time)

    @staticmethod
    def _refuse(scope: str, reset_time: float) -> None:
        wait = max(1, math.ceil(reset_time - time.time()))
        raise RateLimited(f"too many {scope} requests; retry in {wait} s", retry_after_s=wait)

    async def close(self) -> None:
        if self._pool is not None:
            with contextlib.suppress(Exception):
                await self._pool.disconnect()


def limiter_for(app_ctx: Any, redis_url: str | None) -> RateLimiter:
    """The process's limiter, made on first use (inside the running loop)."""
    limiter = getattr(app_ctx, "ratelimiter", None)
    if limiter is None:
        limiter = app_ctx.ratelimiter = RateLimiter(redis_url)
    return limiter


class TokenBucket:
    """The publish rate of one device (protocol.md §3 Publish); kept by the Hub, so that
    a device that reconnects finds its bucket as it left it."""

    __slots__ = ("burst", "last", "rate", "tokens")

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.tokens = float(burst)
        self.last = time.monotonic()

    async def ready(self) -> None:
        """Nothing to fetch: a local bucket is ready at once."""

    def take(self) -> float:
        """0 when allowed, else seconds until a token is available."""
        if self.rate <= 0:
            return 0.0
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
        self.last = now
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) / self.rate

    def until_full(self) -> float:
        """Seconds until the bucket is full again (then it is as good as a new one)."""
        if self.rate <= 0:
            return 0.0
        tokens = self.tokens + (time.monotonic() - self.last) * self.rate
        return max(0.0, (self.burst - tokens) / self.rate)


#: The bucket of a session that is not rate limited (``publish_rate_per_s = 0``).
UNLIMITED = TokenBucket(0, 0)


#: ``lease(want, init)``: take up to ``want`` tokens from the device's bucket in Redis
#: (give back ``-want`` when negative), creating it at ``init`` tokens (None: full);
#: returns (granted, left in Redis). ``Bus.lease_tokens`` bound to the device's key.
Lease = Callable[[float, float | None], Awaitable[tuple[int, float]]]


class SharedBucket:
    """The publish bucket of one device while other server processes listen: one bucket
    in Redis for the whole cluster, so a device hopping between nodes finds it as it left
    it (protocol.md §7: the rate is per device).

    A publish never waits for Redis: this process leases a quarter of the burst at a
    time, spends it locally and fetches the next lease when half of it is spent. Every
    token comes out of the Redis bucket, so a device gets at most its burst plus the
    refill, wherever it publishes (plus at most one lease, which a process may hold
    while the bucket in Redis refills). Tokens left when the session ends are given
    back. While Redis is unreachable the device is limited per process, as it would be
    alone (an outage neither lifts the limit nor refuses publishes within it).
    """

    RETRY_REDIS_S = 1.0

    def __init__(self, rate: float, burst: int, lease: Lease, *, init: float | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.chunk = max(1, math.ceil(burst / 4))
        self.tokens = 0  # leased by this process, not spent yet
        self._lease = lease
        self._init = init
        self._clock = clock
        self._task: asyncio.Task[None] | None = None
        self._empty_until = 0.0  # Redis had no whole token: no lease before this
        self._down_until = 0.0  # Redis failed: count here until then
        self._local: TokenBucket | None = None

    async def ready(self) -> None:
        """Hold the first lease (called during the handshake, so the first publishes of a
        session are not refused while it is on its way)."""
        self._fetch()
        if self._task is not None:
            await asyncio.shield(self._task)

    def take(self) -> float:
        """0 when allowed, else seconds until a token may be available."""
        now = self._clock()
        if now < self._down_until and self._local is not None:
            return self._local.take()
        if self.tokens >= 1:
            self.tokens -= 1
            if self.tokens < self.chunk / 2:
                self._fetch()
            return 0.0
        self._fetch()
        # No token here: either Redis said when the next one comes, or a lease is on its way.
        return max(self._empty_until - now, min(1.0 / self.rate, 0.05))

    def _fetch(self) -> None:
        if self._task is not None or self._clock() < self._empty_until:
            return
        self._task = asyncio.get_running_loop().create_task(self._refill())

    async def _refill(self) -> None:
        try:
            want = self.chunk
            granted, left = await self._lease(want, self._init)
            self._init = None
            self.tokens += granted
            self._down_until = 0.0
            self._local = None
            if granted < want and left < 1:
                self._empty_until = self._clock() + (1 - left) / self.rate
        except BUS_ERRORS as exc:
            if self._local is None:
                gateway_log.warning("publish rate bucket in Redis unavailable (%s); counting "
                                    "per process until it is back", exc)
                self._local = TokenBucket(self.rate, int(self.burst))
            self._down_until = self._clock() + self.RETRY_REDIS_S
        finally:
            self._task = None

    async def release(self) -> None:
        """Give the tokens leased here back to Redis (the session ended: the device may
        go on on another process)."""
        if self._task is not None:
            with contextlib.suppress(BaseException):
                await asyncio.shield(self._task)
        give, self.tokens = self.tokens, 0
        if give > 0:
            with contextlib.suppress(*BUS_ERRORS):
                await self._lease(-give, None)
