"""The bus as relaybox uses it: ``Bus`` (async, a server process: pub/sub, presence,
rate-limit counters, nonces) and ``SyncBus`` (blocking: CLI commands, scheduler jobs)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import redis
import redis.asyncio as aioredis

from relaybox.aio import cancel_and_wait
from relaybox.bus.codec import (
    CONTROL_CHANNEL,
    EVENTS_CHANNEL_PREFIX,
    encode_control,
    node_channel,
)
from relaybox.bus.connect import close_client, redis_client

log = logging.getLogger("relaybox.bus")

#: A token bucket kept in Redis (``Bus.lease_tokens``): refill by rate x elapsed on the
#: server's clock (every node agrees on it), then grant up to ARGV[3] whole tokens (or take
#: back -ARGV[3]). The key expires once the bucket would be full again: then it is as good
#: as a new one. TIME in a script needs effects replication, the default since Redis 5.
LEASE_SCRIPT = """
local rate, burst, want, init = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]),
    tonumber(ARGV[4])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local v = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens, ts = tonumber(v[1]), tonumber(v[2])
if tokens == nil or ts == nil then tokens, ts = math.min(init, burst), now end
tokens = math.min(burst, tokens + math.max(0, now - ts) * rate / 1000)
local granted
if want >= 0 then
  granted = math.min(math.floor(want), math.floor(tokens))
  tokens = tokens - granted
else
  granted = 0
  tokens = math.min(burst, tokens - want)
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(now))
local ttl = 1000
if rate > 0 then ttl = ttl + math.ceil((burst - tokens) / rate * 1000) end
redis.call('PEXPIRE', KEYS[1], ttl)
return {granted, tostring(tokens)}
"""

Handler = Callable[[str, bytes], Awaitable[None] | None]


class Bus:
    """Async Redis access for a server process."""

    def __init__(self, url: str, node_id: str) -> None:
        self.url = url
        self.node_id = node_id
        self.redis: aioredis.Redis = redis_client(url)
        # The subscription has a client of its own that never reconnects behind our back:
        # a lost subscription must be noticed (messages may have been missed, docs/
        # architecture.md), not silently resumed.
        self._sub_redis: aioredis.Redis = redis_client(url, retry=False)
        self._sub_task: asyncio.Task[None] | None = None
        self._pubsub: Any = None
        self.healthy = True
        self._lease: Any = None
        #: Called on the loop each time the subscription is (re)established.
        self.on_subscribed: Callable[[], None] | None = None
        #: Messages received, by kind ("events", "control"): what this process pays for.
        self.received: dict[str, int] = {"events": 0, "control": 0}
        # Channels subscribed on demand (``watch``) besides the fixed ones. Redis answers
        # a connection's commands in order, so the n-th channel confirmed is the n-th
        # channel sent: a waiter waits for its number (counted per connection).
        self._wanted: set[str] = set()
        self._sent = 0
        self._confirmed = 0
        self._waiters: list[list[Any]] = []  # [target or None, future]
        self._sends: set[asyncio.Task[None]] = set()

    # -- health --------------------------------------------------------------
    async def ping(self) -> bool:
        try:
            ok = bool(await asyncio.wait_for(self.redis.ping(), 2.0))
        except Exception:
            ok = False
        self.healthy = ok
        return ok

    # -- pub/sub ---------------------------------------------------------------
    async def publish(self, channel: str, payload: bytes) -> bool:
        """Publish; False (and logged) when Redis is unavailable."""
        return await self.publish_many([(channel, payload)])

    async def publish_control(self, kind: str, **data: Any) -> bool:
        return await self.publish(CONTROL_CHANNEL, encode_control(kind, self.node_id, data))

    async def node_alive(self, node_id: str) -> bool:
        """Does the server process ``node_id`` still hold its Redis subscription? (False
        within moments of it dying: its connection closes with it.)"""
        counts = await self.redis.pubsub_numsub(node_channel(node_id))
        return bool(counts and int(counts[0][1]) > 0)

    async def publish_many(self, messages: list[tuple[str, bytes]]) -> bool:
        """Publish several messages in one round trip (a pipeline, not a transaction);
        False (and logged) when Redis is unavailable."""
        try:
            if len(messages) == 1:
                await self.redis.publish(*messages[0])
            else:
                async with self.redis.pipeline(transaction=False) as pipe:
                    for channel, payload in messages:
                        pipe.publish(channel, payload)
                    await pipe.execute()
            self.healthy = True
            return True
        except Exception as exc:
            if self.healthy:
                log.warning("redis publish failed: %s", exc)
            self.healthy = False
            return False

    @property
    def pubsub(self) -> Any:
        """The current pub/sub object, or None: a new one for every (re)subscription, so a
        different one means the subscription was lost and renewed (health.py reads it)."""
        return self._pubsub

    def start_listening(self, handler: Handler,
                        channels: tuple[str, ...] | None = None) -> None:
        """Run ``handler(channel, data)`` for every message, reconnecting with backoff."""
        if channels is None:
            channels = (CONTROL_CHANNEL, node_channel(self.node_id))
        self._sub_task = asyncio.get_running_loop().create_task(
            self._listen(handler, channels), name="relaybox-bus-listener")

    # -- channels subscribed on demand -------------------------------------------------
    def watch(self, channel: str) -> asyncio.Future[None]:
        """Subscribe to ``channel`` too (kept across reconnects until ``unwatch``). The
        future is done once Redis has confirmed the subscription: from then on every
        message published to it reaches this process (while the connection lives)."""
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append([None, waiter])
        self._wanted.add(channel)
        self._spawn_send(channel, waiter)
        return waiter

    def unwatch(self, channel: str) -> None:
        if channel in self._wanted:
            self._wanted.discard(channel)
            self._spawn_send(channel, None)

    async def watched(self) -> None:
        """Wait until every subscription asked for so far is confirmed."""
        pending = [w for _, w in self._waiters if not w.done()]
        if pending:
            await asyncio.gather(*(asyncio.shield(w) for w in pending))

    def _spawn_send(self, channel: str, waiter: asyncio.Future[None] | None) -> None:
        task = asyncio.get_running_loop().create_task(self._send(channel, waiter))
        self._sends.add(task)
        task.add_done_callback(self._sends.discard)

    async def _send(self, channel: str, waiter: asyncio.Future[None] | None) -> None:
        # Tasks start in the order they were made, and on a connected pubsub a command is
        # written before its first await: so commands reach Redis in the order asked,
        # and the n-th channel sent is the n-th confirmed.
        pubsub = self._pubsub
        if pubsub is None or pubsub.connection is None or not pubsub.connection.is_connected:
            # Not subscribed (a command would reconnect behind the listener's back): the
            # next (re)subscription includes everything wanted by then.
            return
        try:
            async with asyncio.timeout(2.0):
                if waiter is None:
                    if channel not in self._wanted:
                        await pubsub.unsubscribe(channel)
                    return
                if channel not in self._wanted:
                    waiter.cancel()  # unwatched before it was sent
                    return
                self._sent += 1
                self._target(waiter, self._sent)
                await pubsub.subscribe(channel)
        except Exception as exc:  # the listener notices and resubscribes everything
            log.debug("redis subscription command failed: %s", exc)

    def _target(self, waiter: asyncio.Future[None], target: int) -> None:
        for entry in self._waiters:
            if entry[1] is waiter:
                entry[0] = target
        self._settle()

    def _settle(self) -> None:
        keep = []
        for entry in self._waiters:
            target, waiter = entry
            if waiter.done():
                continue
            if target is not None and target <= self._confirmed:
                waiter.set_result(None)
            else:
                keep.append(entry)
        self._waiters = keep

    async def _listen(self, handler: Handler, channels: tuple[str, ...]) -> None:
        delay = 0.05
        while True:
            pubsub = self._sub_redis.pubsub()
            try:
                await pubsub.connect()
                # Every channel wanted so far, in one command (written before anything
                # ``_send`` writes on this connection); the waiters of those not confirmed
                # yet now wait for this subscription.
                wanted = [*channels, *sorted(self._wanted)]
                self._sent, self._confirmed = len(wanted), 0
                for entry in self._waiters:
                    entry[0] = self._sent
                self._pubsub = pubsub
                await pubsub.subscribe(*wanted)
                delay = 0.05
                self.healthy = True
                if self.on_subscribed is not None:
                    self.on_subscribed()
                while True:
                    msg = await pubsub.get_message(timeout=None)
                    if msg is None:
                        continue
                    kind = msg.get("type")
                    if kind == "subscribe":
                        self._confirmed += 1
                        self._settle()
                        continue
                    if kind != "message":
                        continue
                    channel = msg["channel"]
                    if isinstance(channel, bytes):
                        channel = channel.decode()
                    self.received["events" if channel.startswith(EVENTS_CHANNEL_PREFIX)
                                  else "control"] += 1
                    result = handler(channel, msg["data"])
                    if result is not None:
                        await result
            except asyncio.CancelledError:
                self._pubsub = None
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
                raise
            except Exception as exc:
                if self.healthy:
                    log.warning("redis subscription lost (%s); reconnecting", exc)
                self.healthy = False
                self._pubsub = None
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    async def subscribers(self, channel: str) -> int:
        """How many connections (server processes) are subscribed to ``channel``."""
        counts = await self.redis.pubsub_numsub(channel)
        return int(counts[0][1]) if counts else 0

    # -- counters, nonces, locks ----------------------------------------------
    async def incr_window(self, key: str, window_s: int) -> int:
        """Increment a counter that expires ``window_s`` after its first hit."""
        # EXPIRE … NX needs Redis 7; the embedded server is 6.2, so set it on the first hit.
        count = int(await self.redis.incr(key))
        if count == 1:
            await self.redis.expire(key, window_s)
        return count

    async def lease_tokens(self, key: str, rate: float, burst: float, want: float,
                           init: float | None = None) -> tuple[int, float]:
        """Take up to ``want`` whole tokens from the bucket at ``key`` (refilled at ``rate``
        per second up to ``burst``, on Redis's clock); a negative ``want`` gives tokens
        back. A bucket not in Redis yet starts at ``init`` (default: full). Returns the
        tokens granted and the tokens left in the bucket. One round trip."""
        if self._lease is None:
            self._lease = self.redis.register_script(LEASE_SCRIPT)
        args = [repr(float(rate)), repr(float(burst)), repr(float(want)),
                repr(float(burst if init is None else init))]
        granted, left = await self._lease(keys=[key], args=args)
        return int(granted), float(left)

    async def get_int(self, key: str) -> int:
        value = await self.redis.get(key)
        return int(value) if value else 0

    async def remember_once(self, key: str, ttl_s: int) -> bool:
        """True the first time ``key`` is seen within ``ttl_s``; False on a repeat."""
        return bool(await self.redis.set(key, b"1", ex=ttl_s, nx=True))

    async def close(self) -> None:
        await cancel_and_wait(self._sub_task)
        self._sub_task = None
        await close_client(self.redis)
        await close_client(self._sub_redis)


class SyncBus:
    """Blocking Redis access for CLI commands and scheduler jobs."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.redis: redis.Redis = redis_client(url, asynchronous=False)

    def publish_control(self, kind: str, **data: Any) -> int:
        msg = encode_control(kind, "cli", data)
        return int(self.redis.publish(CONTROL_CHANNEL, msg))  # type: ignore[arg-type]

    def acquire_lock(self, name: str, ttl_s: int) -> bool:
        return bool(self.redis.set(f"relaybox:lock:{name}", b"1", ex=ttl_s, nx=True))

    def ping(self) -> bool:
        try:
            return bool(self.redis.ping())
        except Exception:
            return False

    def close(self) -> None:
        for c in [self.redis, *getattr(self.redis, "relaybox_sentinels", ())]:
            with contextlib.suppress(Exception):
                c.close()
