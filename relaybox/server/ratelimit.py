"""HTTP rate limits: shared through Redis (the ``limits`` library), per process while it is down."""

from __future__ import annotations

import contextlib
import logging
import math
import time
from typing import Any

import redis.asyncio as aioredis
from limits import RateLimitItemPerMinute
from limits.aio.storage import MemoryStorage, RedisStorage, Storage
from limits.aio.strategies import MovingWindowRateLimiter

from relaybox.bus import reconnect_once
from relaybox.errors import RateLimited

log = logging.getLogger("relaybox.http")

KEY_PREFIX = "relaybox:rl"
_SCHEMES = {"unix": "async+redis+unix", "redis": "async+redis", "rediss": "async+rediss"}


def limits_uri(redis_url: str) -> str:
    """The ``limits`` storage URI for a redis-py URL (``unix:///s`` → ``async+redis+unix:///s``)."""
    scheme, sep, rest = redis_url.partition("://")
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
            self._pool = aioredis.ConnectionPool.from_url(
                redis_url, socket_timeout=2.0, socket_connect_timeout=2.0,
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
