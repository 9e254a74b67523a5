"""A session's catch-up: the pump that sends what live delivery held back.

What to send is decided by the protocol core's pure ``DeliveryState`` (per-stream
positions, window, acks, gaps, `synced`); live events go out from ``Session.offer``
(session.py) at once when the state says so. Everything held back (catch-up after the
handshake, a full window, paused output, a stream being read) is sent here by ``_pump``,
from the hub's ring or from storage (protocol.md §3 Delivery, Flow control, Catch-up).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from relaybox.protocol.delivery import DeliveryState, Framed, StreamState
from relaybox.store import queries

if TYPE_CHECKING:
    from relaybox.server.context import ServerContext

__all__ = ["CatchUp", "StreamState"]


class CatchUp:
    """The catch-up half of a gateway session (mixed into ``Session``)."""

    ctx: ServerContext
    user_id: str
    state: DeliveryState
    close_code: int | None
    wake: asyncio.Event
    _sender_idle: asyncio.Event

    if TYPE_CHECKING:  # ``Session``'s
        def send(self, frame: str) -> None: ...

    async def _pump(self) -> None:
        """Send what live delivery held back: catch-up, window refills, gaps, `synced`."""
        state = self.state
        while True:
            await self.wake.wait()
            self.wake.clear()
            progressed = True
            while progressed and self.close_code is None:
                progressed = False
                for name in list(state.streams):
                    if state.behind(name) and await self._refill(name):
                        progressed = True
                synced = state.synced()
                if synced is not None:
                    self.send(synced)

    async def _refill(self, name: str) -> bool:
        state = self.state
        gap = state.floor_gap(name)
        if gap is not None:
            self.send(gap)
        after, limit = state.read_from(name)
        events = self.ctx.hub.ring_after(self.user_id, name, after, limit)
        if state.needs_storage(name, events):
            st = state.streams[name]
            st.reading = True  # live events of this stream wait for the read
            try:
                read = await self.ctx.eventlog.read(queries.read_events, self.user_id, name,
                                                    after, limit)
            finally:
                st.reading = False
            if not read:
                floor = await self.ctx.eventlog.read(_floor_of, self.user_id, name)
                return state.read_empty(name, floor)
            events = [Framed(ev) for ev in read]
        assert events is not None
        moved = state.take(name, events, self.send)
        await self._sender_idle.wait()  # keep the outbox bounded by the window
        return moved


def _floor_of(user_id: str, stream: str) -> int:
    heads = queries.stream_heads(user_id)
    return heads.get(stream, (0, 0))[1]
