"""Handing events to the application: order, duplicates, gaps and acks, without a server."""

from __future__ import annotations

import json

from relaybox.client.delivery import Delivery
from relaybox.client.events import Event, Gap
from relaybox.protocol.encoding import uuid7


def event(stream: str, seq: int) -> Event:
    return Event(stream=stream, seq=seq, id=uuid7(), from_device=None, key=None, ts="",
                 body={"seq": seq})


def make(window: int = 8) -> tuple[Delivery, list[dict[str, object]]]:
    sent: list[dict[str, object]] = []

    def send(frame: str) -> bool:
        sent.append(json.loads(frame))
        return True

    d = Delivery(send, lambda: True, None)
    d.new_session({}, window)
    return d, sent


async def test_gap_is_handed_out_and_acked_up_to_the_next_kept_seq() -> None:
    d, sent = make()
    d.event(event("s", 1))
    d.gap(Gap("s", after=1, next=5))
    d.event(event("s", 5))
    d.stop()
    items = [item async for item in d.open_stream(None)]
    assert [(type(i).__name__, i.seq if isinstance(i, Event) else i) for i in items] == [
        ("Event", 1), ("Gap", Gap("s", after=1, next=5)), ("Event", 5)]
    d.flush()
    assert sent[-1] == {"type": "ack", "stream": "s", "seq": 5}


async def test_duplicates_and_other_streams_are_acked_but_not_handed_out() -> None:
    d, sent = make(window=4)  # acks go out every window/2 = 2 items taken
    for seq in (1, 2):
        d.event(event("s", seq))
    it = d.open_stream(["s"])
    assert (await anext(it)).seq == 1  # type: ignore[union-attr]
    assert (await anext(it)).seq == 2  # type: ignore[union-attr]
    # After a reconnect the server sends 2 again, plus an event of another stream.
    d.new_session({"s": 3, "t": 1}, 4)
    for e in (event("s", 2), event("t", 1), event("s", 3)):
        d.event(e)
    nxt = await anext(it)
    assert isinstance(nxt, Event) and (nxt.stream, nxt.seq) == ("s", 3)
    # s/2 released, s/2 again dropped: window/2 items taken, so the ack went out at once.
    assert sent == [{"type": "ack", "stream": "s", "seq": 2}]
    d.flush()  # what the 100 ms timer does: t/1 (not asked for) was taken too
    assert sent[1:] == [{"type": "ack", "stream": "t", "seq": 1}]
    # The item in the application's hands is not acked until it moves on.
    await it.aclose()
    d.flush()
    assert sent[-1] == {"type": "ack", "stream": "s", "seq": 3}
