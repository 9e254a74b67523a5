"""WebSocket I/O on Sanic's connection without a task per message: frames in, batches out."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from websockets.frames import Opcode
from websockets.protocol import State

log = logging.getLogger("relaybox.gateway")
_background: set[asyncio.Future[Any]] = set()


class FrameReader:
    """Feeds every complete message straight to ``on_message`` from ``data_received``.

    Sanic's own receive path hands each message over through a queue, a task and
    ``asyncio.wait`` (a large share of the gateway's CPU, docs/performance.md). Once
    installed, this reader parses the socket's bytes with the connection's websockets
    protocol object and calls back synchronously. Text arrives as ``str``; binary data
    or text that is not UTF-8 arrives as ``bytes`` (the protocol core refuses both).
    """

    def __init__(self, ws: Any, on_message: Callable[[str | bytes], None],
                 on_close: Callable[[], None], on_activity: Callable[[], None],
                 on_written: Callable[[], None] | None = None) -> None:
        self.ws = ws
        self.on_message = on_message
        self.on_close = on_close
        self.on_activity = on_activity
        # Called after the protocol's own replies (pongs, the close reply) were written, so
        # that the owner can check the connection's output bound (protocol.md §7).
        self.on_written = on_written
        # When set, the answer to the peer's close frame is handed to it instead of being
        # written at once: the session sends it once the acks it received are durable.
        self.on_close_reply: Callable[[list[bytes]], None] | None = None
        self._parts: list[bytes] = []
        self._text = True
        self._reasons: set[str] = set()

    @property
    def paused(self) -> bool:
        return bool(self._reasons)

    def install(self) -> None:
        self.ws.data_received = self._data_received

    def pause(self, reason: str = "publishes") -> None:
        """Stop reading the socket (back-pressure) until every reason is resumed."""
        transport = getattr(self.ws.io_proto, "transport", None)
        if transport is None or reason in self._reasons:
            return
        if not self._reasons:
            transport.pause_reading()
        self._reasons.add(reason)

    def resume(self, reason: str = "publishes") -> None:
        transport = getattr(self.ws.io_proto, "transport", None)
        if transport is None or reason not in self._reasons:
            return
        self._reasons.discard(reason)
        if not self._reasons and not transport.is_closing():
            transport.resume_reading()

    def _data_received(self, data: bytes) -> None:
        self.on_activity()
        proto = self.ws.ws_proto
        proto.receive_data(data)
        out = proto.data_to_send()  # pongs to pings, the answer to a close frame, EOF
        events = proto.events_received()
        if out and self.on_close_reply is not None and any(
                f.opcode is Opcode.CLOSE for f in events):
            self.on_close_reply(out)
            out = []
        if out:
            write_now = getattr(self.ws, "write_now", None)
            if write_now is not None:  # our own connection (upgrade.py): no task needed
                write_now(out)
            else:
                fut = asyncio.ensure_future(self.ws.send_data(out))
                _background.add(fut)
                fut.add_done_callback(_done)
            if self.on_written is not None:
                self.on_written()
        for frame in events:
            op = frame.opcode
            if op is Opcode.TEXT or op is Opcode.BINARY:
                if frame.fin:
                    self._deliver(op is Opcode.TEXT, frame.data)
                else:
                    self._text = op is Opcode.TEXT
                    self._parts = [frame.data]
            elif op is Opcode.CONT:
                self._parts.append(frame.data)
                if frame.fin:
                    data_ = b"".join(self._parts)
                    self._parts = []
                    self._deliver(self._text, data_)
            elif op is Opcode.CLOSE:
                self.on_close()
            # PING is answered by the protocol object (in ``out``); PONG only proves life.
        if proto.state is State.CLOSED:
            self.on_close()

    def _deliver(self, text: bool, data: bytes) -> None:
        message: str | bytes = bytes(data)
        if text:
            try:
                message = data.decode("utf-8")
            except UnicodeDecodeError:
                pass
        try:
            self.on_message(message)
        except Exception:
            # Nothing a peer sends may escape into the transport's callback: the event loop
            # would abort the connection (1006) and drop what is queued for it.
            log.exception("message handling failed")


def _done(fut: asyncio.Future[Any]) -> None:
    _background.discard(fut)
    if not fut.cancelled() and fut.exception() is not None:
        log.debug("websocket write failed: %s", fut.exception())


def write_frames_now(ws: Any, frames: list[str]) -> bool:
    """Write text frames at once when nothing stands in the way (no task, one write).

    Returns False, having written nothing, when another writer holds the connection or
    the transport asked to pause writing; the caller then uses ``send_frames``.
    """
    io_proto = getattr(ws, "io_proto", None)
    proto = getattr(ws, "ws_proto", None)
    if io_proto is None or proto is None or ws.conn_mutex.locked():
        return False
    transport = io_proto.transport
    if transport is None or transport.is_closing() or not io_proto._can_write.is_set():
        return False
    if proto.state is not State.OPEN:
        raise ConnectionError("websocket is closed")
    for f in frames:
        proto.send_text(f.encode())
    transport.write(b"".join(proto.data_to_send()))
    return True


async def send_frames(ws: Any, frames: list[str]) -> None:
    """Write several text frames with one socket write (under Sanic's connection lock)."""
    if write_frames_now(ws, frames):
        return
    if len(frames) == 1 or not hasattr(ws, "ws_proto"):
        for f in frames:
            await ws.send(f)
        return
    async with ws.conn_mutex:
        proto = ws.ws_proto
        if proto.state is not State.OPEN:
            raise ConnectionError("websocket is closed")
        for f in frames:
            proto.send_text(f.encode())
        chunks = proto.data_to_send()
        await ws.io_proto.send(b"".join(chunks))
