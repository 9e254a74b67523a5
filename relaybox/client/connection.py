"""The asyncio device client: handshake, reconnect with resume, acks, publish with retry."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import random
from collections import deque
from collections.abc import Callable, Iterable
from pathlib import Path
from types import TracebackType
from typing import Any, Final

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidURI

from relaybox import __version__
from relaybox.aio import cancel_and_wait
from relaybox.client.backoff import backoff_delay
from relaybox.client.delivery import DEFAULT_WINDOW, Delivery
from relaybox.client.errors import (
    FATAL_CLOSES,
    ClientClosedError,
    ClientError,
    FatalError,
    describe,
    fatal,
)
from relaybox.client.events import EventStream, Presence, parse_event, parse_gap
from relaybox.client.handshake import authenticate
from relaybox.client.identity import Identity
from relaybox.client.positions import StateFile
from relaybox.client.publisher import Publisher
from relaybox.protocol.client import HandshakeFailed, Refused, decode_frame
from relaybox.protocol.codes import CloseCode
from relaybox.protocol.encoding import dumps

__all__ = ["Client"]

log = logging.getLogger("relaybox.client")

CLOSE_FLUSH_S: Final = 2.0  # how long a normal close waits for the server to read our acks


class _Dropped(Exception):
    """The connection ended or failed in a way worth retrying."""


class Client:
    """A device connection to a relaybox server that survives disconnects.

    Use as ``async with Client(identity) as client:``. Entering waits for the
    first connection attempt: a refused identity (unknown, revoked, paired
    with another server) raises there; an unreachable server does not, the
    client keeps retrying in the background. ``state_file`` (e.g.
    ``identity.state_path``) keeps the application's positions across
    restarts so that a restarted application is not handed duplicates.
    """

    def __init__(
        self,
        identity: Identity,
        *,
        state_file: Path | str | None = None,
        on_presence: Callable[[Presence], object] | None = None,
        backoff_initial: float = 0.25,
        backoff_max: float = 30.0,
        open_timeout: float = 10.0,
        ping_interval: float | None = 20.0,
        max_message_bytes: int = 8 * 1024 * 1024,
        rng: random.Random | None = None,
    ) -> None:
        self.identity = identity
        self.on_presence = on_presence
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.open_timeout = open_timeout
        self.ping_interval = ping_interval
        self.max_message_bytes = max_message_bytes
        self._rng = rng or random.Random()
        state = StateFile(Path(state_file), identity.device_id) if state_file else None
        self._delivery = Delivery(self._send, self._connected_now, state)
        self._publisher = Publisher(self._send, self._rng)
        self.welcome: dict[str, Any] = {}
        self.last_error: str | None = None  # why the last connection attempt failed
        self.sessions = 0  # successful handshakes so far
        self._outbox: deque[str] = deque()
        self._outbox_ready = asyncio.Event()
        self._connected = asyncio.Event()
        self._synced = asyncio.Event()
        self._stopped = asyncio.Event()  # set when the client stops for good
        self._fatal: ClientError | None = None
        self._closing = False
        self._closed = False
        self._ws: ClientConnection | None = None
        self._task: asyncio.Task[None] | None = None
        self._first: asyncio.Future[bool] | None = None
        self._pings: dict[int, asyncio.Future[None]] = {}
        self._ping_ids = itertools.count(1)

    # -- lifecycle -------------------------------------------------------------------------
    async def __aenter__(self) -> Client:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        # After an exception the item in the application's hands was not handled.
        await self.aclose(graceful=exc_type is None)

    async def start(self) -> None:
        """Connect in the background; return after the first attempt (see the class doc)."""
        if self._task is not None:
            raise RuntimeError("the client was already started")
        self._delivery.load()
        self._first = asyncio.get_running_loop().create_future()
        self._task = asyncio.create_task(self._run(), name="relaybox-client")
        try:
            await self._first
        except BaseException:
            await self.aclose(graceful=False)
            raise

    async def aclose(self, *, graceful: bool = True) -> None:
        """Close the connection normally after making the sent acks durable."""
        if self._closed:
            return
        self._closed = True
        if graceful:
            self._delivery.release_held()
        self._closing = True
        self._delivery.flush()
        if self._connected.is_set():
            # The server handles frames in order: its pong proves it read our acks
            # before the close (protocol.md §3 Delivery: durable before the next catch-up).
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._roundtrip(), CLOSE_FLUSH_S)
        if self._ws is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._ws.close(CloseCode.NORMAL), CLOSE_FLUSH_S)
        await cancel_and_wait(self._task)
        await self._delivery.save_now()
        self._halt(ClientClosedError("the client was closed"))

    def stop(self) -> None:
        """End every ``events()`` iteration (StopAsyncIteration); close the client after."""
        self._delivery.stop()

    # -- state -------------------------------------------------------------------------------
    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def _connected_now(self) -> bool:
        return self._connected.is_set()

    @property
    def window(self) -> int:
        """Events in flight allowed by the server (``welcome.window``)."""
        return self._delivery.window

    @property
    def session_id(self) -> str | None:
        value = self.welcome.get("session_id")
        return value if isinstance(value, str) else None

    async def wait_connected(self) -> None:
        """Wait until a session is ready; raises the fatal error if the client stopped.

        Bound it with ``asyncio.timeout(...)`` as needed.
        """
        await self._wait(self._connected)

    async def wait_synced(self) -> None:
        """Wait until the current session sent everything stored at connect time (``synced``)."""
        await self._wait(self._synced)

    async def _wait(self, event: asyncio.Event) -> None:
        while not event.is_set():
            self._check_usable()
            waiters = [asyncio.ensure_future(event.wait()),
                       asyncio.ensure_future(self._stopped.wait())]
            try:
                await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for w in waiters:
                    w.cancel()

    def _check_usable(self) -> None:
        if self._fatal is not None:
            raise self._fatal
        if self._closed or self._task is None:
            raise ClientClosedError("the client is not running (use 'async with Client(...)')")

    async def ping(self) -> None:
        """An application-level ping answered by the server's pong (protocol.md §4)."""
        self._check_usable()
        await self._roundtrip()

    async def _roundtrip(self) -> None:
        ref = next(self._ping_ids)
        fut = asyncio.get_running_loop().create_future()
        self._pings[ref] = fut
        try:
            if not self._send(dumps({"type": "ping", "ref": ref})):
                raise ClientClosedError("not connected")
            await fut
        finally:
            self._pings.pop(ref, None)

    # -- connection loop ---------------------------------------------------------------------
    async def _run(self) -> None:
        attempt = 0
        while not self._closing:
            before = self.sessions
            try:
                await self._session()
            except FatalError as exc:
                self._halt(exc)
                return
            except InvalidURI as exc:
                self._halt(ClientError(f"bad server URL {self.identity.server!r}: {exc}"))
                return
            except Exception as exc:  # network errors, timeouts, HTTP refusals, closes
                self.last_error = describe(exc)
            if self._first is not None and not self._first.done():
                self._first.set_result(False)
            if self._closing:
                return
            attempt = 0 if self.sessions != before else attempt + 1
            delay = backoff_delay(attempt, self.backoff_initial, self.backoff_max, self._rng)
            log.info("gateway: %s; retrying in %.1f s", self.last_error, delay)
            await asyncio.sleep(delay)

    async def _session(self) -> None:
        ws_cm = connect(self.identity.gateway_url, open_timeout=self.open_timeout,
                        compression=None,  # protocol.md §1: compression is off
                        max_size=self.max_message_bytes, ping_interval=self.ping_interval,
                        ping_timeout=self.ping_interval, close_timeout=CLOSE_FLUSH_S,
                        user_agent_header=f"relaybox-client/{__version__}")
        async with ws_cm as ws:
            self._ws = ws
            writer: asyncio.Task[None] | None = None
            try:
                welcome = await self._handshake(ws)
                self._ready(welcome)
                writer = asyncio.create_task(self._writer(ws))
                async for raw in ws:
                    self._dispatch(raw)
            except ConnectionClosed:
                pass
            finally:
                self._lost()
                await cancel_and_wait(writer)
        code = ws.close_code
        kind = FATAL_CLOSES.get(code or 0)
        if kind is not None and not self._closing:
            raise fatal(kind)
        reason = f" {ws.close_reason}" if ws.close_reason else ""
        raise _Dropped(f"connection closed ({code}{reason})")

    async def _handshake(self, ws: ClientConnection) -> dict[str, Any]:
        """protocol.md §2: hello, challenge, auth, welcome."""
        try:
            async with asyncio.timeout(self.open_timeout):
                return await authenticate(self.identity, ws.send, ws.recv,
                                          on_error=self._refused)
        except HandshakeFailed as exc:
            raise _Dropped(str(exc)) from None

    def _refused(self, refused: Refused) -> None:
        # A non-fatal error during the handshake: the server closes next; say why.
        self.last_error = f"server error {refused.code}: {refused.message}"

    def _ready(self, welcome: dict[str, Any]) -> None:
        self.sessions += 1
        self.welcome = welcome
        window = welcome.get("window")
        heads = welcome.get("streams")
        self._delivery.new_session(heads if isinstance(heads, dict) else {},
                                   window if type(window) is int and window > 0
                                   else DEFAULT_WINDOW)
        self._synced.clear()
        self._outbox.clear()
        self._connected.set()
        self.last_error = None
        self._publisher.connected()
        if self.sessions > 1:
            log.info("reconnected to %s", self.identity.server)
        if self._first is not None and not self._first.done():
            self._first.set_result(True)

    def _lost(self) -> None:
        self._connected.clear()
        self._outbox.clear()
        self._publisher.disconnected()
        self._delivery.lost()
        for fut in self._pings.values():
            if not fut.done():
                fut.set_exception(ClientClosedError("connection lost"))

    def _halt(self, exc: ClientError) -> None:
        """Stop for good: fail what waits, end the iterators after the queued items."""
        if self._fatal is None and not isinstance(exc, ClientClosedError):
            self._fatal = exc
        if self._first is not None and not self._first.done():
            self._first.set_exception(exc)
        self._publisher.fail_all(exc)
        self._connected.clear()
        if not self._stopped.is_set():
            self._stopped.set()
            self._delivery.stop(self._fatal)

    # -- sending -----------------------------------------------------------------------------
    def _send(self, frame: str) -> bool:
        if not self._connected.is_set():
            return False
        self._outbox.append(frame)
        self._outbox_ready.set()
        return True

    async def _writer(self, ws: ClientConnection) -> None:
        # One writer keeps frames in the order they were queued.
        while True:
            await self._outbox_ready.wait()
            self._outbox_ready.clear()
            while self._outbox:
                await ws.send(self._outbox.popleft())

    # -- receiving ---------------------------------------------------------------------------
    def _dispatch(self, raw: str | bytes) -> None:
        msg = decode_frame(raw)
        if msg is None:
            log.warning("ignoring a malformed frame from the server")
            return
        kind = msg["type"]
        try:
            if kind == "event":
                self._delivery.event(parse_event(msg))
            elif kind == "ack":
                self._publisher.acked(msg)
            elif kind == "nack":
                self._publisher.nacked(msg)
            elif kind == "gap":
                self._delivery.gap(parse_gap(msg))
            elif kind == "synced":
                self._synced.set()
            elif kind == "pong":
                fut = self._pings.get(msg.get("ref"))  # type: ignore[arg-type]
                if fut is not None and not fut.done():
                    fut.set_result(None)
            elif kind == "presence":
                if self.on_presence is not None and isinstance(msg.get("device_id"), str):
                    try:
                        self.on_presence(Presence(msg["device_id"], bool(msg.get("online"))))
                    except Exception:
                        # The application's callback must not cut the connection.
                        log.exception("the on_presence callback failed")
            elif kind == "error":
                log.warning("server error %s: %s", msg.get("code"), msg.get("message"))
        except ValueError as exc:
            log.warning("ignoring a malformed %s frame: %s", kind, exc)

    # -- publishing and consuming ------------------------------------------------------------
    async def publish(self, stream: str, body: Any, key: str | None = None,
                      base_seq: int | None = None, *, id: str | None = None) -> int:
        """Store an event and return its seq once the server acked it (protocol.md §3).

        Retried across reconnects with the same ``id`` (a new UUIDv7 unless
        given), so it is stored once. Raises ConflictError (with ``head_seq``)
        when ``base_seq`` is behind, PublishError for other refusals, and the
        fatal error if the client stopped. ``rate_limited`` and ``unavailable``
        are retried. Bound the wait with ``asyncio.timeout(...)`` if needed.
        """
        self._check_usable()
        return await self._publisher.publish(stream, body, key, base_seq, id)

    def events(self, streams: Iterable[str] | None = None) -> EventStream:
        """Iterate events (and Gap items) of ``streams`` (all if None); see EventStream.

        A new call takes over from the previous iterator.
        """
        self._check_usable()
        return self._delivery.open_stream(streams)
