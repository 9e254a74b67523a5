"""bus/codec.py: channel names and the framing of event batches and control notices."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace

import orjson
import pytest

from relaybox.bus import codec
from relaybox.bus.codec import (
    CONTROL_CHANNEL,
    decode_control,
    decode_events,
    decode_rows,
    encode_control,
    encode_events_by_user,
    encode_rows,
    events_channel,
    node_channel,
)
from relaybox.store.events import StoredEvent


def test_channel_names() -> None:
    assert events_channel("u1") == "relaybox:events:u1"
    assert node_channel("n1") == "relaybox:node:n1"
    assert CONTROL_CHANNEL == "relaybox:control"
    # The listener counts a message as an event by this prefix.
    assert events_channel("u1").startswith(codec.EVENTS_CHANNEL_PREFIX)
    assert not node_channel("n1").startswith(codec.EVENTS_CHANNEL_PREFIX)


ROW_1 = ["u1", "notes", 1, "id-1", "dev", None, 1_800_000_000_000, '{"a":1}']
ROW_2 = ["u1", "notes", 2, "id-2", None, "k", 1_800_000_000_001, "2"]


def test_an_event_batch_is_the_node_id_a_space_and_the_json_rows() -> None:
    data = encode_rows("node-a", [ROW_1, ROW_2])
    # A process recognises its own batches by this prefix without decoding them.
    assert data.startswith(b"node-a ")
    assert orjson.loads(data.partition(b" ")[2]) == [ROW_1, ROW_2]
    assert decode_rows(data) == ("node-a", [ROW_1, ROW_2])


def test_an_empty_batch_decodes_to_no_rows() -> None:
    assert decode_rows(encode_rows("n", [])) == ("n", [])


def test_a_node_id_that_is_not_ascii_does_not_stop_the_decoding() -> None:
    node, rows = decode_rows("nœud".encode() + b" " + orjson.dumps([ROW_1]))
    assert (node, rows) == ("n\ufffd\ufffdud", [ROW_1])


@pytest.mark.parametrize("data", [b"node-a", b"node-a [1,", b"node-a {not json}"])
def test_a_batch_without_json_rows_is_refused(data: bytes) -> None:
    with pytest.raises(ValueError):
        decode_rows(data)


E1 = StoredEvent("u1", "notes", 1, "id-1", "dev", None, 1_800_000_000_000, '{"a":1}')
E2 = StoredEvent("u1", "notes", 2, "id-2", None, "k", 1_800_000_000_001, "\u00e9 \u2028")


def test_the_wire_bytes_of_an_event_batch_do_not_change() -> None:
    # Processes of the old and the new version may share one Redis: these bytes are what
    # every version sends and reads (user, stream, seq, id, device, key, ts, body).
    e1 = replace(E1)
    e1.ts_text  # noqa: B018  (computed and kept: no attribute outside the row goes on the bus)
    assert encode_events_by_user("node-a", [e1, E2]) == [(
        "relaybox:events:u1",
        b'node-a [["u1","notes",1,"id-1","dev",null,1800000000000,"{\\"a\\":1}"],'
        b'["u1","notes",2,"id-2",null,"k",1800000000001,"\xc3\xa9 \xe2\x80\xa8"]]',
    )]


def test_stored_events_make_the_round_trip() -> None:
    [(_, data)] = encode_events_by_user("node-a", [E1, E2])
    assert decode_events(data, StoredEvent) == ("node-a", [E1, E2])
    assert decode_rows(data) == ("node-a", [ROW_1, ["u1", "notes", 2, "id-2", None, "k",
                                                    1_800_000_000_001, "\u00e9 \u2028"]])


@dataclass(frozen=True)
class Other:
    """Any object with the attributes of BusEvent is encoded; the receiver's ``make`` gets
    the row's items positionally."""

    user_id: str
    stream: str
    seq: int
    id: str
    device_id: str | None
    key: str | None
    ts: int
    body: str


def test_events_go_on_the_channel_of_their_user_in_order_of_first_appearance() -> None:
    v1 = Other("v", "s", 1, "id-v", None, None, 0, "1")
    msgs = encode_events_by_user("node-a", [E1, v1, E2])
    assert [channel for channel, _ in msgs] == [events_channel("u1"), events_channel("v")]
    assert decode_events(msgs[0][1], StoredEvent) == ("node-a", [E1, E2])
    assert decode_events(msgs[1][1], Other) == ("node-a", [v1])
    assert encode_events_by_user("node-a", []) == []


def test_a_row_the_constructor_refuses_is_its_error() -> None:
    with pytest.raises(TypeError):
        decode_events(b'node-a [["u1","notes",1]]', StoredEvent)


def test_a_control_notice_carries_its_kind_the_sending_node_and_its_data() -> None:
    data = encode_control("revoke", "cli", {"device_id": "d1"})
    assert json.loads(data) == {"kind": "revoke", "node": "cli", "device_id": "d1"}
    assert decode_control(data) == {"kind": "revoke", "node": "cli", "device_id": "d1"}


def test_the_data_of_a_control_notice_comes_after_its_kind_and_node() -> None:
    # As when Bus.publish_control built the object itself: a key of the same name wins.
    assert decode_control(encode_control("a", "n", {"node": "m"}))["node"] == "m"


@pytest.mark.parametrize("data", [b"[1, 2]", b'"revoke"', b"null", b"3"])
def test_a_control_message_that_is_not_an_object_is_refused(data: bytes) -> None:
    with pytest.raises(ValueError, match="not an object"):
        decode_control(data)


def test_a_control_message_that_is_not_json_is_refused() -> None:
    with pytest.raises(ValueError):
        decode_control(b"{revoke")
