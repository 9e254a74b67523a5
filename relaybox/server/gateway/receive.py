"""A session's receive path: messages from its connection, parsed by the protocol core,
answered or handed to the event log (protocol.md §3 Publish, §3 Delivery, §4 ping)."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from relaybox.protocol.codes import CloseCode
from relaybox.protocol.errors import ProtocolError, PublishRefused
from relaybox.protocol.frames import ack_frame, error_frame, nack_frame, pong_frame
from relaybox.protocol.messages import Ack, Auth, Hello, Ping, Publish, parse_message
from relaybox.server.ratelimit import SharedBucket, TokenBucket
from relaybox.store.events import Accepted, Conflicted, PublishRequest, PublishResult, Refused

if TYPE_CHECKING:
    from relaybox.server.context import ServerContext
    from relaybox.server.gateway.connection import GatewayConnection

log = logging.getLogger("relaybox.gateway")

MAX_PENDING_PUBLISHES = 1024  # per session; beyond it the session stops reading
MAX_EARLY_MESSAGES = 32  # held before READY; beyond it the session stops reading


class Closing(Exception):
    """Ends a session with a close code."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class Receive:
    """The receive half of a gateway session (mixed into ``Session``)."""

    ctx: ServerContext
    conn: GatewayConnection | None
    session_id: str
    device_id: str
    user_id: str
    close_code: int | None
    bucket: TokenBucket | SharedBucket
    pending_publishes: int
    paused: bool
    _early: list[str | bytes]
    _early_waiter: asyncio.Future[None] | None
    _peer_closed: asyncio.Event

    @property
    def ready(self) -> bool:
        raise NotImplementedError

    def send(self, frame: str) -> None:
        raise NotImplementedError

    def close_soon(self, code: int, reason: str) -> None:
        raise NotImplementedError

    def _ack(self, msg: Ack) -> None:
        raise NotImplementedError

    # -- from the connection ---------------------------------------------------------------
    def on_message(self, data: str | bytes) -> None:
        """Every complete message (on the loop, synchronously, from ``data_received``)."""
        if self.ready:
            self._handle(data)
        else:
            self._early.append(data)
            if len(self._early) >= MAX_EARLY_MESSAGES and self.conn is not None:
                self.conn.pause_reading("early")  # resumed once READY
            self._wake_early()

    def on_peer_closed(self) -> None:
        self._peer_closed.set()
        self._wake_early()

    def _wake_early(self) -> None:
        waiter = self._early_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _next_early(self) -> str | bytes:
        """The next message that arrived before READY (the handshake's `hello`, `auth`)."""
        while not self._early:
            if self._peer_closed.is_set():
                raise Closing(CloseCode.NORMAL, "")
            self._early_waiter = asyncio.get_running_loop().create_future()
            try:
                await self._early_waiter
            finally:
                self._early_waiter = None
        return self._early.pop(0)

    # -- READY ---------------------------------------------------------------------------
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
