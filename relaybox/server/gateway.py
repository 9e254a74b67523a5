"""The WebSocket gateway: a thin shell feeding frames to the protocol core and services."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING, Any

from relaybox.protocol.codes import CloseCode
from relaybox.protocol.delivery import DeliveryState
from relaybox.protocol.encoding import random_nonce, uuid7
from relaybox.protocol.errors import ProtocolError, PublishRefused
from relaybox.protocol.frames import (
    ack_frame,
    error_frame,
    nack_frame,
    pong_frame,
    welcome_frame,
)
from relaybox.protocol.handshake import UNKNOWN_DEVICE_KEY, Handshake
from relaybox.protocol.messages import Ack, Auth, Hello, Ping, Publish, parse_message
from relaybox.server import logs
from relaybox.server.delivery import Delivery
from relaybox.server.ratelimit import UNLIMITED, SharedBucket, TokenBucket
from relaybox.server.wsio import FrameReader, send_frames, write_frames_now
from relaybox.store import queries
from relaybox.store.eventlog import Accepted, Conflicted, PublishRequest, PublishResult, Refused

if TYPE_CHECKING:
    from relaybox.server.context import ServerContext

log = logging.getLogger("relaybox.gateway")

MAX_PENDING_PUBLISHES = 1024  # per session; beyond it the session stops reading
MAX_EARLY_MESSAGES = 32  # held before READY; beyond it the session stops reading
CLOSE_WRITE_TIMEOUT_S = 2.0  # to write what is queued and the close frame
CLOSE_FLUSH_TIMEOUT_S = 5.0  # to make a closing session's acks durable
_background: set[asyncio.Future[Any]] = set()  # wind-downs outliving their handler


class Closing(Exception):
    """Ends a session with a close code."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class Session(Delivery):
    """One authenticated WebSocket connection of one device."""

    def __init__(self, ctx: ServerContext, ws: Any, address: str) -> None:
        self.ctx = ctx
        self.ws = ws
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
        self.reader: FrameReader | None = None
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
        self._hb_pinging: asyncio.Future[Any] | None = None
        self._main: asyncio.Task[Any] | None = None
        self._close_reply: list[bytes] = []  # our answer to the peer's close, held
        self._close_reply_released = False

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
        """End of the loop turn: write the outbox directly, or hand it to ``_flush``."""
        frames, self.outbox = self.outbox, []
        try:
            if frames and not write_frames_now(self.ws, frames):
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
            self._output_drained()

    async def _flush(self) -> None:
        try:
            while self.outbox:
                frames, self.outbox = self.outbox, []
                await send_frames(self.ws, frames)
                self.outbox_bytes -= sum(len(f) for f in frames)
        except Exception:
            self._drop_outbox()
            self.close_soon(CloseCode.NORMAL, "")
        finally:
            self._flush_scheduled = False
            self._sender_idle.set()
        if self.state.paused:
            self._output_drained()

    def _drop_outbox(self) -> None:
        self.outbox.clear()
        self.outbox_bytes = 0

    # -- the output bound (protocol.md §7 max_outbox_bytes) --------------------------------
    def _check_output(self) -> None:
        """After something was queued or written: pause reading past the bound, close with
        4429 far past it (a peer that sends and never reads)."""
        if self.close_code is not None:
            return
        size = self.outbox_bytes + _write_buffered(self.ws)
        if size > self._out_max:
            self._drop_outbox()
            if self.ctx.metrics is not None:
                self.ctx.metrics.outbox_overflow()
            if self.reader is not None:
                self.reader.pause("closing")  # nothing more is read from this peer
            self.close_soon(CloseCode.RATE_LIMITED, "outbox_full")
        elif size > self._out_high and not self.state.paused:
            self.state.paused = True
            if self.reader is not None:
                self.reader.pause("output")

    def _output_drained(self) -> None:
        """The transport took everything (called after writes and when it resumes writing):
        read again, and let delivery send what it held back."""
        if not self.state.paused or self.outbox or not _can_write(self.ws):
            return
        self.state.paused = False
        if self.reader is not None:
            self.reader.resume("output")
        self.wake.set()

    def close_soon(self, code: int, reason: str) -> None:
        """End the session with ``code`` (after what is already queued is written)."""
        if self.close_code is None:
            self.close_code = code
            self.close_reason = reason
            if self._main is not None and not self._main.done():
                self._main.cancel()

    def release(self) -> None:
        """After the session ended and its connection is gone: drop the references from
        the session to its tasks and reader (each refers back to the session)."""
        self._tasks.clear()
        io_proto = getattr(self.ws, "io_proto", None)
        if getattr(io_proto, "on_drain", None) == self._output_drained:
            io_proto.on_drain = None  # type: ignore[union-attr]
        self._stop_heartbeat()
        self._hb_pinging = None
        self._main = None
        self.reader = None

    # -- main -----------------------------------------------------------------------------
    async def run(self) -> None:
        self._main = asyncio.current_task()
        logs.bind_session(self.session_id, "")
        ws = self.ws
        # Any frame (pongs included) is proof of life (protocol.md §4).
        original = ws.data_received

        def data_received(data: bytes) -> None:
            self.last_rx = time.monotonic()
            original(data)

        ws.data_received = data_received
        io_proto = getattr(ws, "io_proto", None)
        if io_proto is not None and hasattr(io_proto, "on_drain"):
            io_proto.on_drain = self._output_drained
        try:
            try:
                await self._handshake()
                self._tasks.append(asyncio.create_task(self._pump()))
                self._start_heartbeat()
                early, self._early = self._early, []
                if self.reader is not None:
                    self.reader.resume("early")
                for data in early:
                    self._handle(data)
                # Messages are handled by the reader's callback from here on.
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
                self.ctx.hub.unregister(self)
            # The handler is cancelled as soon as the socket is gone, which would skip
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
            if self.close_code is None and not self._close_reply:
                # The WebSocket layer itself may have closed (1009 for an oversized frame).
                sent = getattr(getattr(self.ws, "ws_proto", None), "close_sent", None)
                if sent is not None and sent.code not in (CloseCode.NORMAL, 1005):
                    self.close_code = sent.code
            if self.registered:
                await self._flush_cursors()
                if self.ctx.metrics is not None:
                    self.ctx.metrics.session_closed(self.close_code)
        finally:
            await self._send_close_reply()
            self.finished.set()

    def _hold_close_reply(self, out: list[bytes]) -> None:
        """The peer closed: our answer waits until its acks are durable (protocol.md §3
        Delivery). A device that reconnects as soon as it has our answer, to another
        process or node, then finds its cursors stored. When the peer answers a close of
        ours (or the session has wound down already) it goes out at once: holding it
        would only keep the peer waiting on a close it already has."""
        self._close_reply.extend(out)
        if self._close_reply_released or self.close_code is not None:
            self._spawn_send_close_reply()

    def _spawn_send_close_reply(self) -> None:
        task = asyncio.ensure_future(self._send_close_reply())
        _background.add(task)
        task.add_done_callback(_background.discard)

    async def _send_close_reply(self) -> None:
        self._close_reply_released = True
        out, self._close_reply = self._close_reply, []
        if not out:
            return
        with contextlib.suppress(Exception):
            write_now = getattr(self.ws, "write_now", None)
            if write_now is not None:
                write_now(out)
            else:
                await self.ws.send_data(out)

    async def _finish(self) -> None:
        code = self.close_code or CloseCode.NORMAL
        try:
            async with asyncio.timeout(CLOSE_WRITE_TIMEOUT_S):
                if self.outbox:
                    frames, self.outbox = self.outbox, []
                    await send_frames(self.ws, frames)
                await self.ws.close(code, self.close_reason)
        except TimeoutError:
            # A peer that reads nothing blocks our writes (and the socket's lock): put the
            # close frame straight on the transport and drop the connection, so that the
            # peer still learns our code (§4: 4410) instead of a later 1000 from Sanic.
            with contextlib.suppress(Exception):
                self.ws.fail_connection(code, self.close_reason)
        except Exception as exc:
            log.debug("session %s: close: %s", self.session_id, exc)  # already gone

    async def _flush_cursors(self) -> None:
        # Acks received before the close are durable before the next catch-up starts.
        # Bounded: a writer that cannot commit (disk full, database down) must not hold
        # the close; the device may then be sent again what it had acked.
        with contextlib.suppress(Exception):
            async with asyncio.timeout(CLOSE_FLUSH_TIMEOUT_S):
                await self.ctx.eventlog.touch(self.device_id)

    # -- handshake (protocol.md §2) --------------------------------------------------
    async def _handshake(self) -> None:
        ctx = self.ctx
        s = ctx.settings
        if await ctx.handshake_limited(self.address):
            if ctx.metrics is not None:
                ctx.metrics.handshake("rate_limited")
            raise Closing(CloseCode.RATE_LIMITED, "rate_limited")
        hs = Handshake(ctx.server_id, self.session_id, random_nonce())
        try:
            async with asyncio.timeout(s.gateway_handshake_timeout_s):
                # Every message goes through this reader from the start, so that one that
                # came in the same read as `hello` is handled in turn, not lost (§2).
                self.reader = FrameReader(self.ws, self._on_message, self._on_peer_closed,
                                          self._touch, self._check_output)
                self.reader.on_close_reply = self._hold_close_reply
                self.reader.install()
                self._early[:0] = await _take_pending(self.ws)
                hs.receive(self._parse(await self._next_early()))
                await send_frames(self.ws, [hs.challenge()])
                hs.receive(self._parse(await self._next_early()))
                # A device seen before (devicekeys.py): one Ed25519 check right here costs
                # less than the hop to a reader thread and back. Any other case, a failed
                # check included, takes that check plus the database's answer, so that a
                # failure costs the same for a cached, a known and an unknown device (§2).
                device = ctx.hub.keys.get(hs.device_id)
                valid = hs.verify(device.public_key if device is not None
                                  else UNKNOWN_DEVICE_KEY) and device is not None
                if valid:
                    source = "cache"
                else:
                    source = "database"
                    device, valid = await ctx.eventlog.read(_check_device, hs)
                    if device is not None and valid:
                        ctx.hub.keys.remember(device)
                if ctx.metrics is not None:
                    ctx.metrics.key_lookup(source)
        except TimeoutError:
            if ctx.metrics is not None:
                ctx.metrics.handshake("timeout")
            raise Closing(CloseCode.HANDSHAKE_TIMEOUT, "handshake_timeout") from None
        if device is None or not valid:
            await ctx.handshake_failed(self.address)
            if ctx.metrics is not None:
                ctx.metrics.handshake("auth_failed")
            self.outbox.append(error_frame("auth_failed", "authentication failed"))
            raise Closing(CloseCode.AUTH_FAILED, "auth_failed")
        if device.revoked_at is not None:
            await ctx.handshake_failed(self.address)  # a failed handshake too (§2 step 4)
            if ctx.metrics is not None:
                ctx.metrics.handshake("revoked")
            self.outbox.append(error_frame("revoked", "this device was revoked"))
            raise Closing(CloseCode.REVOKED, "revoked")
        hs.authenticated()
        self.device_id = self.state.device_id = device.id
        self.user_id = device.user_id
        logs.bind_session(self.session_id, self.device_id)

        old = ctx.hub.register(self)
        self.registered = True
        self.bucket = ctx.hub.bucket_for(self.device_id, s.gateway_publish_rate_per_s,
                                         s.gateway_publish_burst)
        # The rest of the handshake is bounded too (a hanging hand-over or a slow database
        # must not leave a session that never gets `welcome` nor a close), and a close
        # that came meanwhile (replaced, revoked) ends it even if an await swallowed the
        # cancellation.
        try:
            async with asyncio.timeout(s.gateway_handshake_timeout_s):
                if old is not None:
                    old.close_soon(CloseCode.SESSION_REPLACED, "session_replaced")
                    await old.finished.wait()
                self._raise_if_closing()
                if ctx.bus is not None and ctx.bus.healthy:
                    # A session of this device on another process is closed with 4409
                    # and, like a local one, wound down (acks stored) before this
                    # catch-up reads positions; and this process hears the user's events
                    # from other processes and CLI commands before then too.
                    await asyncio.gather(ctx.hub.replaced_elsewhere(self),
                                         ctx.hub.listening(self.user_id))
                self._raise_if_closing()
                # Acks of this device's earlier session may still wait in the writer's
                # queue; they must be durable before this catch-up starts (protocol.md §3
                # Delivery), so the writer reads the positions in the batch that also
                # records last_seen.
                heads, cursors, revoked = await self._touch_until_stored()
                # The first publish tokens, when the bucket is leased from Redis.
                await self.bucket.ready()
        except TimeoutError:
            if ctx.metrics is not None:
                ctx.metrics.handshake("timeout")
            raise Closing(CloseCode.HANDSHAKE_TIMEOUT, "handshake_timeout") from None
        self._raise_if_closing()
        if revoked:
            # Revoked (or removed) after the key was read, or a known key whose revoke
            # notice never reached this process: the notice may have found no session to
            # close, so the writer's answer decides.
            ctx.hub.keys.forget(self.device_id)
            await ctx.handshake_failed(self.address)
            if ctx.metrics is not None:
                ctx.metrics.handshake("revoked")
            self.outbox.append(error_frame("revoked", "this device was revoked"))
            raise Closing(CloseCode.REVOKED, "revoked")
        streams = self.state.start(heads, cursors)
        # heartbeat_s is a float setting (20 is sent as 20, 0.3 as 0.3); welcome_frame's
        # annotation says int.
        heartbeat: Any = _num(s.gateway_heartbeat_s)
        self.send(welcome_frame(self.session_id, self.user_id, self.device_id, heartbeat,
                                self.state.window, s.gateway_max_body_bytes, streams))
        self.state.ready = True
        ctx.hub.announce_online(self)
        self.wake.set()
        if ctx.metrics is not None:
            ctx.metrics.handshake("ok")
            ctx.metrics.session_opened()

    async def _touch_until_stored(self) -> Any:
        """The writer's ``touch`` (positions read after the acks before them are stored).
        While storage fails (a full disk, the database down) it is tried again until the
        handshake's deadline, which then ends the session with 4408: the device retries
        later, as for any handshake not completed in time (protocol.md §2)."""
        delay = 0.05
        warned = False
        while True:
            try:
                return await self.ctx.eventlog.touch(self.device_id, self.user_id)
            except Exception as exc:
                if not warned:
                    log.warning("session %s: storage failing during the handshake, "
                                "retrying: %s", self.session_id, exc)
                    warned = True
            self._raise_if_closing()
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)

    def _raise_if_closing(self) -> None:
        if self.close_code is not None:
            raise Closing(self.close_code, self.close_reason)

    def _parse(self, data: Any) -> Any:
        """A handshake message: anything refused here is a protocol violation (§2), so a
        publish or ack with bad fields is `bad_request` too, not its non-fatal code."""
        if data is None:
            raise Closing(CloseCode.NORMAL, "")
        try:
            return parse_message(data,
                                 max_body_bytes=self.ctx.settings.gateway_max_body_bytes)
        except ProtocolError as exc:
            if exc.close_code is not None and not isinstance(exc, PublishRefused):
                raise
            raise ProtocolError("bad_request", "only hello and auth are allowed before "
                                "the handshake completes") from None

    # -- receiving (READY) ----------------------------------------------------------------
    def _touch(self) -> None:
        self.last_rx = time.monotonic()

    def _on_message(self, data: str | bytes) -> None:
        """Every complete message from the reader (on the loop, synchronously)."""
        if self.ready:
            self._handle(data)
        else:
            self._early.append(data)
            if len(self._early) >= MAX_EARLY_MESSAGES and self.reader is not None:
                self.reader.pause("early")  # resumed once READY
            self._wake_early()

    def _on_peer_closed(self) -> None:
        self._peer_closed.set()
        self._wake_early()

    def _wake_early(self) -> None:
        waiter = self._early_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _next_early(self) -> str | bytes:
        """The next message that arrived before READY (the handshake's `auth`)."""
        while not self._early:
            if self._peer_closed.is_set():
                raise Closing(CloseCode.NORMAL, "")
            self._early_waiter = asyncio.get_running_loop().create_future()
            try:
                await self._early_waiter
            finally:
                self._early_waiter = None
        return self._early.pop(0)

    def _handle(self, data: str | bytes) -> None:
        if self.close_code is not None:
            return
        try:
            self._dispatch(data)
        except Exception:
            # A bug of ours must not cost the peer its session or what is queued for it.
            log.exception("session %s: message handling failed", self.session_id)
            self.send(error_frame("internal", "the server could not handle this message"))

    def _dispatch(self, data: str | bytes) -> None:
        try:
            msg = parse_message(data, max_body_bytes=self.ctx.settings.gateway_max_body_bytes)
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
            self._fail(ProtocolError("bad_request", "handshake message after the handshake"))
        else:
            self.send(error_frame("unknown_type", f"unknown message type {msg.type!r}"))

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
        if self.pending_publishes >= MAX_PENDING_PUBLISHES and self.reader is not None:
            # Stop reading until commits catch up; the heartbeat deadline is suspended.
            self.paused = True
            self.reader.pause("publishes")
        req = PublishRequest(self.user_id, self.device_id, msg.id, msg.stream, msg.body,
                             msg.key, msg.base_seq)
        client_id = msg.id
        self.ctx.eventlog.publish_cb(req, lambda res: self._published(client_id, res))

    def _published(self, client_id: str, res: PublishResult) -> None:
        self.pending_publishes -= 1
        if self.paused and self.pending_publishes <= MAX_PENDING_PUBLISHES // 2:
            self.paused = False
            if self.reader is not None:
                self.reader.resume("publishes")
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

    # -- liveness (protocol.md §4) --------------------------------------------------------
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
            # The ping may wait behind writes that a peer not reading blocks: it runs on
            # its own so that the deadline above is still checked.
            if self._hb_pinging is None or self._hb_pinging.done():
                self._hb_pinging = asyncio.ensure_future(self._ping())
        self._hb_timer = asyncio.get_running_loop().call_later(interval / 4, self._heartbeat)

    async def _ping(self) -> None:
        with contextlib.suppress(Exception):
            await self.ws.ping()


def _check_device(hs: Handshake) -> tuple[queries.DeviceKey | None, bool]:
    """The device's key and whether the `auth` signature verifies, in the reader pool: the
    lookup needs a thread anyway, and libsodium's check runs there without the GIL instead
    of on the event loop."""
    device = queries.device_key(hs.device_id)
    # An unknown device costs a signature check too (no enumeration by timing).
    valid = hs.verify(device.public_key if device is not None else UNKNOWN_DEVICE_KEY)
    return device, device is not None and valid


async def _take_pending(ws: Any) -> list[str | bytes]:
    """Messages the connection received before the session's reader was installed."""
    take = getattr(ws, "take_messages", None)
    if take is not None:  # our own connection (upgrade.py)
        return list(take())
    # Sanic's connection hands each message over through a task: let those run, then
    # collect what they assembled.
    pending: list[str | bytes] = []
    for _ in range(MAX_EARLY_MESSAGES):
        await asyncio.sleep(0)
        try:
            message = await ws.recv(timeout=0)
        except Exception:
            break
        if message is None:
            break
        pending.append(message)
    return pending


def _write_buffered(ws: Any) -> int:
    transport = getattr(getattr(ws, "io_proto", None), "transport", None)
    return transport.get_write_buffer_size() if transport is not None else 0


def _can_write(ws: Any) -> bool:
    can_write = getattr(getattr(ws, "io_proto", None), "_can_write", None)
    return can_write is None or can_write.is_set()


def _num(value: float) -> int | float:
    return int(value) if float(value).is_integer() else value


def _is_closed_error(exc: BaseException) -> bool:
    name = type(exc).__name__
    return "Closed" in name or isinstance(exc, ConnectionError)
