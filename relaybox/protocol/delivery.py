"""A session's delivery state: per-stream positions, the window, acks, gaps, `synced`.

Pure and sans-I/O like the rest of the core: the server feeds it the positions read at
the handshake, acks from the device, committed events and the results of its reads, and
gets back frames to send and decisions (send now, or leave it to the pump). Where events
come from (the hub's ring, storage) and when frames are written is the server's business
(``relaybox/server/gateway/catchup.py``). protocol.md §3 Delivery, Flow control and Catch-up.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sized
from dataclasses import dataclass, field
from typing import Protocol

from relaybox.protocol.messages import event_frame, gap_frame, synced_frame

__all__ = ["DELIVER", "HOLD", "READ_CHUNK", "SKIP", "Committed", "DeliveryState", "Event",
           "Framed", "StreamState"]

READ_CHUNK = 512  # events per storage read when a session resumes from storage

# What ``DeliveryState.offer`` decides for a live event.
SKIP = 0  # nothing to do: not this session's business, or already covered
DELIVER = 1  # send the event's frame now (it is counted in flight)
HOLD = 2  # not now (window full, output paused, stream behind): wake the pump


class Committed(Protocol):
    """A committed event as the server holds it (``relaybox.store.events.StoredEvent``)."""

    @property
    def stream(self) -> str: ...
    @property
    def seq(self) -> int: ...
    @property
    def id(self) -> str: ...
    @property
    def device_id(self) -> str | None: ...
    @property
    def key(self) -> str | None: ...
    @property
    def body(self) -> str: ...
    @property
    def ts(self) -> int: ...  # the commit's time, Unix ms
    @property
    def ts_text(self) -> str: ...


class Framed:
    """A committed event and its `event` frame, built on first use and then the same
    string for every recipient: the body is serialised once (protocol.md §3 Delivery).
    The server wraps each event once, as it commits or arrives from another process."""

    __slots__ = ("_frame", "device_id", "event", "seq", "stream")

    def __init__(self, event: Committed) -> None:
        self.event = event
        self.stream = event.stream
        self.seq = event.seq
        self.device_id = event.device_id
        self._frame: str | None = None

    @property
    def frame(self) -> str:
        frame = self._frame
        if frame is None:
            ev = self.event
            frame = self._frame = event_frame(ev.stream, ev.seq, ev.id, ev.device_id,
                                              ev.key, ev.ts_text, ev.body)
        return frame


class Event(Protocol):
    """What delivery needs of a committed event (``Framed``)."""

    @property
    def seq(self) -> int: ...

    @property
    def device_id(self) -> str | None: ...

    @property
    def frame(self) -> str: ...


@dataclass(slots=True)
class StreamState:
    """Delivery state of one stream for one session (protocol.md §3 Delivery)."""

    done: int  # every seq ≤ done was sent or skipped (own event) or acked before
    acked: int
    known_head: int
    floor: int = 0  # the last seq retention removed (protocol.md §8 Storage)
    inflight: deque[int] = field(default_factory=deque)  # sent seqs not yet acked
    reading: bool = False  # the pump is reading this stream from storage


class DeliveryState:
    """The delivery half of one session, as data: no I/O, no clock, no asyncio."""

    __slots__ = ("device_id", "inflight", "paused", "ready", "streams", "synced_target",
                 "window")

    def __init__(self, device_id: str, window: int) -> None:
        self.device_id = device_id
        self.window = window  # events in flight over all streams (protocol.md §3 Flow control)
        self.streams: dict[str, StreamState] = {}
        self.inflight = 0
        self.ready = False  # positions read and `welcome` sent
        self.synced_target: dict[str, int] | None = None
        # The connection's output is past its bound (protocol.md §7 max_outbox_bytes): live
        # events are held back as for a full window until the peer has read.
        self.paused = False

    # -- positions ----------------------------------------------------------------------
    def start(self, heads: Mapping[str, tuple[int, int]], cursors: Mapping[str, int]
              ) -> dict[str, int]:
        """The positions read at the handshake: (head, floor) per stream and the device's
        cursors. Returns the heads for `welcome` and `synced` (protocol.md §2 step 4)."""
        for stream, (head, floor) in heads.items():
            acked = min(cursors.get(stream, 0), head)
            st = self.streams.get(stream)
            if st is None:
                self.streams[stream] = StreamState(done=acked, acked=acked, known_head=head,
                                                   floor=floor)
            else:  # a live event arrived while positions were read
                st.done = st.acked = acked
                st.known_head = max(st.known_head, head)
                st.floor = floor
        self.synced_target = {k: v[0] for k, v in heads.items()}
        return self.synced_target

    def learn_heads(self, heads: Mapping[str, tuple[int, int]]) -> bool:
        """Heads read again after live events may have been missed (a Redis outage):
        True when the session is behind on some stream and the pump should run."""
        behind = False
        for stream, (head, floor) in heads.items():
            st = self.streams.get(stream)
            if st is None:  # a stream born meanwhile
                self.streams[stream] = StreamState(done=0, acked=0, known_head=head,
                                                   floor=floor)
                behind = True
            elif head > st.known_head:
                st.known_head = head
                behind = True
        return behind

    # -- from the device ----------------------------------------------------------------
    def ack(self, stream: str, seq: int) -> int:
        """A cumulative ack (protocol.md §3 Delivery). Returns the cursor to store, or 0
        when the ack changes nothing (lower than one before, or an unknown stream)."""
        st = self.streams.get(stream)
        if st is None:
            return 0
        # An ack above what was sent on this stream is clamped to it (protocol.md §3).
        if seq > st.done:
            seq = st.done
        if seq <= st.acked:
            return 0
        st.acked = seq
        q = st.inflight
        freed = 0
        while q and q[0] <= seq:
            q.popleft()
            freed += 1
        self.inflight -= freed
        return seq

    def window_full(self) -> bool:
        return self.inflight >= self.window

    # -- live events --------------------------------------------------------------------
    def offer(self, stream: str, seq: int, device_id: str | None) -> int:
        """A newly committed event of the session's user: ``DELIVER``, ``HOLD`` or
        ``SKIP``."""
        st = self.streams.get(stream)
        if st is None:
            # First event of a stream this session has not seen: start from nothing.
            st = self.streams[stream] = StreamState(done=0, acked=0, known_head=0)
            if not self.ready:
                st.known_head = seq
                return SKIP
        if seq > st.known_head:
            st.known_head = seq
        if not self.ready or st.reading or seq != st.done + 1:
            return HOLD if seq > st.done else SKIP
        if device_id == self.device_id:
            st.done = seq  # never delivered to its publisher (protocol.md §8 Delivery)
            return SKIP
        if self.inflight >= self.window or self.paused:
            # Resumed from the ring or storage as acks arrive and the peer reads.
            return HOLD
        st.done = seq
        st.inflight.append(seq)
        self.inflight += 1
        return DELIVER

    # -- catch-up and refills (protocol.md §3 Catch-up) ---------------------------------
    def behind(self, stream: str) -> bool:
        """Whether the pump has something to send on ``stream`` now."""
        st = self.streams[stream]
        return not (st.done >= st.known_head or self.inflight >= self.window or self.paused)

    def read_from(self, stream: str) -> tuple[int, int]:
        """(after, limit) for the next read of ``stream``: events after ``after``, at most
        ``limit`` (bounded by the room in the window, so memory follows the window)."""
        room = self.window - self.inflight
        return self.streams[stream].done, min(READ_CHUNK, max(room, 1) * 2)

    def floor_gap(self, stream: str) -> str | None:
        """A `gap` frame when retention removed events this device never acked."""
        st = self.streams[stream]
        if st.floor <= st.done:
            return None
        frame = gap_frame(stream, st.done, st.floor + 1)
        st.done = st.floor
        return frame

    def needs_storage(self, stream: str, ring: Sized | None) -> bool:
        """Whether the ring's answer (None: it cannot tell) leaves a read from storage."""
        st = self.streams[stream]
        return ring is None or (not ring and st.known_head > st.done)

    def read_empty(self, stream: str, floor: int) -> bool:
        """Storage had nothing after ``done``; ``floor`` is the stream's floor now.
        True when that is a gap to report (the pump goes round again)."""
        st = self.streams[stream]
        if floor > st.done:
            st.floor = floor
            return True
        st.known_head = st.done
        return False

    def take(self, stream: str, events: Iterable[Event], emit: Callable[[str], None]) -> bool:
        """Events read after ``done`` (from the ring or storage), oldest first: each frame
        to send now goes to ``emit`` in order (gaps included); True if the stream moved on.
        ``emit`` may pause the output (``paused``), which stops the rest at once."""
        st = self.streams[stream]
        moved = False
        for ev in events:
            seq = ev.seq
            if seq <= st.done:
                continue
            if seq > st.done + 1:
                # A hole: retention removed events between (protocol.md §3 Catch-up).
                st.floor = max(st.floor, seq - 1)
                emit(gap_frame(stream, st.done, seq))
                st.done = seq - 1
            if ev.device_id == self.device_id:
                st.done = seq
                moved = True
                continue
            if self.inflight >= self.window or self.paused:
                break
            st.done = seq
            st.inflight.append(seq)
            self.inflight += 1
            emit(ev.frame)
            moved = True
        if st.done > st.known_head:
            st.known_head = st.done
        return moved

    def synced(self) -> str | None:
        """The `synced` frame, once everything that existed at `welcome` was sent."""
        target = self.synced_target
        if target is None:
            return None
        for name, head in target.items():
            st = self.streams.get(name)
            if st is None or st.done < head:
                return None
        self.synced_target = None
        return synced_frame(target)
