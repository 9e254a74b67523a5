"""One device connecting to two nodes at the same moment (protocol.md §2: one live session
per device; the older one is closed with 4409)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from typing import Any

import websockets

from relaybox.client.handshake import run_handshake
from relaybox.protocol.client import ClientHandshake, HandshakeRefused
from relaybox.protocol.encoding import dumps, loads
from tests.support import DeviceKey
from tests.torture.faults import Node
from tests.torture.ledger import Ledger

BOUND_S = 10.0  # for the replacement to happen, and for any session to answer a ping
GRACE_S = 1.0  # a survivor that stays open this long after the other closed is the one
_rounds = itertools.count(1)


class _Conn:
    """A handshaken session whose frames one task reads: pongs resolve, the close is kept."""

    def __init__(self, ws: Any, node: str, welcome: dict[str, Any]) -> None:
        self.ws = ws
        self.node = node
        self.welcome = welcome
        self.pongs: dict[str, asyncio.Future[None]] = {}
        self.closed: asyncio.Future[int | None] = asyncio.get_running_loop().create_future()
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        with contextlib.suppress(Exception):
            async for raw in self.ws:
                msg = loads(raw)
                if isinstance(msg, dict) and msg.get("type") == "pong":
                    fut = self.pongs.pop(str(msg.get("ref")), None)
                    if fut is not None and not fut.done():
                        fut.set_result(None)
        self.closed.set_result(self.ws.close_code)

    async def answers(self, timeout: float) -> bool:
        fut = asyncio.get_running_loop().create_future()
        self.pongs["r"] = fut
        with contextlib.suppress(Exception):
            await self.ws.send(dumps({"type": "ping", "ref": "r"}))
            await asyncio.wait([fut, self.closed], timeout=timeout,
                               return_when=asyncio.FIRST_COMPLETED)
        return fut.done() and not fut.cancelled()

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.ws.close(1000)
        await asyncio.wait([self._task], timeout=BOUND_S)


async def _connect(node: Node, dev: DeviceKey) -> _Conn | str:
    """A welcomed session on ``node``, or what went wrong instead."""
    try:
        ws = await websockets.connect(node.ws_url, max_size=None, compression=None,
                                      proxy=None, open_timeout=BOUND_S, max_queue=None)
    except Exception as exc:
        return f"connect failed: {exc!r}"
    hs = ClientHandshake(dev.device_id, dev.key, strict=True)
    try:
        async with asyncio.timeout(BOUND_S):
            welcome = await run_handshake(hs, ws.send, ws.recv)
    except websockets.ConnectionClosed:
        return f"closed during the handshake with {ws.close_code}"
    except HandshakeRefused as exc:
        await ws.close()
        return f"handshake answered {exc.refused.frame}"
    except Exception as exc:
        await ws.close()
        return f"handshake failed: {exc!r}"
    return _Conn(ws, node.name, welcome)


async def race(a: Node, b: Node, dev: DeviceKey, ledger: Ledger) -> None:
    """Both handshakes at once; then exactly one session must stay and answer pings, the
    other must be closed with 4409, and neither may hang."""
    n = next(_rounds)
    where = f"race {n} ({a.name} and {b.name})"
    got = await asyncio.gather(_connect(a, dev), _connect(b, dev))
    conns = [c for c in got if isinstance(c, _Conn)]
    for c in got:
        if isinstance(c, str) and not c.endswith("with 4409"):
            ledger.violation(f"{where}: {c}")
    try:
        if len(conns) > 1:
            # Both were welcomed: wait for the replacement to close one of them.
            await asyncio.wait([c.closed for c in conns], timeout=BOUND_S,
                               return_when=asyncio.FIRST_COMPLETED)
        if conns:
            # Whatever is still open must stay open a moment, and then answer a ping.
            await asyncio.wait([c.closed for c in conns], timeout=GRACE_S)
        live = []
        for c in conns:
            if c.closed.done():
                code = c.closed.result()
                if code != 4409:
                    ledger.violation(f"{where}: the session on {c.node} was closed with "
                                     f"{code}, not 4409")
            elif await c.answers(BOUND_S):
                live.append(c)
            else:
                ledger.violation(f"{where}: hung session on {c.node}: neither closed nor "
                                 f"answering a ping within {BOUND_S:.0f} s")
        replaced = sum(1 for c in got if isinstance(c, str) and c.endswith("with 4409"))
        replaced += sum(1 for c in conns if c.closed.done() and c.closed.result() == 4409)
        outcome = f"{len(live)} live, {replaced} replaced"
        ledger.races[outcome] += 1
        if len(live) != 1:
            ledger.violation(f"{where}: {len(live)} live sessions of one device "
                             f"(expected exactly 1, the other closed with 4409)")
    finally:
        for c in conns:
            await c.close()
