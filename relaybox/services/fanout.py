"""How committed events and control notices travel between server processes over the bus."""

from __future__ import annotations

from typing import Any

import orjson

from relaybox.bus import events_channel
from relaybox.store.eventlog import StoredEvent


def encode_events(node_id: str, events: list[StoredEvent]) -> bytes:
    """``<node id> <JSON rows>``: a process skips its own batches without decoding them."""
    return node_id.encode() + b" " + orjson.dumps(
        [[e.user_id, e.stream, e.seq, e.id, e.device_id, e.key, e.ts, e.body] for e in events])


def encode_by_user(node_id: str, events: list[StoredEvent]) -> list[tuple[str, bytes]]:
    """(channel, message) per user: each user's events go on that user's channel."""
    by_user: dict[str, list[StoredEvent]] = {}
    for ev in events:
        by_user.setdefault(ev.user_id, []).append(ev)
    return [(events_channel(user_id), encode_events(node_id, evs))
            for user_id, evs in by_user.items()]


def decode_events(data: bytes) -> tuple[str, list[StoredEvent]]:
    node, _, rows = data.partition(b" ")
    return node.decode("ascii", "replace"), [StoredEvent(*row) for row in orjson.loads(rows)]


def decode_control(data: bytes) -> dict[str, Any]:
    doc = orjson.loads(data)
    if not isinstance(doc, dict):
        raise ValueError("control message is not an object")
    return doc
