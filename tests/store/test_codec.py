"""The item codec both writers share: items decoded for a batch, the writer process's
answer and its reading on the loop, frames on the socket pair. No database."""

from __future__ import annotations

import collections
from typing import Any

from relaybox.store import codec
from relaybox.store.batch import BatchOutcome
from relaybox.store.events import Accepted, Conflicted, Failed, PublishRequest, StoredEvent

U, D = "u1-" + "0" * 33, "d1-" + "0" * 33


def test_split_decodes_items_in_order_and_keeps_the_highest_ack_per_stream() -> None:
    first, second = PublishRequest(U, D, "a", "s", "1"), PublishRequest(U, None, "b", "t", "2",
                                                                         "k", 3)

    def fn() -> int:
        return 7

    batch = codec.split([
        codec.publish_item(first), codec.cursor_item(D, "s", 5), codec.touch_item(D, U),
        codec.cursor_item(D, "s", 3), codec.PROBE_ITEM, codec.publish_item(second),
        codec.cursor_item(D, "t", 1), codec.call_item(fn)])
    assert batch.pubs == [first, second]
    assert batch.cursors == {(D, "s"): 5, (D, "t"): 1}
    assert batch.touches == [(D, U)]
    assert [c() for c in batch.calls] == [None, 7]  # the probe is an empty call


def test_an_answer_read_on_the_loop_rebuilds_each_result_in_item_order() -> None:
    new, dup, cas = (PublishRequest(U, D, "a", "s", '{"x":1}', "k"),
                     PublishRequest(U, D, "b", "s", "2"), PublishRequest(U, D, "c", "s", "3"))
    stored = StoredEvent(U, "s", 1, "b", D, None, 1_700_000_000_000, "2")
    items = [codec.publish_item(new), codec.cursor_item(D, "s", 1), codec.publish_item(dup),
             codec.touch_item(D, None), codec.publish_item(cas), codec.PROBE_ITEM]
    written = StoredEvent(U, "s", 2, "a", D, "k", 1_700_000_000_001, '{"x":1}')
    out = BatchOutcome([Accepted(written, False), Accepted(stored, True), Conflicted("s", 2)],
                       [written], [(None, None)], [(None, RuntimeError("disk full"))],
                       0.25, True)
    frames = bytearray(codec.pack(codec.answers(items, out)) + codec.pack("next"))
    [(answer, seconds, healthy)], rest = codec.unpack(frames, limit=1), codec.unpack(frames)
    assert (seconds, healthy, rest, frames) == (0.25, True, ["next"], bytearray())
    cb: list[Any] = [object(), object(), object()]
    futs: list[Any] = [object(), object()]
    pending: collections.deque[tuple[str, Any, Any, codec.Item, int]] = collections.deque([
        ("p", cb[0], new, items[0], 0), ("c", None, None, items[1], 0),
        ("p", cb[1], dup, items[2], 0), ("t", futs[0], None, items[3], 0),
        ("p", cb[2], cas, items[4], 0), ("b", futs[1], None, items[5], 0),
        ("p", "later", None, (), 0)])
    callbacks, results, new_events, futures = codec.read_answers(pending, answer)
    assert callbacks == cb and len(pending) == 1
    assert written.ts_text == "2023-11-14T22:13:20.001Z"  # the rebuilt one is formatted
    assert results == [Accepted(written, False), Accepted(stored, True), Conflicted("s", 2)]
    assert new_events == [written]
    (f0, v0, e0), (f1, v1, e1) = futures
    assert (f0, v0, e0, f1, v1) == (futs[0], None, None, futs[1], None)
    assert isinstance(e1, codec.WriterGone) and str(e1) == "disk full"


def test_a_failed_publish_crosses_as_it_is() -> None:
    req = PublishRequest(U, D, "a", "s", "1")
    out = BatchOutcome([Failed("database is locked")], [], [], [], 0.0, False)
    answer, _, healthy = codec.answers([codec.publish_item(req)], out)
    assert answer == [Failed("database is locked")] and not healthy
