"""Redis clients for a ``redis_url``: one Redis (TLS too) or the master that Sentinels
name, and the reconnect policies of the bus's connections."""

from __future__ import annotations

import contextlib
from typing import Any

import redis
import redis.asyncio as aioredis

from relaybox.config import SENTINEL_SCHEMES, SentinelURL, sentinel_url

# What a failed Redis call raises; callers outside the bus catch these.
BUS_ERRORS: tuple[type[BaseException], ...] = (redis.RedisError, OSError)


def redis_client(url: str, *, asynchronous: bool = True, retry: bool = True,
                 **extra: Any) -> Any:
    """A client for ``redis_url``: one Redis (``redis://``, ``rediss://`` for TLS,
    ``unix://``), or the master that Redis Sentinels name (``redis+sentinel://``,
    ``rediss+sentinel://``; docs/configuration.md). A Sentinel client asks the Sentinels
    for the master's address on every new connection, so after a failover the next
    connection (a command retried once, the subscription's reconnect) reaches the new one."""
    kwargs = {**_client_kwargs(url, asynchronous=asynchronous, retry=retry), **extra}
    if url.partition("://")[0] in SENTINEL_SCHEMES:
        return _sentinel_master(sentinel_url(url), asynchronous, kwargs)
    cls = aioredis.Redis if asynchronous else redis.Redis
    return cls.from_url(url, **kwargs)


def redis_pool(url: str, **extra: Any) -> aioredis.ConnectionPool:
    """An asyncio connection pool for ``redis_url`` (see ``redis_client``)."""
    if url.partition("://")[0] in SENTINEL_SCHEMES:
        kwargs = {**_client_kwargs(url, retry=False), **extra}
        pool: aioredis.ConnectionPool = _sentinel_master(sentinel_url(url), True,
                                                         kwargs).connection_pool
        return pool
    return aioredis.ConnectionPool.from_url(url, **extra)


def _sentinel_master(spec: SentinelURL, asynchronous: bool, kwargs: dict[str, Any]) -> Any:
    from redis.asyncio.sentinel import Sentinel as AsyncSentinel
    from redis.sentinel import Sentinel

    # The Sentinels get the same timeouts; their own password, if any, from the URL.
    sentinel_kwargs: dict[str, Any] = {k: v for k, v in kwargs.items()
                                       if k.startswith("socket_")}
    if spec.sentinel_password:
        sentinel_kwargs["password"] = spec.sentinel_password
    master: dict[str, Any] = {**kwargs, **dict(spec.options), "db": spec.db}
    if spec.username:
        master["username"] = spec.username
    if spec.password:
        master["password"] = spec.password
    if spec.tls:
        master["ssl"] = True
    kind = AsyncSentinel if asynchronous else Sentinel
    manager = kind(list(spec.sentinels), sentinel_kwargs=sentinel_kwargs)
    client = manager.master_for(spec.master, **master)
    client.relaybox_sentinels = manager.sentinels  # closed with the client
    return client


async def close_client(client: Any) -> None:
    """Close an asyncio client from ``redis_client`` (and its Sentinel connections)."""
    for c in [client, *getattr(client, "relaybox_sentinels", ())]:
        with contextlib.suppress(Exception):
            await c.aclose()


def _client_kwargs(url: str, *, asynchronous: bool = True, retry: bool = True
                   ) -> dict[str, Any]:
    return {"health_check_interval": 0, "socket_connect_timeout": 2.0, "socket_timeout": 5.0,
            **(reconnect_once(asynchronous=asynchronous) if retry
               else no_retry(asynchronous=asynchronous))}


def no_retry(*, asynchronous: bool = True) -> dict[str, Any]:
    """Client options that never retry nor reconnect by themselves (redis-py's default
    retries three times with backoff): a subscription that breaks must be noticed."""
    from redis.asyncio.retry import Retry as AsyncRetry
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    kind = AsyncRetry if asynchronous else Retry
    return {"retry": kind(NoBackoff(), 0)}


def reconnect_once(*, asynchronous: bool = True) -> dict[str, Any]:
    """Client options that retry a command once on a fresh connection when its pooled
    connection turns out dead (Redis restarted since it was opened): without them the
    first command after a restart fails although Redis is back. A Redis that is really
    down fails the retry at once too (connection refused), so nothing waits longer."""
    from redis.asyncio.retry import Retry as AsyncRetry
    from redis.backoff import NoBackoff
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.retry import Retry

    kind = AsyncRetry if asynchronous else Retry
    return {"retry": kind(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
            "retry_on_error": [RedisConnectionError]}
