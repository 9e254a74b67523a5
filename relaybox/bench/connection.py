"""The bench's connections: a lean WebSocket client, and the handshake over the protocol core.

The benchmark's clients share the machine's cores with the server, so the cost of the
client counts against the server's number. The `websockets` library's asyncio client
runs a task, a keepalive and a close timeout per connection; this client drives the
same library's sans-I/O protocol object from a plain ``asyncio.Protocol`` instead:
every byte on the wire is still produced and checked by `websockets`.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
import websockets
from nacl.signing import SigningKey
from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.http11 import Response
from websockets.uri import parse_uri

from relaybox.client.handshake import run_handshake
from relaybox.protocol.client import ClientHandshake, HandshakeRefused

#: Receivers ack every this many events (and the last one): the window never fills.
ACK_EVERY = 64


@dataclass
class Device:
    device_id: str
    key: bytes  # Ed25519 seed


REFUSED = ("the server dropped the connection during the WebSocket opening handshake "
           "(a refusal: 503 too_many_connections past limits.connections_per_address or "
           "limits.max_connections)")


class LeanConnection(asyncio.Protocol):
    """One gateway connection on `websockets`' sans-I/O protocol object."""

    def __init__(self, url: str) -> None:
        self.proto = ClientProtocol(parse_uri(url), max_size=None)
        self.transport: asyncio.Transport | None = None
        self.messages: deque[str] = deque()
        self.opened: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiter: asyncio.Future[None] | None = None
        # When set, text messages go to this callback as they arrive instead of ``recv``.
        self.on_message: Callable[[str], None] | None = None

    @classmethod
    async def connect(cls, url: str) -> LeanConnection:
        uri = parse_uri(url)
        loop = asyncio.get_running_loop()
        _, conn = await loop.create_connection(lambda: cls(url), uri.host, uri.port)
        await conn.opened
        return conn

    # -- asyncio.Protocol ------------------------------------------------------------
    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.proto.send_request(self.proto.connect())
        self._flush()

    def data_received(self, data: bytes) -> None:
        self.proto.receive_data(data)
        for event in self.proto.events_received():
            if isinstance(event, Response):
                if self.proto.handshake_exc is not None:
                    self._fail(self.proto.handshake_exc)
                elif not self.opened.done():
                    self.opened.set_result(None)
            elif not isinstance(event, Frame):
                continue
            elif event.opcode is Opcode.TEXT:
                if self.on_message is not None:
                    self.on_message(bytes(event.data).decode())
                else:
                    self.messages.append(bytes(event.data).decode())
            elif event.opcode is Opcode.CLOSE and self.transport is not None:
                self._flush()
                self.transport.close()
        self._flush()
        self._wake()

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(ConnectionError("connection closed"))
        if not self.closed.done():
            self.closed.set_result(None)

    # -- API ----------------------------------------------------------------------------
    def send(self, text: str) -> None:
        self.proto.send_text(text.encode())
        self._flush()

    async def recv(self) -> str:
        while not self.messages:
            if self.closed.done():
                raise ConnectionError("connection closed")
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
        return self.messages.popleft()

    async def close(self) -> None:
        """Close handshake (1000), then wait for the server to drop the connection."""
        if not self.closed.done():
            self.proto.send_close(1000)
            self._flush()
            await self.closed

    # -- internals ----------------------------------------------------------------------
    def _flush(self) -> None:
        if self.transport is None:
            return
        for chunk in self.proto.data_to_send():
            if chunk:
                self.transport.write(chunk)
            elif self.transport.can_write_eof():
                self.transport.write_eof()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _fail(self, exc: BaseException) -> None:
        if not self.opened.done():
            self.opened.set_exception(exc)
        self._wake()


async def handshake(dev: Device, send: Callable[[str], object], recv: Callable[[], Any],
                    key: SigningKey | None = None) -> dict[str, Any]:
    """protocol.md §2 over any connection; returns `welcome`. ``key``: the device's
    signing key, when the caller keeps it built."""
    hs = ClientHandshake(dev.device_id, key or SigningKey(dev.key), strict=True)
    try:
        return await run_handshake(hs, send, recv)
    except HandshakeRefused as exc:
        raise RuntimeError(f"handshake failed: {exc.refused.frame}") from None


async def connect(url: str, dev: Device) -> tuple[Any, dict[str, Any]]:
    """A session of ``dev`` on the `websockets` asyncio client, and its `welcome`."""
    try:
        ws = await websockets.connect(url, compression=None, max_size=None,
                                      ping_interval=None, max_queue=None)
    except (AssertionError, OSError, EOFError) as exc:
        # A server that answers 503 and drops the connection before the request is
        # written ends the opening handshake this way, not with InvalidStatus.
        raise ConnectionError(REFUSED) from exc
    return ws, await handshake(dev, ws.send, ws.recv)


async def lean_connect(url: str, dev: Device, key: SigningKey | None = None
                       ) -> tuple[LeanConnection, dict[str, Any]]:
    """A session of ``dev`` on a ``LeanConnection``, and its `welcome`."""
    try:
        conn = await LeanConnection.connect(url)
    except (ConnectionError, OSError) as exc:
        raise ConnectionError(REFUSED) from exc
    return conn, await handshake(dev, conn.send, conn.recv, key)


async def catch_up(conn: LeanConnection) -> None:
    """Read (and ack) the catch-up until `synced`: only later events are measured."""
    while True:
        msg = orjson.loads(await conn.recv())
        if msg["type"] == "event":
            conn.send(f'{{"type":"ack","stream":"{msg["stream"]}","seq":{msg["seq"]}}}')
        elif msg["type"] == "synced":
            return
