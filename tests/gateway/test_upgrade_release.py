"""A finished gateway connection is freed by reference counting, not the cyclic GC.

Every connection used to leave a few dozen objects in reference cycles (connection ↔
session ↔ tasks, the frame parser's generator), collected by the cyclic GC in pauses of
several milliseconds. The connection's release breaks them. The transport and the HTTP
protocol that accepted the connection are stand-ins here (only what the connection
uses); the ``GatewayConnection``, the session and the `websockets` protocol are real.
"""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections.abc import Iterator
from typing import Any

import pytest
from websockets.protocol import State
from websockets.server import ServerProtocol

from relaybox.server.gateway.connection import GatewayConnection

# "hello" in one masked text frame, as a client sends it.
HELLO = b"\x81\x85abcd" + bytes(b ^ m for b, m in zip(b"hello", b"abcdabcd", strict=False))


class _Transport:
    def __init__(self) -> None:
        self.closed = False
        self.protocol: Any = None

    def set_protocol(self, protocol: Any) -> None:
        self.protocol = protocol

    def write(self, data: bytes) -> None:
        pass

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0


class _Owner:
    """The HTTP protocol that accepted the connection: told when it is lost."""

    lost = False

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True


class _Session:
    """A session as the connection sees it: a handler with ``serve``."""

    released = False

    def __init__(self) -> None:
        self.messages: list[str | bytes] = []

    async def serve(self) -> None:
        await asyncio.sleep(0)

    def on_message(self, data: str | bytes) -> None:
        self.messages.append(data)

    def on_peer_closed(self) -> None:
        pass

    def on_written(self) -> None:
        pass

    def on_drain(self) -> None:
        pass

    def on_close_reply(self, out: list[bytes]) -> None:
        pass

    def release(self) -> None:
        self.released = True


@pytest.fixture
def no_cyclic_gc() -> Iterator[None]:
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


@pytest.mark.parametrize("order", ["lost_first", "session_first"])
async def test_a_finished_connection_needs_no_cyclic_gc(no_cyclic_gc: None, order: str
                                                        ) -> None:
    transport, owner = _Transport(), _Owner()
    conn = GatewayConnection(transport, ServerProtocol(state=State.OPEN),  # type: ignore[arg-type]
                             10.0, owner=owner)  # type: ignore[arg-type]
    conn.take_over()
    assert transport.protocol is conn
    session = _Session()
    conn.data_received(HELLO)  # before the session is attached: held for it
    task = conn.start(session)
    conn.attach(session)
    assert session.messages == ["hello"]  # the parser has run

    if order == "lost_first":
        conn.connection_lost(None)
        await asyncio.gather(task, return_exceptions=True)
    else:  # the session ends first: our close frame waits for the peer's answer
        await task
        conn.connection_lost(None)
    assert session.released and owner.lost

    gone: list[weakref.ref[Any]] = [weakref.ref(conn), weakref.ref(conn.ws_proto)]
    del conn, task, transport.protocol
    assert [ref() for ref in gone] == [None, None]


async def test_a_released_session_needs_no_cyclic_gc(no_cyclic_gc: None) -> None:
    from types import SimpleNamespace

    from relaybox.config import Settings
    from relaybox.server.gateway.session import Session

    settings = Settings(gateway_window=8, gateway_publish_rate_per_s=0,
                        gateway_publish_burst=1)
    transport = _Transport()
    conn = GatewayConnection(transport, ServerProtocol(state=State.OPEN),  # type: ignore[arg-type]
                             10.0)
    session = Session(SimpleNamespace(settings=settings), conn, "127.0.0.1")  # type: ignore[arg-type]
    loop = asyncio.get_running_loop()
    # As in a real session: tasks whose coroutines refer to the session, cancelled at the
    # end, the main task, and the connection calling back into the session.
    session._tasks = [loop.create_task(session.wake.wait()) for _ in range(2)]
    session._main = session._tasks[0]
    conn.attach(session)
    conn.on_activity = session._touch
    for t in session._tasks:
        t.cancel()
    await asyncio.gather(*session._tasks, return_exceptions=True)

    conn.connection_lost(None)  # the connection releases its session
    gone = weakref.ref(session)
    del session
    assert gone() is None
