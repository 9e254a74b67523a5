"""One gateway connection: the asyncio protocol that owns the transport and the WebSocket
protocol object (the `websockets` library's sans-I/O ``ServerProtocol``) and calls its
session.

Both ways in end here. The direct upgrade (``relaybox/server/upgrade.py``) and Sanic's
request path (every deployment behind a proxy) hand the transport over with
``transport.set_protocol``: from then on the socket's bytes, flow control and loss come to
this object, which parses frames and calls the session synchronously, with no task per
message. What the HTTP protocol that accepted the connection still has to do when it ends
(connection counts, Sanic's own bookkeeping) it is told through its ``connection_lost``.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from websockets.frames import Frame, Opcode
from websockets.protocol import State
from websockets.server import ServerProtocol

if TYPE_CHECKING:
    from sanic.server.websockets.impl import WebsocketImplProtocol

log = logging.getLogger("relaybox.gateway")

MAX_ADOPTED_MESSAGES = 32  # messages Sanic's connection parsed before the hand-over


class Handler(Protocol):
    """What a connection calls on its session (``relaybox.server.gateway.session``)."""

    def on_message(self, data: str | bytes) -> None: ...

    def on_peer_closed(self) -> None: ...

    def on_written(self) -> None: ...

    def on_drain(self) -> None: ...

    def on_close_reply(self, out: list[bytes]) -> None: ...

    def release(self) -> None: ...


class Serving(Handler, Protocol):
    """A session a connection runs (``start``): it serves until the connection ends."""

    async def serve(self) -> None: ...


class GatewayConnection(asyncio.Protocol):
    """A WebSocket connection of the gateway, once its upgrade was answered."""

    def __init__(self, transport: asyncio.Transport, ws_proto: ServerProtocol,
                 close_timeout: float, owner: asyncio.BaseProtocol | None = None) -> None:
        self.transport = transport
        self.ws_proto = ws_proto
        self.loop = asyncio.get_running_loop()
        self.close_timeout = close_timeout
        # The protocol that accepted the connection: told when the connection is lost.
        self._owner = owner
        self.handler: Handler | None = None
        self._held: list[str | bytes] = []  # messages before a handler is attached
        self._parts: list[Any] = []
        self._text = True
        self._pauses: set[str] = set()  # why reading is paused (back-pressure)
        self._writable = asyncio.Event()  # pause_writing / resume_writing (flow control)
        self._writable.set()
        self.on_activity: Callable[[], None] | None = None  # any bytes prove life (§4)
        self.peer_closed = False
        self._lost = False
        self._eof_sent = False
        self._abort_timer: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[Any] | None = None

    # -- taking the transport over -----------------------------------------------------
    def take_over(self) -> None:
        """Become the transport's protocol (both ways in end here)."""
        self.transport.set_protocol(self)

    def start(self, session: Serving) -> asyncio.Task[Any]:
        """Run ``session`` (its ``serve``) on this connection; it ends with the connection."""
        self._task = task = self.loop.create_task(session.serve())
        task.add_done_callback(self._session_done)
        return task

    def attach(self, handler: Handler) -> None:
        """From now on complete messages go to ``handler``; those held come first."""
        self.handler = handler
        held, self._held = self._held, []
        for data in held:
            self._deliver_message(data)
        if self.peer_closed:
            handler.on_peer_closed()

    # -- asyncio.Protocol ----------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        if self.on_activity is not None:
            self.on_activity()
        proto = self.ws_proto
        proto.receive_data(data)
        out = proto.data_to_send()  # pongs to pings, the answer to a close frame, EOF
        # Frames only: the handshake is over (Request and Response are handshake events).
        events: list[Frame] = proto.events_received()  # type: ignore[assignment]
        handler = self.handler
        if out and handler is not None and any(f.opcode is Opcode.CLOSE for f in events):
            # The answer to the peer's close waits until its acks are durable (§3).
            handler.on_close_reply(out)
            out = []
        if out:
            self.write_chunks(out)
            if handler is not None:
                handler.on_written()
        for frame in events:
            op = frame.opcode
            if op is Opcode.TEXT or op is Opcode.BINARY:
                if frame.fin:
                    self._message(op is Opcode.TEXT, frame.data)
                else:
                    self._text = op is Opcode.TEXT
                    self._parts = [frame.data]
            elif op is Opcode.CONT:
                self._parts.append(frame.data)
                if frame.fin:
                    joined = b"".join(self._parts)
                    self._parts = []
                    self._message(self._text, joined)
            elif op is Opcode.CLOSE:
                self._peer_closed()
            # PING is answered by the protocol object (in ``out``); PONG only proves life.
        if proto.state is State.CLOSED:
            self._peer_closed()

    def eof_received(self) -> bool:
        self.ws_proto.receive_eof()
        self._peer_closed()
        return False  # the transport closes itself

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()
        if self.handler is not None:
            self.handler.on_drain()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._lost:
            return
        self._lost = True
        self._writable.set()  # nothing waits for a transport that is gone
        self._peer_closed()
        if self._task is not None and not self._task.done():
            self._task.cancel()
        if self._task is None or self._task.done():
            self._release()
        owner, self._owner = self._owner, None
        if owner is not None:
            owner.connection_lost(exc)

    # -- what the session calls ------------------------------------------------------------
    @property
    def writable(self) -> bool:
        """False while the transport asked to pause writing (its buffer is full)."""
        return self._writable.is_set()

    async def wait_writable(self) -> None:
        await self._writable.wait()

    def write_buffer_size(self) -> int:
        return 0 if self._lost else self.transport.get_write_buffer_size()

    def write_texts(self, frames: list[str]) -> bool:
        """Several text frames in one socket write. False, having written nothing, while
        the transport is full (the caller waits for ``wait_writable``)."""
        proto = self.ws_proto
        if proto.state is not State.OPEN:
            raise ConnectionError("websocket is closed")
        if self._lost or self.transport.is_closing():
            return True  # nobody to write to: dropped, as a closed transport drops writes
        if not self._writable.is_set():
            return False
        for f in frames:
            proto.send_text(f.encode())
        self.transport.write(b"".join(proto.data_to_send()))
        return True

    def write_chunks(self, chunks: list[bytes]) -> None:
        """Bytes the protocol object produced (pongs, close frames); b"" ends the stream."""
        transport = self.transport
        if self._lost or transport.is_closing() or self._eof_sent:
            return
        for chunk in chunks:
            if chunk:
                transport.write(chunk)
            else:  # end of the stream (after our close frame): the server ends TCP
                self._end_stream()
                return

    def ping(self) -> None:
        if self.ws_proto.state is State.OPEN:
            self.ws_proto.send_ping(os.urandom(4))
            self.write_chunks(self.ws_proto.data_to_send())

    def pause_reading(self, reason: str) -> None:
        """Stop reading the socket (back-pressure) until every reason is resumed."""
        if self._lost or reason in self._pauses:
            return
        if not self._pauses:
            self.transport.pause_reading()
        self._pauses.add(reason)

    def resume_reading(self, reason: str) -> None:
        if self._lost or reason not in self._pauses:
            return
        self._pauses.discard(reason)
        if not self._pauses and not self.transport.is_closing():
            self.transport.resume_reading()

    @property
    def close_sent_code(self) -> int | None:
        """The code of the close frame the WebSocket layer sent (1009 for a frame too big)."""
        sent = self.ws_proto.close_sent
        return sent.code if sent is not None else None

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Send our close frame; the connection closes when the peer answers it. (Also
        what Sanic calls on its connections when the server stops.)"""
        await self._writable.wait()
        if self.ws_proto.state is State.OPEN:
            self.ws_proto.send_close(code, reason)
            self.write_chunks(self.ws_proto.data_to_send())

    def fail_connection(self, code: int = 1006, reason: str = "") -> bool:
        """Put a close frame on the transport (whatever is queued) and drop the connection.
        (Also what Sanic calls on its connections' websockets when the server stops.)"""
        if self._lost:
            return True
        self.transport.pause_reading()
        self.ws_proto.data_to_send()  # discard what was not written yet
        if self.ws_proto.state is State.OPEN:
            if code in (1000, 1001):
                self.ws_proto.send_close(code, reason)
            else:
                self.ws_proto.fail(code, reason)
            for chunk in self.ws_proto.data_to_send():
                if chunk and not self._eof_sent:
                    self.transport.write(chunk)
        self._end_stream()
        return True

    def end_connection(self, code: int = 1000, reason: str = "") -> None:
        """What Sanic calls on its connections when it closes them."""
        self.fail_connection(code, reason)

    # -- internals ------------------------------------------------------------------------
    def _message(self, text: bool, data: Any) -> None:
        message: str | bytes = bytes(data)
        if text:
            try:
                message = data.decode("utf-8")
            except UnicodeDecodeError:
                pass
        if self.handler is None:
            self._held.append(message)
        else:
            self._deliver_message(message)

    def _deliver_message(self, message: str | bytes) -> None:
        assert self.handler is not None
        try:
            self.handler.on_message(message)
        except Exception:
            # Nothing a peer sends may escape into the transport's callback: the event loop
            # would abort the connection (1006) and drop what is queued for it.
            log.exception("message handling failed")

    def _peer_closed(self) -> None:
        if not self.peer_closed:
            self.peer_closed = True
            if self.handler is not None:
                self.handler.on_peer_closed()

    def _session_done(self, task: asyncio.Task[Any]) -> None:
        """The session ended: close now if the close handshake is complete, else after the
        close timeout (the peer's answer to our close frame closes it earlier)."""
        if not task.cancelled() and task.exception() is not None:
            log.error("gateway session failed", exc_info=task.exception())
        if self._lost:
            self._release()
        elif self.ws_proto.state is State.CLOSED:
            self._end_stream()
        else:
            self._abort_later()

    def _release(self) -> None:
        """Once both the session and the connection are over, drop the references that
        tie their objects into cycles (connection ↔ session ↔ tasks, the frame parser's
        generator), so that reference counting frees them at once instead of leaving
        several dozen objects per connection to the cyclic collector."""
        if self._abort_timer is not None:
            self._abort_timer.cancel()
            self._abort_timer = None
        handler, self.handler = self.handler, None
        if handler is not None:
            handler.release()
        self.on_activity = None
        self._task = None
        parser = getattr(self.ws_proto, "parser", None)
        if parser is not None and hasattr(parser, "close"):
            parser.close()

    def _end_stream(self) -> None:
        """Half-close: send FIN after what is queued, and let the peer close its side (or
        drop the connection after the close timeout). Closing outright while the peer's
        bytes are still unread (frames it sent after an oversized one) makes the kernel
        send a reset, and the peer loses our close frame (1006 instead of 1009)."""
        if self._eof_sent or self._lost:
            return
        self._eof_sent = True
        if self.transport.can_write_eof():
            self.transport.write_eof()
            self._abort_later()
        else:
            self.transport.close()

    def _abort_later(self) -> None:
        if self._abort_timer is None and not self._lost:
            self._abort_timer = self.loop.call_later(self.close_timeout, self._abort)

    def _abort(self) -> None:
        self._abort_timer = None
        if not self._lost:
            self.transport.abort()


async def adopt(ws: WebsocketImplProtocol) -> tuple[GatewayConnection, list[str | bytes]]:
    """Take a connection that came through Sanic's request path over from Sanic's
    websocket: its transport (``io_proto.transport``) and protocol object (``ws_proto``)
    become a ``GatewayConnection``'s. Returns it with the messages Sanic had already
    parsed, in order (those that came in the same read as the upgrade, such as `hello`)."""
    io_proto = ws.io_proto
    transport = io_proto.transport if io_proto is not None else None
    if transport is None or transport.is_closing():
        raise ConnectionError("the connection is gone")
    conn = GatewayConnection(transport, ws.ws_proto, float(ws.close_timeout), owner=io_proto)
    conn.take_over()
    # Sanic hands each message over through a task: let those run, then collect what they
    # assembled. Bytes arriving from now on are the connection's, after these.
    pending: list[str | bytes] = []
    for _ in range(MAX_ADOPTED_MESSAGES):
        await asyncio.sleep(0)
        try:
            message = await ws.recv(timeout=0)
        except Exception:
            break
        if message is None:
            break
        pending.append(message)
    return conn, pending
