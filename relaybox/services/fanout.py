"""How committed events travel between server processes over the bus: a stored event is
one row of the bus's event messages (bus/codec.py frames the rows)."""

from __future__ import annotations

from relaybox.bus import Row, decode_rows, encode_rows_by_user
from relaybox.bus import decode_control as decode_control  # re-exported for the hub
from relaybox.store.events import StoredEvent


def _row(e: StoredEvent) -> Row:
    return [e.user_id, e.stream, e.seq, e.id, e.device_id, e.key, e.ts, e.body]


def encode_by_user(node_id: str, events: list[StoredEvent]) -> list[tuple[str, bytes]]:
    """(channel, message) per user: each user's events go on that user's channel."""
    return encode_rows_by_user(node_id, [_row(e) for e in events])


def decode_events(data: bytes) -> tuple[str, list[StoredEvent]]:
    node, rows = decode_rows(data)
    return node, [StoredEvent(*row) for row in rows]
