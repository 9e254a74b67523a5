"""The bus's wire format: channel names, and the framing of event batches and control
notices (plain rows and dicts; which rows are events is the store's business)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

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
#: An event row is a JSON array whose first item is the event's user id (the channel it
#: travels on); what the other items mean is the event log's business (services/fanout.py).
Row = list[Any]


def encode_rows(node_id: str, rows: list[Row]) -> bytes:
    """``<node id> <JSON rows>``: a process skips its own batches without decoding them."""
    return node_id.encode() + b" " + orjson.dumps(rows)


def decode_rows(data: bytes) -> tuple[str, list[Row]]:
    """The sending node and the rows of an ``encode_rows`` message."""
    node, _, rows = data.partition(b" ")
    return node.decode("ascii", "replace"), orjson.loads(rows)


def encode_rows_by_user(node_id: str, rows: list[Row]) -> list[tuple[str, bytes]]:
    """(channel, message) per user: each user's rows go on that user's channel."""
    by_user: dict[str, list[Row]] = {}
    for row in rows:
        by_user.setdefault(row[0], []).append(row)
    return [(events_channel(user_id), encode_rows(node_id, user_rows))
            for user_id, user_rows in by_user.items()]


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
