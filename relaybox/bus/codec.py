"""The bus's wire format: channel names, and the framing of event batches (a committed
event is one row, read off its attributes: ``BusEvent``) and control notices."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol, TypeVar

import orjson

#: Committed events travel on one channel per user, ``relaybox:events:<user_id>``: a
#: process subscribes to it while it holds a session of that user, so a process hears
#: only the events of its own sessions' users (docs/architecture.md).
EVENTS_CHANNEL_PREFIX = "relaybox:events:"
CONTROL_CHANNEL = "relaybox:control"
#: Every server process also subscribes to a channel named after itself, on which nothing
#: is published: Redis drops the subscription when the process's connection dies, so the
#: channel's subscriber count says whether that process still runs.
NODE_CHANNEL_PREFIX = "relaybox:node:"


def node_channel(node_id: str) -> str:
    return NODE_CHANNEL_PREFIX + node_id


def events_channel(user_id: str) -> str:
    return EVENTS_CHANNEL_PREFIX + user_id


# -- event batches: ``<node id> <JSON rows>`` ----------------------------------------------
#: An event row is a JSON array of the event's attributes in ``_row``'s order, the user id
#: (the channel it travels on) first.
Row = list[Any]
E = TypeVar("E")


class BusEvent(Protocol):
    """What the codec reads of a committed event (store/events.py's ``StoredEvent``): bus/
    imports nothing of the store, it reads these attributes."""

    @property
    def user_id(self) -> str: ...
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
    def ts(self) -> int: ...
    @property
    def body(self) -> str: ...


def _row(e: BusEvent) -> Row:
    # This order is the wire format: processes of different versions share one Redis, and
    # ``decode_events`` hands the items to the receiver's constructor positionally.
    return [e.user_id, e.stream, e.seq, e.id, e.device_id, e.key, e.ts, e.body]


def encode_rows(node_id: str, rows: list[Row]) -> bytes:
    """``<node id> <JSON rows>``: a process skips its own batches without decoding them."""
    return node_id.encode() + b" " + orjson.dumps(rows)


def decode_rows(data: bytes) -> tuple[str, list[Row]]:
    """The sending node and the rows of an ``encode_rows`` message."""
    node, _, rows = data.partition(b" ")
    return node.decode("ascii", "replace"), orjson.loads(rows)


def encode_events_by_user(node_id: str, events: Iterable[BusEvent]) -> list[tuple[str, bytes]]:
    """(channel, message) per user: each user's events go on that user's channel, users in
    order of first appearance, each user's events in their order."""
    by_user: dict[str, list[Row]] = {}
    for e in events:
        by_user.setdefault(e.user_id, []).append(_row(e))
    return [(events_channel(user_id), encode_rows(node_id, rows))
            for user_id, rows in by_user.items()]


def decode_events(data: bytes, make: Callable[..., E]) -> tuple[str, list[E]]:
    """The sending node and the events of an ``encode_events_by_user`` message, each built
    by ``make`` from its row's items in ``BusEvent``'s order (the hub passes
    ``StoredEvent``). Raises ValueError or make's errors on a malformed message."""
    node, rows = decode_rows(data)
    return node, [make(*row) for row in rows]


# -- control notices: one JSON object each, ``kind`` and the sending ``node`` in it -------
def encode_control(kind: str, node_id: str, data: Mapping[str, Any]) -> bytes:
    """A control notice of ``kind`` from ``node_id`` (``"cli"`` outside a server process)."""
    return json.dumps({"kind": kind, "node": node_id, **data}).encode()


def decode_control(data: bytes) -> dict[str, Any]:
    """The notice's object; ValueError when the message is not a JSON object."""
    doc = orjson.loads(data)
    if not isinstance(doc, dict):
        raise ValueError("control message is not an object")
    return doc
