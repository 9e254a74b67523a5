"""A gateway session: one device on one connection, and the hot path of every event
through it: messages in (parsed by the protocol core, publishes handed to the event
log, acks), events and acks out through one outbox per loop turn, under the output bound
(protocol.md §3 Publish, §3 Delivery, §4, §7).

The session calls its ``GatewayConnection`` (connection.py) to write, pause reading and
close, and is called by it for every message. The rest of its life is in the mixins: the
handshake (handshake.py), taking the connection over, the wind-down and the heartbeat
(lifecycle.py), and catch-up (catchup.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

from relaybox.protocol.codes import CloseCode
from relaybox.protocol.delivery import DELIVER, HOLD, DeliveryState, Framed, StreamState
from relaybox.protocol.encoding import uuid7
from relaybox.protocol.errors import ProtocolError, PublishRefused
from relaybox.protocol.messages import (
    Ack,
    Auth,
    Hello,
    Ping,
    Publish,
    ack_frame,
    error_frame,
    nack_frame,
    parse_message,
    pong_frame,
)
from relaybox.server.gateway.catchup import CatchUp
from relaybox.server.gateway.connection import GatewayConnection
from relaybox.server.gateway.handshake import HandshakeSteps
from relaybox.server.gateway.lifecycle import Closing, Lifecycle
from relaybox.server.ratelimit import UNLIMITED, SharedBucket, TokenBucket
from relaybox.store.events import (
    Accepted,
    Conflicted,
    PublishRequest,
    PublishResult,
    Refused,
)

if TYPE_CHECKING:
    from sanic.server.websockets.impl import WebsocketImplProtocol

    from relaybox.server.context import ServerContext

log = logging.getLogger("relaybox.gateway")

MAX_PENDING_PUBLISHES = 1024  # per session; beyond it the session stops reading
MAX_EARLY_MESSAGES = 32  # held before READY; beyond it the session stops reading

__all__ = ["Closing", "Session"]


class Session(Lifecycle, CatchUp, HandshakeSteps):
    """One authenticated WebSocket connection of one device.

    ``ws`` is the session's ``GatewayConnection`` (the direct upgrade), or Sanic's
    websocket when the upgrade came through Sanic's request path: ``run`` then takes the
    connection over from it first.
    """

    def __init__(self, ctx: ServerContext, ws: GatewayConnection | WebsocketImplProtocol,
                 address: str) -> None:
        self.ctx = ctx
        self.conn: GatewayConnection | None = None
        self._sanic_ws: WebsocketImplProtocol | None = None
        if isinstance(ws, GatewayConnection):
            self.conn = ws
        else:
            self._sanic_ws = ws
        self.address = address
        self.session_id = uuid7()
        self.device_id = ""
        self.user_id = ""
        s = ctx.settings
        self.state = DeliveryState("", s.gateway_window)
        self.outbox: list[str] = []
        self.outbox_bytes = 0  # in ``outbox``: queued, not yet handed to the transport
        # protocol.md §7 max_outbox_bytes: past it reading pauses (and live delivery with
        # it) until the peer has read. What was read before the pause may still be
        # answered (one read of pongs, acks of pending publishes, the one event that
        # crossed the mark): past twice the bound plus one frame the session closes.
        self._out_high = s.gateway_max_outbox_bytes
        self._out_max = 2 * s.gateway_max_outbox_bytes + s.gateway_max_frame_bytes
        self._flush_scheduled = False
        self._sender_idle = asyncio.Event()
        self._sender_idle.set()
        self.wake = asyncio.Event()
        self.finished = asyncio.Event()
        self.close_code: int | None = None
        self.close_reason = ""
        self.pending_publishes = 0
        self._early: list[str | bytes] = []  # messages that arrived before READY
        self._early_waiter: asyncio.Future[None] | None = None
        self._peer_closed = asyncio.Event()
        # The device's own, from the hub, once authenticated.
        self.bucket: TokenBucket | SharedBucket = UNLIMITED
        self.last_rx = time.monotonic()
        self.paused = False
        self.registered = False
        self._tasks: list[asyncio.Task[Any]] = []
        self._hb_timer: asyncio.TimerHandle | None = None
        self._hb_next_ping = 0.0
        self._hb_ping_sent_at: float | None = None
        self._main: asyncio.Task[Any] | None = None
        self._close_reply: list[bytes] = []  # our answer to the peer's close, held
        self._close_reply_released = False

    # Read by the hub, health and metrics: the delivery state's, under the session's names.
    @property
    def streams(self) -> dict[str, StreamState]:
        return self.state.streams

    @property
    def ready(self) -> bool:
        return self.state.ready

    # -- messages in (on the loop, synchronously, from ``data_received``) -----------------
    def on_message(self, data: str | bytes) -> None:
        """Every complete message."""
        if self.state.ready:
            self._handle(data)
        else:
            self._early.append(data)
            if len(self._early) >= MAX_EARLY_MESSAGES and self.conn is not None:
                self.conn.pause_reading("early")  # resumed once READY
            self._wake_early()

    # -- READY ---------------------------------------------------------------------------
    def _handle(self, data: str | bytes) -> None:
        """One message after READY: parsed, then answered or handed on."""
        if self.close_code is not None:
            return
        try:
            try:
                msg = parse_message(data,
                                    max_body_bytes=self.ctx.settings.gateway_max_body_bytes)
            except PublishRefused as exc:
                self.send(nack_frame(exc.id, exc.code, message=exc.message))
                self._count_nack(exc.code)
                return
            except ProtocolError as exc:
                if exc.fatal:
                    self._fail(exc)
                else:
                    self.send(error_frame(exc.code, exc.message))
                return
            if isinstance(msg, Publish):
                self._publish(msg)
            elif isinstance(msg, Ack):
                self._ack(msg)
            elif isinstance(msg, Ping):
                self.send(pong_frame(msg.ref))
            elif isinstance(msg, Hello | Auth):
                self._fail(ProtocolError("bad_request",
                                         "handshake message after the handshake"))
            else:
                self.send(error_frame("unknown_type", f"unknown message type {msg.type!r}"))
        except Exception:
            # A bug of ours must not cost the peer its session or what is queued for it.
            log.exception("session %s: message handling failed", self.session_id)
            self.send(error_frame("internal", "the server could not handle this message"))

    def _fail(self, exc: ProtocolError) -> None:
        """A fatal protocol violation: say why, then close with its code."""
        if self.close_code is None:
            self.send(error_frame(exc.code, exc.message))
            self.close_soon(exc.close_code or CloseCode.BAD_REQUEST, exc.code)

    def _count_nack(self, code: str) -> None:
        if self.ctx.metrics is not None:
            self.ctx.metrics.nacked(code)

    def _publish(self, msg: Publish) -> None:
        wait = self.bucket.take()
        if wait > 0:
            self.send(nack_frame(msg.id, "rate_limited", retry_after_ms=max(1, int(wait * 1000))))
            self._count_nack("rate_limited")
            return
        self.pending_publishes += 1
        if self.pending_publishes >= MAX_PENDING_PUBLISHES and self.conn is not None:
            # Stop reading until commits catch up; the heartbeat deadline is suspended.
            self.paused = True
            self.conn.pause_reading("publishes")
        req = PublishRequest(self.user_id, self.device_id, msg.id, msg.stream, msg.body,
                             msg.key, msg.base_seq)
        client_id = msg.id
        self.ctx.eventlog.publish_cb(req, lambda res: self._published(client_id, res))

    def _published(self, client_id: str, res: PublishResult) -> None:
        self.pending_publishes -= 1
        if self.paused and self.pending_publishes <= MAX_PENDING_PUBLISHES // 2:
            self.paused = False
            if self.conn is not None:
                self.conn.resume_reading("publishes")
        if isinstance(res, Accepted):
            ev = res.event
            self.send(ack_frame(client_id, ev.stream, ev.seq, ev.ts_text))
        elif isinstance(res, Conflicted):
            self.send(nack_frame(client_id, "conflict", stream=res.stream,
                                 head_seq=res.head_seq))
            self._count_nack("conflict")
        elif isinstance(res, Refused):
            # protocol.md §3 Publish: a value storage cannot hold is `invalid`; a publish
            # over a quota is `forbidden` and names the quota (docs/protocol.md §3 Quotas).
            extra = {"quota": res.quota} if res.quota is not None else {}
            self.send(nack_frame(client_id, res.code, **extra, message=res.message))
            self._count_nack(res.code)
        else:
            self.send(nack_frame(client_id, "unavailable",
                                 message="storage is unavailable; retry with the same id"))
            self._count_nack("unavailable")

    def _ack(self, msg: Ack) -> None:
        state = self.state
        was_full = state.inflight >= state.window
        seq = state.ack(msg.stream, msg.seq)
        if seq:
            if was_full and state.inflight < state.window:
                self.wake.set()
            self.ctx.eventlog.save_cursor(state.device_id, msg.stream, seq)

    # -- events out ---------------------------------------------------------------------
    def offer(self, ev: Framed) -> None:
        """A newly committed event of this user (called by the hub, on the loop): sent now
        if the delivery state says so, else left to the pump (catchup.py)."""
        decision = self.state.offer(ev.stream, ev.seq, ev.device_id)
        if decision == DELIVER:
            self.send(ev.frame)
            if self.ctx.metrics is not None:
                self.ctx.metrics.delivered(ev.event.ts)
        elif decision == HOLD:
            self.wake.set()

    # -- sending -----------------------------------------------------------------------
    def send(self, frame: str) -> None:
        """Queue a frame; every frame queued in one loop turn goes out in one socket write."""
        if self.close_code is not None:
            return
        self.outbox.append(frame)
        self.outbox_bytes += len(frame)
        if self.outbox_bytes > self._out_high:
            self._check_output()
            if self.close_code is not None:
                return
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._sender_idle.clear()
            asyncio.get_running_loop().call_soon(self._flush_now)

    def _flush_now(self) -> None:
        """End of the loop turn: write the outbox directly, or hand it to ``_flush`` while
        the transport asked to pause writing."""
        frames, self.outbox = self.outbox, []
        conn = self.conn
        try:
            if frames:
                if conn is None:
                    raise ConnectionError("the connection is gone")
                if not conn.write_texts(frames):
                    self.outbox[:0] = frames
                    asyncio.get_running_loop().create_task(self._flush())
                    return
            self.outbox_bytes = 0
        except Exception:
            self._drop_outbox()
            self.close_soon(CloseCode.NORMAL, "")
        self._flush_scheduled = False
        self._sender_idle.set()
        if self.state.paused:
            self.on_drain()

    async def _flush(self) -> None:
        try:
            await self._write_all()
        except Exception:
            self._drop_outbox()
            self.close_soon(CloseCode.NORMAL, "")
        finally:
            self._flush_scheduled = False
            self._sender_idle.set()
        if self.state.paused:
            self.on_drain()

    async def _write_all(self) -> None:
        """Write the outbox, waiting while the transport's buffer is full."""
        while self.outbox:
            if self.conn is None:
                raise ConnectionError("the connection is gone")
            await self.conn.wait_writable()
            conn = self.conn
            if conn is None:
                raise ConnectionError("the connection is gone")
            frames, self.outbox = self.outbox, []
            if conn.write_texts(frames):
                self.outbox_bytes -= sum(len(f) for f in frames)
            else:
                self.outbox[:0] = frames

    def _drop_outbox(self) -> None:
        self.outbox.clear()
        self.outbox_bytes = 0

    # -- the output bound (protocol.md §7 max_outbox_bytes) --------------------------------
    def on_written(self) -> None:
        """After something was queued or written: pause reading past the bound, close with
        4429 far past it (a peer that sends and never reads)."""
        self._check_output()

    def _check_output(self) -> None:
        if self.close_code is not None:
            return
        conn = self.conn
        size = self.outbox_bytes + (conn.write_buffer_size() if conn is not None else 0)
        if size > self._out_max:
            self._drop_outbox()
            if self.ctx.metrics is not None:
                self.ctx.metrics.outbox_overflow()
            if conn is not None:
                conn.pause_reading("closing")  # nothing more is read from this peer
            self.close_soon(CloseCode.RATE_LIMITED, "outbox_full")
        elif size > self._out_high and not self.state.paused:
            self.state.paused = True
            if conn is not None:
                conn.pause_reading("output")

    def on_drain(self) -> None:
        """The transport took everything (called after writes and when it resumes writing):
        read again, and let delivery send what it held back."""
        conn = self.conn
        if not self.state.paused or self.outbox or conn is None or not conn.writable:
            return
        self.state.paused = False
        conn.resume_reading("output")
        self.wake.set()

    def close_soon(self, code: int, reason: str) -> None:
        """End the session with ``code`` (after what is already queued is written)."""
        if self.close_code is None:
            self.close_code = code
            self.close_reason = reason
            if self._main is not None and not self._main.done():
                self._main.cancel()

