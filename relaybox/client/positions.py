"""Per-stream positions of the application: duplicates to drop, acks to send, a state file."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from relaybox.client.errors import IdentityError
from relaybox.client.identity import check_private, write_private_json
from relaybox.protocol.encoding import is_valid_stream

__all__ = ["Positions", "StateFile"]

log = logging.getLogger("relaybox.client")


class Positions:
    """What the application has of each stream, and which cumulative acks are due.

    Delivery is at least once (protocol.md §3 Delivery): after a reconnect the
    server may send again events the application already has. ``delivered``
    (highest seq handed out) drops those; ``processed`` (highest seq the
    application is done with) is what may be acknowledged and persisted.
    ``received`` and ``acked`` belong to the current session, because the
    server clamps an ack to what it sent on that session.
    """

    def __init__(self, initial: dict[str, int] | None = None) -> None:
        self.delivered: dict[str, int] = dict(initial or {})
        self.processed: dict[str, int] = dict(initial or {})
        self.received: dict[str, int] = {}
        self.acked: dict[str, int] = {}
        self.unacked = 0  # events done with since the last acks went out
        self.dirty = False  # processed changed since the last save

    def new_session(self, heads: dict[str, int]) -> None:
        """Start counting for a new session; ``heads`` is ``welcome.streams``."""
        self.received.clear()
        self.acked.clear()
        self.unacked = 0
        for stream, head in heads.items():
            # A server behind what we hold (e.g. restored from an older backup) would
            # otherwise have all its new events dropped as duplicates.
            if isinstance(head, int) and self.delivered.get(stream, 0) > head:
                log.warning("stream %s: server head %d is behind our position %d; resetting",
                            stream, head, self.delivered[stream])
                self.delivered[stream] = self.processed[stream] = head
                self.dirty = True

    def receive(self, stream: str, seq: int) -> None:
        """An event arrived on the current session."""
        if seq > self.received.get(stream, 0):
            self.received[stream] = seq

    def is_duplicate(self, stream: str, seq: int) -> bool:
        return seq <= self.delivered.get(stream, 0)

    def hand_out(self, stream: str, seq: int) -> None:
        """The application was given ``seq`` (or everything up to it, after a gap)."""
        if seq > self.delivered.get(stream, 0):
            self.delivered[stream] = seq

    def done(self, stream: str, seq: int) -> None:
        """The application is done with ``seq``; it may be acknowledged."""
        self.hand_out(stream, seq)
        if seq > self.processed.get(stream, 0):
            self.processed[stream] = seq
            self.dirty = True
        self.unacked += 1

    def acks_due(self) -> list[tuple[str, int]]:
        """Cumulative acks to send now, recorded as sent (protocol.md §3 Delivery)."""
        out = []
        for stream, seq in self.processed.items():
            value = min(seq, self.received.get(stream, 0))
            if value > self.acked.get(stream, 0):
                self.acked[stream] = value
                out.append((stream, value))
        self.unacked = 0
        return out


class StateFile:
    """The application's positions saved next to the identity, so a restart drops duplicates."""

    def __init__(self, path: Path, device_id: str) -> None:
        self.path = path
        self.device_id = device_id

    def load(self) -> dict[str, int]:
        """Saved positions; empty if there are none or they belong to another device."""
        try:
            check_private(self.path)
            doc: Any = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except IdentityError:
            raise
        except (OSError, ValueError) as exc:
            # Losing positions only means possible duplicates, never lost events.
            log.warning("ignoring unreadable state file %s: %s", self.path, exc)
            return {}
        if not isinstance(doc, dict) or doc.get("device_id") != self.device_id:
            log.warning("ignoring state file %s: it belongs to another device", self.path)
            return {}
        streams = doc.get("streams")
        if not isinstance(streams, dict):
            return {}
        return {k: v for k, v in streams.items()
                if is_valid_stream(k) and type(v) is int and v >= 0}

    def save(self, positions: dict[str, int]) -> None:
        write_private_json(self.path, {"device_id": self.device_id,
                                       "streams": dict(sorted(positions.items()))})
