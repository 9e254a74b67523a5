"""Blocking read queries (run them in the event log's reader pool, never on the loop)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple, cast

from relaybox.store.events import StoredEvent
from relaybox.store.models import Cursor, Event, StreamHead, database_proxy


class DeviceKey(NamedTuple):
    """What the gateway handshake needs of a device."""

    id: str
    user_id: str
    public_key: bytes
    revoked_at: int | None


def device_key(device_id: str) -> DeviceKey | None:
    """One indexed lookup by primary key (the handshake's hot path: no query building)."""
    db = database_proxy.obj
    p = db.param
    row = db.execute_sql(
        f"SELECT id, user_id, public_key, revoked_at FROM device WHERE id = {p}",
        (device_id,)).fetchone()
    return DeviceKey(row[0], row[1], bytes(row[2]), row[3]) if row else None


def read_events(user_id: str, stream: str, after: int, limit: int) -> list[StoredEvent]:
    """Events of one stream with seq > ``after``, in seq order, at most ``limit``."""
    q = (Event.select(Event.user_id, Event.stream, Event.seq, Event.client_id, Event.device_id,
                      Event.key, Event.ts, Event.body)
         .where((Event.user_id == user_id) & (Event.stream == stream) & (Event.seq > after))
         .order_by(Event.seq).limit(limit))
    return [StoredEvent(*row) for row in q.tuples().iterator()]


def stream_heads(user_id: str) -> dict[str, tuple[int, int]]:
    """{stream: (head_seq, floor_seq)} for a user."""
    q = (StreamHead.select(StreamHead.stream, StreamHead.head_seq, StreamHead.floor_seq)
         .where((StreamHead.user_id == user_id) & (StreamHead.head_seq > 0)).tuples())
    rows = cast("Iterable[tuple[str, int, int]]", q)
    return {s: (h, f) for s, h, f in rows}


def cursors(device_id: str) -> dict[str, int]:
    q = Cursor.select(Cursor.stream, Cursor.acked_seq).where(Cursor.device_id == device_id)
    return dict(cast("Iterable[tuple[str, int]]", q.tuples()))
