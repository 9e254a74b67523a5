"""The `event` frame of a committed event: built once, for every recipient (protocol core)."""

from __future__ import annotations

import orjson

from relaybox.protocol.delivery import DeliveryState, Framed
from relaybox.store.events import StoredEvent

U, D = "u1-" + "0" * 33, "d1-" + "0" * 33


def test_the_frame_is_built_once_and_shared() -> None:
    ev = StoredEvent(U, "s", 3, "id-1", D, "k", 1_700_000_000_000, '{"a":[1,2]}')
    framed = Framed(ev)
    first = framed.frame
    assert orjson.loads(first) == {"type": "event", "stream": "s", "seq": 3, "id": "id-1",
                                   "from": D, "key": "k", "ts": "2023-11-14T22:13:20.000Z",
                                   "body": {"a": [1, 2]}}
    assert framed.frame is first  # the same string for every recipient
    assert (framed.stream, framed.seq, framed.device_id, framed.event) == ("s", 3, D, ev)


def test_the_delivery_core_takes_framed_events_and_builds_only_what_it_sends() -> None:
    state = DeliveryState("d2", window=1)
    state.start({"s": (2, 0)}, {"s": 0})  # catching up from 0 to 2
    evs = [Framed(StoredEvent(U, "s", seq, f"id-{seq}", D, None, 1, "1")) for seq in (1, 2)]
    out: list[str] = []
    assert state.take("s", evs, out.append)
    assert [orjson.loads(f)["seq"] for f in out] == [1]  # the window holds one
    assert evs[0].frame is out[0] and evs[1]._frame is None
