"""Streams over HTTP: list a user's streams, read a page of events, check a publish."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

import orjson

from relaybox.errors import (
    Conflict,
    Forbidden,
    InvalidInput,
    NotFound,
    QuotaExceeded,
    TooLarge,
    Unavailable,
)
from relaybox.protocol.encoding import dumps, format_ts, is_valid_stream
from relaybox.protocol.errors import ProtocolError, PublishRefused
from relaybox.protocol.messages import Publish, parse_message
from relaybox.store import queries
from relaybox.store.events import (
    Accepted,
    Conflicted,
    PublishRequest,
    PublishResult,
    Refused,
    StoredEvent,
)
from relaybox.store.models import StreamHead

MAX_PAGE: Final = 1000  # api.md §3 Routes, Streams: limit ≤ 1000

# A gateway nack code and the HTTP error that says the same (protocol.md §3 Publish).
_REFUSALS: Final = {"invalid": InvalidInput, "forbidden": Forbidden, "too_large": TooLarge}


@dataclass(frozen=True, slots=True)
class EventsPage:
    events: list[StoredEvent]
    head_seq: int
    floor_seq: int

    def as_json(self) -> dict[str, Any]:
        return {"events": [event_json(e) for e in self.events], "head_seq": self.head_seq,
                "floor_seq": self.floor_seq}


def event_json(ev: StoredEvent) -> dict[str, Any]:
    """An event as the REST API shows it (api.md §3 Routes, Streams)."""
    return {"type": "event", "stream": ev.stream, "seq": ev.seq, "id": ev.id,
            "from": ev.device_id, "key": ev.key, "ts": ev.ts_text,
            "body": orjson.loads(ev.body) if ev.body else None}


def require_stream(name: str) -> str:
    """A stream name from a URL; a name that cannot exist names no stream (404)."""
    if not is_valid_stream(name):
        raise NotFound(f"no stream {name!r}", code="stream_unknown")
    return name


def list_streams(user_id: str, device_id: str) -> list[dict[str, int | str]]:
    """The user's streams with the calling device's cursor (blocking)."""
    heads = queries.stream_heads(user_id)
    acked = queries.cursors(device_id)
    return [{"stream": s, "head_seq": h, "floor_seq": f, "acked_seq": acked.get(s, 0)}
            for s, (h, f) in sorted(heads.items())]


def read_page(user_id: str, stream: str, after: int, limit: int) -> EventsPage:
    """Events after ``after`` in seq order, with the stream's head and floor (blocking)."""
    events = queries.read_events(user_id, stream, after, limit)
    # The head is read after the events, so it is never below the last event returned.
    row = (StreamHead.select(StreamHead.head_seq, StreamHead.floor_seq)
           .where((StreamHead.user_id == user_id) & (StreamHead.stream == stream))
           .tuples().first())
    head, floor = row if row is not None else (0, 0)
    return EventsPage(events, head, floor)


def parse_publish(obj: dict[str, Any], stream: str, max_body_bytes: int) -> Publish:
    """Check an HTTP publish with the gateway's own rules (protocol.md §3 Publish)."""
    frame = dict(obj)
    frame["type"] = "publish"
    frame["stream"] = stream
    try:
        msg = parse_message(dumps(frame), max_body_bytes=max_body_bytes)
    except PublishRefused as exc:
        raise _REFUSALS.get(exc.code, InvalidInput)(exc.message, code=exc.code) from None
    except (ProtocolError, TypeError, ValueError):
        raise InvalidInput("the body is not a valid publish") from None
    assert isinstance(msg, Publish)
    return msg


def publish_request(user_id: str, device_id: str, msg: Publish) -> PublishRequest:
    return PublishRequest(user_id, device_id, msg.id, msg.stream, msg.body, msg.key,
                          msg.base_seq)


def publish_outcome(result: PublishResult) -> tuple[int, dict[str, Any]]:
    """(HTTP status, body) for a publish result; refusals raise a RelayError."""
    if isinstance(result, Accepted):
        ev = result.event
        body = {"id": ev.id, "stream": ev.stream, "seq": ev.seq, "ts": format_ts(ev.ts)}
        # A replayed id is answered with the original event (protocol.md §3 Idempotent).
        return (200 if result.duplicate else 201), body
    if isinstance(result, Conflicted):
        raise Conflict(f"stream {result.stream!r} moved past base_seq", code="conflict",
                       stream=result.stream, head_seq=result.head_seq)
    if isinstance(result, Refused):
        if result.quota is not None:
            # Over a quota (store/quotas.py): 403 quota_exceeded, naming it (api.md).
            raise QuotaExceeded(result.message, quota=result.quota)
        # A value the database cannot store (store/intake.py): the gateway's nack code.
        raise _REFUSALS.get(result.code, InvalidInput)(result.message, code=result.code)
    raise Unavailable("storage is unavailable; retry with the same id", code="unavailable")
