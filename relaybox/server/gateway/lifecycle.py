"""A gateway session's life around its messages: taking the connection over, the
handshake then serving until the peer leaves, the wind-down (acks made durable, the close
frame) and the heartbeat (protocol.md §2, §3 Delivery, §4).

Mixed into ``Session`` (session.py), which holds the hot path: messages in, events and
acks out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING, Any, cast

from relaybox.protocol.codes import CloseCode
from relaybox.protocol.errors import ProtocolError
from relaybox.protocol.messages import error_frame
from relaybox.server.gateway.connection import GatewayConnection, adopt
from relaybox.server.observability import logs

if TYPE_CHECKING:
    from sanic.server.websockets.impl import WebsocketImplProtocol

    from relaybox.server.context import ServerContext
    from relaybox.server.gateway.session import Session

log = logging.getLogger("relaybox.gateway")

CLOSE_WRITE_TIMEOUT_S = 2.0  # to write what is queued and the close frame
CLOSE_FLUSH_TIMEOUT_S = 5.0  # to make a closing session's acks durable
_background: set[asyncio.Future[Any]] = set()  # wind-downs outliving their handler


class Closing(Exception):
    """Ends a session with a close code."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class Lifecycle:
    """The life of a gateway session around its messages (mixed into ``Session``)."""

    ctx: ServerContext
    conn: GatewayConnection | None
    _sanic_ws: WebsocketImplProtocol | None
    session_id: str
    device_id: str
    registered: bool
    close_code: int | None
    close_reason: str
    outbox: list[str]
    finished: asyncio.Event
    last_rx: float
    paused: bool
    _early: list[str | bytes]
    _peer_closed: asyncio.Event
    _tasks: list[asyncio.Task[Any]]
    _main: asyncio.Task[Any] | None
    _hb_timer: asyncio.TimerHandle | None
    _hb_next_ping: float
    _hb_ping_sent_at: float | None
    _close_reply: list[bytes]
    _close_reply_released: bool

    if TYPE_CHECKING:  # the other halves of ``Session``
        def close_soon(self, code: int, reason: str) -> None: ...
        def _handle(self, data: str | bytes) -> None: ...
        async def _handshake(self) -> None: ...
        async def _pump(self) -> None: ...
        async def _write_all(self) -> None: ...

    def release(self) -> None:
        """After the session ended and its connection is gone (the connection calls it):
        drop the references from the session to its tasks and connection (each refers
        back to the session)."""
        self._tasks.clear()
        self._stop_heartbeat()
        self._main = None
        self.conn = None
        self._sanic_ws = None

    # -- main -----------------------------------------------------------------------------
    async def run(self) -> None:
        """Serve a connection that came through Sanic's request path (``app.py``)."""
        if self.conn is None:
            if self._sanic_ws is None:
                return  # released before its handler ran
            try:
                self.conn, early = await adopt(self._sanic_ws)
            except ConnectionError:
                return  # gone before its handler ran: nothing to serve
            finally:
                self._sanic_ws = None
            self._early.extend(early)
        await self.conn.start(cast("Session", self))

    async def serve(self) -> None:
        """The session's life on its connection (``GatewayConnection.start`` runs it)."""
        session = cast("Session", self)
        self._main = asyncio.current_task()
        logs.bind_session(self.session_id, "")
        assert self.conn is not None
        # Any bytes (pongs included) are proof of life (protocol.md §4).
        self.conn.on_activity = self._touch
        self.conn.attach(session)
        try:
            try:
                await self._handshake()
                self._tasks.append(asyncio.create_task(self._pump()))
                self._start_heartbeat()
                early, self._early = self._early, []
                if self.conn is not None:
                    self.conn.resume_reading("early")
                for data in early:
                    self._handle(data)
                # Messages are handled by ``on_message`` from here on.
                await self._peer_closed.wait()
            except Closing as exc:
                if self.close_code is None:
                    self.close_code, self.close_reason = exc.code, exc.reason
            except ProtocolError as exc:
                if self.close_code is None:
                    self.close_code = exc.close_code or CloseCode.BAD_REQUEST
                    self.close_reason = exc.code
                    with contextlib.suppress(Exception):
                        self.outbox.append(error_frame(exc.code, exc.message))
            except asyncio.CancelledError:
                if self.close_code is None:
                    raise
            except Exception as exc:
                if self.close_code is None and not _is_closed_error(exc):
                    log.exception("session %s failed", self.session_id)
                    self.close_code, self.close_reason = CloseCode.GOING_AWAY, "going_away"
        finally:
            self._stop_heartbeat()
            for t in self._tasks:
                t.cancel()
            if self.registered:
                self.ctx.hub.unregister(session)
            # The session is cancelled as soon as the socket is gone, which would skip
            # the cursor flush and leave `finished` unset (a replacing session waits for
            # it): the wind-down runs in a task of its own.
            wind_down = asyncio.ensure_future(self._wind_down())
            _background.add(wind_down)
            wind_down.add_done_callback(_background.discard)
            await asyncio.shield(wind_down)

    async def _wind_down(self) -> None:
        try:
            for t in self._tasks:
                with contextlib.suppress(BaseException):
                    await t
            await self._finish()
            if self.close_code is None and not self._close_reply and self.conn is not None:
                # The WebSocket layer itself may have closed (1009 for an oversized frame).
                sent = self.conn.close_sent_code
                if sent is not None and sent not in (CloseCode.NORMAL, 1005):
                    self.close_code = sent
            if self.registered:
                await self._flush_cursors()
                if self.ctx.metrics is not None:
                    self.ctx.metrics.session_closed(self.close_code)
        finally:
            self._send_close_reply()
            self.finished.set()

    def on_close_reply(self, out: list[bytes]) -> None:
        """The peer closed: our answer waits until its acks are durable (protocol.md §3
        Delivery). A device that reconnects as soon as it has our answer, to another
        process or node, then finds its cursors stored. When the peer answers a close of
        ours (or the session has wound down already) it goes out at once: holding it
        would only keep the peer waiting on a close it already has."""
        self._close_reply.extend(out)
        if self._close_reply_released or self.close_code is not None:
            self._send_close_reply()

    def _send_close_reply(self) -> None:
        self._close_reply_released = True
        out, self._close_reply = self._close_reply, []
        if out and self.conn is not None:
            with contextlib.suppress(Exception):
                self.conn.write_chunks(out)

    async def _finish(self) -> None:
        code = self.close_code or CloseCode.NORMAL
        conn = self.conn
        if conn is None:
            return
        try:
            async with asyncio.timeout(CLOSE_WRITE_TIMEOUT_S):
                await self._write_all()
                await conn.close(code, self.close_reason)
        except TimeoutError:
            # A peer that reads nothing blocks our writes: put the close frame straight on
            # the transport and drop the connection, so that the peer still learns our
            # code (§4: 4410) instead of a later 1000.
            with contextlib.suppress(Exception):
                conn.fail_connection(code, self.close_reason)
        except Exception as exc:
            log.debug("session %s: close: %s", self.session_id, exc)  # already gone

    async def _flush_cursors(self) -> None:
        # Acks received before the close are durable before the next catch-up starts.
        # Bounded: a writer that cannot commit (disk full, database down) must not hold
        # the close; the device may then be sent again what it had acked.
        with contextlib.suppress(Exception):
            async with asyncio.timeout(CLOSE_FLUSH_TIMEOUT_S):
                await self.ctx.eventlog.touch(self.device_id)

    # -- liveness (protocol.md §4) --------------------------------------------------------
    def _touch(self) -> None:
        self.last_rx = time.monotonic()

    def _start_heartbeat(self) -> None:
        interval = self.ctx.settings.gateway_heartbeat_s
        self._hb_next_ping = time.monotonic() + interval
        self._hb_timer = asyncio.get_running_loop().call_later(interval / 4, self._heartbeat)

    def _stop_heartbeat(self) -> None:
        if self._hb_timer is not None:
            self._hb_timer.cancel()
            self._hb_timer = None

    def _heartbeat(self) -> None:
        """Every heartbeat_s / 4 (a timer, not a task): ping every heartbeat_s; close with
        4410 when nothing at all arrived within heartbeat_s after a ping (protocol.md §4),
        unless we paused reading ourselves."""
        self._hb_timer = None
        if self.close_code is not None:
            return
        interval = self.ctx.settings.gateway_heartbeat_s
        now = time.monotonic()
        if self.paused:
            self.last_rx = now
        sent = self._hb_ping_sent_at
        if sent is not None:
            if self.last_rx >= sent:
                self._hb_ping_sent_at = None
            elif now - sent > interval:
                self.close_soon(CloseCode.HEARTBEAT_TIMEOUT, "heartbeat_timeout")
                return
        if now >= self._hb_next_ping:
            self._hb_next_ping = now + interval
            if self._hb_ping_sent_at is None:
                self._hb_ping_sent_at = now
            # Written at once, ahead of nothing: the protocol object's bytes go straight
            # to the transport, so a peer that does not read cannot hold the ping back.
            if self.conn is not None:
                with contextlib.suppress(Exception):
                    self.conn.ping()
        self._hb_timer = asyncio.get_running_loop().call_later(interval / 4, self._heartbeat)


def _is_closed_error(exc: BaseException) -> bool:
    name = type(exc).__name__
    return "Closed" in name or isinstance(exc, ConnectionError)
