"""Delivery to one session: per-stream positions, the window, live relay, catch-up, gaps.

``Session`` (gateway.py) owns the connection and the handshake; this part decides which
event goes out next (protocol.md §3 Delivery and Flow control). Live events arrive through
``offer`` from the hub; whatever live delivery had to skip (a full window, a stream being
read, catch-up after connect) is sent by ``_pump`` from the hub's ring or from storage.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from relaybox.protocol.frames import gap_frame, synced_frame
from relaybox.protocol.messages import Ack
from relaybox.store import queries
from relaybox.store.eventlog import StoredEvent

if TYPE_CHECKING:
    from relaybox.server.context import ServerContext

READ_CHUNK = 512  # events per storage read when a session resumes from storage


@dataclass(slots=True)
class StreamState:
    """Delivery state of one stream for one session (protocol.md §3 Delivery)."""

    done: int  # every seq ≤ done was sent or skipped (own event) or acked before
    acked: int
    known_head: int
    floor: int = 0
    inflight: deque[int] = field(default_factory=deque)  # sent seqs not yet acked
    reading: bool = False


class Delivery:
    """The delivery half of a gateway session (mixed into ``Session``)."""

    ctx: ServerContext
    device_id: str
    user_id: str
    window: int
    streams: dict[str, StreamState]
    inflight: int
    output_paused: bool
    ready: bool
    close_code: int | None
    wake: asyncio.Event
    synced_target: dict[str, int] | None
    _sender_idle: asyncio.Event

    def send(self, frame: str) -> None:
        raise NotImplementedError

    def _ack(self, msg: Ack) -> None:
        st = self.streams.get(msg.stream)
        if st is None:
            return
        # An ack above what was sent on this stream is clamped to it (protocol.md §3).
        seq = min(msg.seq, st.done)
        if seq <= st.acked:
            return
        st.acked = seq
        q = st.inflight
        freed = 0
        while q and q[0] <= seq:
            q.popleft()
            freed += 1
        if freed:
            was_full = self.inflight >= self.window
            self.inflight -= freed
            if was_full:
                self.wake.set()
        self.ctx.eventlog.save_cursor(self.device_id, msg.stream, seq)

    # -- delivery ---------------------------------------------------------------------------
    def offer(self, ev: StoredEvent) -> None:
        """A newly committed event of this user (called by the hub, on the loop)."""
        st = self.streams.get(ev.stream)
        if st is None:
            # First event of a stream this session has not seen: start from nothing.
            st = self.streams[ev.stream] = StreamState(done=0, acked=0, known_head=0)
            if not self.ready:
                st.known_head = ev.seq
                return
        if ev.seq > st.known_head:
            st.known_head = ev.seq
        if not self.ready or st.reading or ev.seq != st.done + 1:
            if ev.seq > st.done:
                self.wake.set()
            return
        if ev.device_id == self.device_id:
            st.done = ev.seq  # never delivered to its publisher
            return
        if self.inflight >= self.window or self.output_paused:
            # Resumed from the ring or storage as acks arrive and the peer reads.
            self.wake.set()
            return
        st.done = ev.seq
        st.inflight.append(ev.seq)
        self.inflight += 1
        self.send(ev.frame)
        if self.ctx.metrics is not None:
            self.ctx.metrics.delivered(ev)

    async def _pump(self) -> None:
        """Send what live delivery skipped: catch-up, window refills, gaps, then `synced`."""
        while True:
            await self.wake.wait()
            self.wake.clear()
            progressed = True
            while progressed and self.close_code is None:
                progressed = False
                for name, st in list(self.streams.items()):
                    if (st.done >= st.known_head or self.inflight >= self.window
                            or self.output_paused):
                        continue
                    if await self._refill(name, st):
                        progressed = True
                self._maybe_synced()

    async def _refill(self, name: str, st: StreamState) -> bool:
        if st.floor > st.done:
            # Retention removed events this device never acked (protocol.md §3 Catch-up).
            self.send(gap_frame(name, st.done, st.floor + 1))
            st.done = st.floor
        room = self.window - self.inflight
        limit = min(READ_CHUNK, max(room, 1) * 2)
        events = self.ctx.hub.ring_after(self.user_id, name, st.done, limit)
        if events is None or (not events and st.known_head > st.done):
            st.reading = True
            try:
                events = await self.ctx.eventlog.read(queries.read_events, self.user_id, name,
                                                      st.done, limit)
            finally:
                st.reading = False
            if not events:
                floor = await self.ctx.eventlog.read(_floor_of, self.user_id, name)
                if floor > st.done:
                    st.floor = floor
                    return True
                st.known_head = st.done
                return False
        sent_any = False
        for ev in events:
            if ev.seq <= st.done:
                continue
            if ev.seq != st.done + 1:
                if ev.seq > st.done + 1:
                    st.floor = max(st.floor, ev.seq - 1)
                    self.send(gap_frame(name, st.done, ev.seq))
                    st.done = ev.seq - 1
            if ev.device_id == self.device_id:
                st.done = ev.seq
                sent_any = True
                continue
            if self.inflight >= self.window or self.output_paused:
                break
            st.done = ev.seq
            st.inflight.append(ev.seq)
            self.inflight += 1
            self.send(ev.frame)
            sent_any = True
        if st.done > st.known_head:
            st.known_head = st.done
        await self._sender_idle.wait()  # keep the outbox bounded by the window
        return sent_any

    def _maybe_synced(self) -> None:
        target = self.synced_target
        if target is None:
            return
        for name, head in target.items():
            st = self.streams.get(name)
            if st is None or st.done < head:
                return
        self.synced_target = None
        self.send(synced_frame(target))


def _floor_of(user_id: str, stream: str) -> int:
    heads = queries.stream_heads(user_id)
    return heads.get(stream, (0, 0))[1]
