"""bus/codec.py: channel names and the framing of event batches and control notices."""

from __future__ import annotations

import json

import orjson
import pytest

from relaybox.bus import codec
from relaybox.bus.codec import (
    CONTROL_CHANNEL,
    decode_control,
    decode_rows,
    encode_control,
    encode_rows,
    encode_rows_by_user,
    events_channel,
    node_channel,
)


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


def test_rows_go_on_the_channel_of_their_user_in_order_of_first_appearance() -> None:
    v1 = ["v", "s", 1, "id-v", None, None, 0, "1"]
    msgs = encode_rows_by_user("node-a", [ROW_1, v1, ROW_2])
    assert [channel for channel, _ in msgs] == [events_channel("u1"), events_channel("v")]
    assert decode_rows(msgs[0][1]) == ("node-a", [ROW_1, ROW_2])
    assert decode_rows(msgs[1][1]) == ("node-a", [v1])
    assert encode_rows_by_user("node-a", []) == []


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
