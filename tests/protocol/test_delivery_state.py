"""The pure delivery state (relaybox/protocol/delivery.py): positions, window, acks, gaps."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest

from relaybox.protocol.delivery import DELIVER, HOLD, READ_CHUNK, SKIP, DeliveryState

ME = "dev-me"
OTHER = "dev-other"


@dataclass(frozen=True)
class Ev:
    seq: int
    device_id: str | None = OTHER
    stream: str = "s"

    @property
    def frame(self) -> str:
        return f"event {self.stream} {self.seq}"


def ready(window: int = 4, heads: dict[str, tuple[int, int]] | None = None,
          cursors: dict[str, int] | None = None) -> DeliveryState:
    state = DeliveryState(ME, window)
    state.start(heads or {}, cursors or {})
    state.ready = True
    return state


def taken(state: DeliveryState, stream: str, events: list[Ev]) -> tuple[list[str], bool]:
    out: list[str] = []
    moved = state.take(stream, events, out.append)
    return out, moved


# -- the positions read at the handshake (protocol.md §2 step 4) ----------------------------
def test_start_builds_each_stream_from_its_head_floor_and_cursor() -> None:
    state = DeliveryState(ME, 8)
    target = state.start({"a": (10, 0), "b": (5, 3)}, {"a": 4, "b": 9})
    assert target == {"a": 10, "b": 5}
    a, b = state.streams["a"], state.streams["b"]
    assert (a.done, a.acked, a.known_head, a.floor) == (4, 4, 10, 0)
    # A cursor above the head (the stream was cut back) counts as the head.
    assert (b.done, b.acked, b.known_head, b.floor) == (5, 5, 5, 3)


def test_a_live_event_before_the_positions_keeps_the_higher_head() -> None:
    state = DeliveryState(ME, 8)
    assert state.offer("a", 12, OTHER) == SKIP  # not ready: noted, not sent
    state.start({"a": (10, 0)}, {"a": 2})
    st = state.streams["a"]
    assert (st.done, st.acked, st.known_head) == (2, 2, 12)


def test_learn_heads_reports_new_and_grown_streams_only() -> None:
    state = ready(heads={"a": (3, 0)}, cursors={"a": 3})
    assert not state.learn_heads({"a": (3, 0)})
    assert state.learn_heads({"a": (5, 0)})
    assert state.streams["a"].known_head == 5
    assert state.learn_heads({"a": (5, 0), "new": (2, 1)})
    new = state.streams["new"]
    assert (new.done, new.known_head, new.floor) == (0, 2, 1)


# -- live delivery -----------------------------------------------------------------------
def test_the_next_event_is_delivered_and_counted_in_flight() -> None:
    state = ready(heads={"s": (0, 0)})
    assert state.offer("s", 1, OTHER) == DELIVER
    assert state.inflight == 1 and list(state.streams["s"].inflight) == [1]


def test_a_first_event_of_an_unseen_stream_starts_it_from_nothing() -> None:
    state = ready()
    assert state.offer("new", 1, OTHER) == DELIVER
    assert state.streams["new"].done == 1


@pytest.mark.parametrize("seq", [3, 5])
def test_an_event_out_of_order_is_left_to_the_pump(seq: int) -> None:
    state = ready(heads={"s": (1, 0)})
    assert state.offer("s", seq, OTHER) == HOLD
    assert state.streams["s"].known_head == seq and state.inflight == 0


def test_an_event_already_covered_is_skipped() -> None:
    state = ready(heads={"s": (4, 0)}, cursors={"s": 4})
    assert state.offer("s", 3, OTHER) == SKIP


def test_the_device_s_own_event_advances_without_being_sent() -> None:
    state = ready(heads={"s": (0, 0)})
    assert state.offer("s", 1, ME) == SKIP
    assert state.streams["s"].done == 1 and state.inflight == 0


def test_a_full_window_or_paused_output_holds_live_events() -> None:
    state = ready(window=1, heads={"s": (0, 0)})
    assert state.offer("s", 1, OTHER) == DELIVER
    assert state.offer("s", 2, OTHER) == HOLD
    state.ack("s", 1)
    state.paused = True
    assert state.offer("s", 2, OTHER) == HOLD
    state.paused = False
    assert state.offer("s", 2, OTHER) == DELIVER


def test_a_stream_being_read_holds_live_events() -> None:
    state = ready(heads={"s": (0, 0)})
    state.streams["s"].reading = True
    assert state.offer("s", 1, OTHER) == HOLD


# -- acks (protocol.md §3 Delivery) ----------------------------------------------------------
def test_an_ack_frees_the_window_up_to_its_seq() -> None:
    state = ready(window=4, heads={"s": (0, 0)})
    for seq in (1, 2, 3):
        state.offer("s", seq, OTHER)
    assert state.ack("s", 2) == 2
    assert state.inflight == 1 and list(state.streams["s"].inflight) == [3]


@pytest.mark.parametrize(("acks", "expected"), [
    ([("s", 9)], [2]),  # above what was sent: lowered to it
    ([("s", 2), ("s", 1)], [2, 0]),  # lower than before: nothing
    ([("s", 2), ("s", 2)], [2, 0]),  # the same again: nothing
    ([("unknown", 1)], [0]),  # a stream the session has not seen: ignored
])
def test_ack_returns_the_cursor_to_store_or_zero(acks: list[tuple[str, int]],
                                                 expected: list[int]) -> None:
    state = ready(heads={"s": (0, 0)})
    state.offer("s", 1, OTHER)
    state.offer("s", 2, OTHER)
    assert [state.ack(stream, seq) for stream, seq in acks] == expected


def test_an_ack_past_own_events_is_stored() -> None:
    state = ready(heads={"s": (0, 0)})
    state.offer("s", 1, ME)
    assert state.ack("s", 1) == 1 and state.inflight == 0


# -- catch-up, refills and gaps (protocol.md §3 Catch-up) ------------------------------------
def test_catch_up_sends_within_the_window_and_skips_own_events() -> None:
    state = ready(window=2, heads={"s": (5, 0)}, cursors={"s": 1})
    assert state.behind("s")
    assert state.read_from("s") == (1, 4)
    frames, moved = taken(state, "s", [Ev(2, ME), Ev(3), Ev(4), Ev(5)])
    assert frames == ["event s 3", "event s 4"] and moved
    assert state.streams["s"].done == 4 and not state.behind("s")  # window full
    state.ack("s", 4)
    assert state.behind("s")


def test_the_read_limit_follows_the_room_in_the_window() -> None:
    assert ready(window=1000, heads={"s": (9, 0)}).read_from("s") == (0, READ_CHUNK)
    state = ready(window=3, heads={"s": (9, 0)})
    state.offer("s", 1, OTHER)
    state.offer("s", 2, OTHER)
    state.offer("s", 3, OTHER)
    assert state.read_from("s") == (3, 2)  # no room: still one read of two


def test_a_floor_above_the_position_is_a_gap() -> None:
    state = ready(heads={"s": (20, 10)}, cursors={"s": 4})
    gap = state.floor_gap("s")
    assert gap is not None and json.loads(gap) == {"type": "gap", "stream": "s",
                                                   "after": 4, "next": 11}
    assert state.streams["s"].done == 10 and state.floor_gap("s") is None


def test_a_hole_in_what_was_read_is_a_gap_before_the_event() -> None:
    state = ready(heads={"s": (9, 0)}, cursors={"s": 2})
    frames, _ = taken(state, "s", [Ev(7)])
    assert json.loads(frames[0]) == {"type": "gap", "stream": "s", "after": 2, "next": 7}
    assert frames[1:] == ["event s 7"] and state.streams["s"].floor == 6


def test_take_stops_as_soon_as_the_output_pauses() -> None:
    state = ready(window=8, heads={"s": (5, 0)})
    out: list[str] = []

    def emit(frame: str) -> None:
        out.append(frame)
        state.paused = True  # this frame crossed the output bound

    assert state.take("s", [Ev(1), Ev(2), Ev(3)], emit)
    assert out == ["event s 1"] and state.streams["s"].done == 1


def test_an_empty_ring_with_events_left_needs_storage() -> None:
    state = ready(heads={"s": (3, 0)})
    assert state.needs_storage("s", None)
    assert state.needs_storage("s", [])
    assert not state.needs_storage("s", [Ev(1)])
    state.streams["s"].done = 3
    assert not state.needs_storage("s", [])


def test_an_empty_read_is_a_gap_or_the_end_of_the_stream() -> None:
    state = ready(heads={"s": (8, 0)}, cursors={"s": 2})
    assert state.read_empty("s", 5)  # retention removed everything after 2 up to 5
    assert state.streams["s"].floor == 5
    assert state.floor_gap("s") is not None
    assert not state.read_empty("s", 5)  # nothing more stored: the head was too high
    assert state.streams["s"].known_head == 5 and not state.behind("s")


def test_synced_once_everything_at_welcome_was_sent() -> None:
    state = ready(window=8, heads={"a": (2, 0), "b": (1, 0)})
    assert state.synced() is None
    taken(state, "a", [Ev(1, stream="a"), Ev(2, stream="a")])
    assert state.synced() is None
    taken(state, "b", [Ev(1, ME, stream="b")])
    synced = state.synced()
    assert synced is not None and json.loads(synced) == {"type": "synced",
                                                         "streams": {"a": 2, "b": 1}}
    assert state.synced() is None  # once per session


def test_no_events_at_all_is_synced_at_once() -> None:
    synced = ready().synced()
    assert synced is not None and json.loads(synced)["streams"] == {}
