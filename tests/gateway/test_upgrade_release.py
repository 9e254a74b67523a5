"""A finished gateway connection is freed by reference counting, not the cyclic GC.

Every connection used to leave a few dozen objects in reference cycles (protocol ↔
websocket ↔ frame readers ↔ session ↔ tasks, the frame parser's generator), collected by
the cyclic GC in pauses of several milliseconds. The websocket's release breaks them. The
connection's transport and Sanic protocol are stand-ins here (only the attributes the
websocket uses); the websocket, its frame reader and the `websockets` protocol are real.
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

from relaybox.server.upgrade import LeanWebsocket


class _Transport:
    def __init__(self) -> None:
        self.closed = False

    def write(self, data: bytes) -> None:
        pass

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def pause_reading(self) -> None:
        pass


class _Protocol:
    """The parts of GatewayProtocol that a LeanWebsocket uses."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.websocket_timeout = 10.0
        self.transport = _Transport()
        self._can_write = asyncio.Event()
        self._can_write.set()
        self.websocket: Any = None
        self._task: Any = None


class _Session:
    released = False

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
    loop = asyncio.get_running_loop()
    io = _Protocol(loop)
    ws = LeanWebsocket(io, ServerProtocol(state=State.OPEN))  # type: ignore[arg-type]
    io.websocket = ws
    session = ws.session = _Session()
    task = loop.create_task(asyncio.sleep(0))
    io._task = task
    await task
    ws.data_received(b"\x81\x85abcd" + bytes(b ^ m for b, m in zip(b"hello", b"abcdabcd",
                                                                     strict=False)))
    assert await ws.recv() == "hello"  # the reader and parser have run

    if order == "lost_first":
        ws.connection_lost(None)
        ws.session_done(task)
    else:  # the session ends first: our close frame waits for the peer's answer
        ws.session_done(task)
        ws.connection_lost(None)
    assert session.released
    assert io.websocket is None and io._task is None

    gone: list[weakref.ref[Any]] = [weakref.ref(ws), weakref.ref(ws.ws_proto)]
    del ws
    assert [ref() for ref in gone] == [None, None]


async def test_a_released_session_needs_no_cyclic_gc(no_cyclic_gc: None) -> None:
    from types import SimpleNamespace

    from relaybox.config import Settings
    from relaybox.server.gateway import Session
    from relaybox.server.wsio import FrameReader

    settings = Settings(gateway_window=8, gateway_publish_rate_per_s=0,
                        gateway_publish_burst=1)
    session = Session(SimpleNamespace(settings=settings), None, "127.0.0.1")  # type: ignore[arg-type]
    loop = asyncio.get_running_loop()
    # As in a real session: tasks whose coroutines refer to the session, cancelled at the
    # end, the main task, and a frame reader calling back into the session.
    session._tasks = [loop.create_task(session.wake.wait()) for _ in range(2)]
    session._main = session._tasks[0]
    session.reader = FrameReader(SimpleNamespace(), session._on_message,
                                 session._on_peer_closed, session._touch)
    for t in session._tasks:
        t.cancel()
    await asyncio.gather(*session._tasks, return_exceptions=True)

    session.release()
    gone = weakref.ref(session)
    del session
    assert gone() is None
