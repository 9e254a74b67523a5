"""What the application receives: events, gaps and presence, and the iterator handing them out."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeAlias

from relaybox.protocol.encoding import is_valid_stream, parse_uuid

if TYPE_CHECKING:
    from relaybox.client.delivery import Delivery

__all__ = ["Event", "EventStream", "Gap", "Item", "Presence", "parse_event", "parse_gap"]


@dataclass(frozen=True, slots=True)
class Event:
    """One stored event of a stream (protocol.md §3 Delivery)."""

    stream: str
    seq: int
    id: str
    from_device: str | None  # None for server notices (sys.* streams)
    key: str | None
    ts: str
    body: Any

    def to_json(self) -> dict[str, Any]:
        """The event as the gateway sends it."""
        return {"type": "event", "stream": self.stream, "seq": self.seq, "id": self.id,
                "from": self.from_device, "key": self.key, "ts": self.ts, "body": self.body}


@dataclass(frozen=True, slots=True)
class Gap:
    """Retention removed events ``after`` < seq < ``next`` before this device had them."""

    stream: str
    after: int
    next: int

    def to_json(self) -> dict[str, Any]:
        return {"type": "gap", "stream": self.stream, "after": self.after, "next": self.next}


@dataclass(frozen=True, slots=True)
class Presence:
    """Another device of the user came online or went offline (protocol.md §3 Server notices)."""

    device_id: str
    online: bool


Item: TypeAlias = Event | Gap


def _seq(value: object) -> int:
    if type(value) is not int or value < 0:
        raise ValueError("seq must be an integer >= 0")
    return value


def parse_event(msg: dict[str, Any]) -> Event:
    """An ``event`` frame as an Event; ValueError if a required field is wrong."""
    stream = msg.get("stream")
    if not is_valid_stream(stream):
        raise ValueError("event without a valid stream")
    sender = msg.get("from")
    key = msg.get("key")
    ts = msg.get("ts")
    return Event(stream=stream, seq=_seq(msg.get("seq")), id=parse_uuid(msg.get("id")),
                 from_device=sender if isinstance(sender, str) else None,
                 key=key if isinstance(key, str) else None,
                 ts=ts if isinstance(ts, str) else "", body=msg.get("body"))


def parse_gap(msg: dict[str, Any]) -> Gap:
    stream = msg.get("stream")
    if not is_valid_stream(stream):
        raise ValueError("gap without a valid stream")
    return Gap(stream=stream, after=_seq(msg.get("after")), next=_seq(msg.get("next")))


class EventStream:
    """Async iterator over the events (and gaps) for the application, acking as it goes.

    An item counts as taken when the iterator is advanced past it (or the
    iterator or client is closed normally), and only then is it acknowledged
    to the server. Items already handed out, by this run or by an earlier run
    with the same state file, are dropped (protocol.md §3: at least once).
    Items of streams not asked for are acknowledged and skipped.
    """

    def __init__(self, delivery: Delivery, streams: Iterable[str] | None) -> None:
        self._delivery = delivery
        self._streams = frozenset(streams) if streams else None
        self._held: Item | None = None
        self._closed = False

    def __aiter__(self) -> EventStream:
        return self

    def wants(self, stream: str) -> bool:
        return self._streams is None or stream in self._streams

    def release(self) -> None:
        """Mark the item handed out last as done with (it becomes ackable)."""
        held, self._held = self._held, None
        if held is not None:
            self._delivery.done_with(held)

    async def __anext__(self) -> Item:
        self.release()
        if self._closed:
            raise StopAsyncIteration
        delivery = self._delivery
        while True:
            item = await delivery.take()
            if item is None:
                self._closed = True
                raise StopAsyncIteration
            pos = delivery.positions
            last = item.next - 1 if isinstance(item, Gap) else item.seq
            if pos.is_duplicate(item.stream, last) or not self.wants(item.stream):
                delivery.done_with(item)
                continue
            pos.hand_out(item.stream, last)
            self._held = item
            return item

    async def aclose(self) -> None:
        """Stop iterating; the item handed out last counts as taken."""
        self.release()
        self._closed = True
        self._delivery.detach(self)
