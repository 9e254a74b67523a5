"""The gateway `event` frame of a stored event, built by the server and only once per event,
whatever the number of recipients (protocol.md §3 Delivery): the store returns plain event
data and never builds frames."""

from __future__ import annotations

from relaybox.protocol.frames import event_frame
from relaybox.store.events import StoredEvent

__all__ = ["Framed", "event_frame_of"]


def event_frame_of(ev: StoredEvent) -> str:
    """``ev``'s `event` frame, kept in ``ev.wire`` once built: the same string is sent to
    every recipient, the body serialised once."""
    frame = ev.wire
    if frame is None:
        frame = ev.wire = event_frame(ev.stream, ev.seq, ev.id, ev.device_id, ev.key,
                                      ev.ts_text, ev.body)
    return frame


class Framed:
    """A stored event as the protocol core's delivery state takes it
    (``relaybox.protocol.delivery.Event``); its frame is built only if it is sent."""

    __slots__ = ("device_id", "event", "seq")

    def __init__(self, event: StoredEvent) -> None:
        self.event = event
        self.seq = event.seq
        self.device_id = event.device_id

    @property
    def frame(self) -> str:
        ev = self.event
        return ev.wire if ev.wire is not None else event_frame_of(ev)
