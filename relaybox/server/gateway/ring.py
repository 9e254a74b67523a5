"""The newest events of one stream, kept per process while its user has a session here, so
that a session behind its window resumes without a database read (protocol.md §8
Delivery)."""

from __future__ import annotations

from collections import deque

from relaybox.protocol.delivery import Framed

RING_SIZE = 1024  # recent events kept per stream so a lagging session resumes without a read


class Ring:
    """The newest events of one stream, contiguous in seq, with their frames once built."""

    __slots__ = ("events",)

    def __init__(self) -> None:
        self.events: deque[Framed] = deque(maxlen=RING_SIZE)

    def add(self, ev: Framed) -> None:
        if self.events and ev.seq != self.events[-1].seq + 1:
            if ev.seq <= self.events[-1].seq:
                return
            self.events.clear()
        self.events.append(ev)

    def after(self, seq: int, limit: int) -> list[Framed] | None:
        """Events with seq > ``seq`` (up to ``limit``), or None when the ring cannot tell."""
        if not self.events:
            return None
        first = self.events[0].seq
        if seq + 1 < first:
            return None
        start = seq + 1 - first
        if start >= len(self.events):
            return []
        out = []
        for i in range(start, min(len(self.events), start + limit)):
            out.append(self.events[i])
        return out
