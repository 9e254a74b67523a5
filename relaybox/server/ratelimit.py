"""HTTP rate limits shared by every server process through Redis (the ``limits`` library)."""

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

from relaybox.errors import RateLimited, Unavailable

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
    test) the counts are per process.
    """

    def __init__(self, redis_url: str | None) -> None:
        self._pool: aioredis.ConnectionPool | None = None
        storage: Storage
        if redis_url:
            # Short timeouts: a dead Redis must cost a request little, never hang it.
            self._pool = aioredis.ConnectionPool.from_url(
                redis_url, socket_timeout=2.0, socket_connect_timeout=2.0)
            pool: dict[str, Any] = {"connection_pool": self._pool}
            storage = RedisStorage(limits_uri(redis_url), implementation="redispy",
                                   key_prefix=KEY_PREFIX, **pool)
        else:
            storage = MemoryStorage()
        self._limiter = MovingWindowRateLimiter(storage)
        self._warned = False

    async def hit(self, scope: str, who: str, per_min: int, *, fail_open: bool) -> None:
        """Count one request; RateLimited (429) past ``per_min`` within the last minute.

        When the storage is unreachable a read proceeds (``fail_open``) and a write is
        refused with 503: never a 500 (http-api.md Rate limits).
        """
        item = RateLimitItemPerMinute(per_min)
        try:
            allowed = await self._limiter.hit(item, scope, who)
            if allowed:
                self._warned = False
                return
            stats = await self._limiter.get_window_stats(item, scope, who)
        except Exception as exc:
            if not self._warned:
                log.warning("rate limit storage unavailable: %s", exc)
                self._warned = True
            if fail_open:
                return
            raise Unavailable("rate limiting is unavailable; retry shortly",
                              code="rate_limiter_unavailable") from None
        wait = max(1, math.ceil(stats.reset_time - time.time()))
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
