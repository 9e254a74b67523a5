"""Delivery to one session: the pump over the protocol core's ``DeliveryState``.

The state (per-stream positions, window, acks, gaps, `synced`) is the pure
``relaybox.protocol.delivery.DeliveryState``; this part feeds it and does its I/O
(protocol.md §3 Delivery and Flow control). Live events arrive through ``offer`` from the
hub; whatever live delivery had to hold back (a full window, a stream being read,
catch-up after connect) is sent by ``_pump`` from the hub's ring or from storage.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from relaybox.protocol.delivery import DELIVER, HOLD, DeliveryState, StreamState
from relaybox.protocol.messages import Ack
from relaybox.server.eventframe import Framed, event_frame_of
from relaybox.store import queries
from relaybox.store.events import StoredEvent

if TYPE_CHECKING:
    from relaybox.server.context import ServerContext

__all__ = ["Delivery", "StreamState"]


class Delivery:
    """The delivery half of a gateway session (mixed into ``Session``)."""

    ctx: ServerContext
    user_id: str
    state: DeliveryState
    close_code: int | None
    wake: asyncio.Event
    _sender_idle: asyncio.Event

    def send(self, frame: str) -> None:
        raise NotImplementedError

    # Read by the hub, health and metrics: the state's, under the session's names.
    @property
    def streams(self) -> dict[str, StreamState]:
        return self.state.streams

    @property
    def ready(self) -> bool:
        return self.state.ready

    def _ack(self, msg: Ack) -> None:
        state = self.state
        was_full = state.inflight >= state.window
        seq = state.ack(msg.stream, msg.seq)
        if seq:
            if was_full and state.inflight < state.window:
                self.wake.set()
            self.ctx.eventlog.save_cursor(state.device_id, msg.stream, seq)

    # -- delivery ---------------------------------------------------------------------------
    def offer(self, ev: StoredEvent) -> None:
        """A newly committed event of this user (called by the hub, on the loop)."""
        decision = self.state.offer(ev.stream, ev.seq, ev.device_id)
        if decision == DELIVER:
            self.send(event_frame_of(ev))
            if self.ctx.metrics is not None:
                self.ctx.metrics.delivered(ev)
        elif decision == HOLD:
            self.wake.set()

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
                events = await self.ctx.eventlog.read(queries.read_events, self.user_id, name,
                                                      after, limit)
            finally:
                st.reading = False
            if not events:
                floor = await self.ctx.eventlog.read(_floor_of, self.user_id, name)
                return state.read_empty(name, floor)
        assert events is not None
        moved = state.take(name, map(Framed, events), self.send)
        await self._sender_idle.wait()  # keep the outbox bounded by the window
        return moved


def _floor_of(user_id: str, stream: str) -> int:
    heads = queries.stream_heads(user_id)
    return heads.get(stream, (0, 0))[1]
