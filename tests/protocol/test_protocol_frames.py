"""Tests for server frame builders: exact text, key order, body spliced verbatim."""

from __future__ import annotations

import json

import pytest

from relaybox.protocol import (
    ack_frame,
    challenge_frame,
    error_frame,
    event_frame,
    gap_frame,
    loads,
    nack_frame,
    pong_frame,
    presence_frame,
    synced_frame,
    welcome_frame,
)

S = "0193aaaa-0000-7000-8000-000000000001"
U = "0193aaaa-0000-7000-8000-000000000002"
D = "0193aaaa-0000-7000-8000-000000000003"
ID = "3f2b8c1e-9a4d-4e6f-8b2a-1c3d5e7f9a0b"
TS = "2026-11-25T16:52:52.123Z"


@pytest.mark.parametrize(
    ("frame", "expected"),
    [
        (
            challenge_frame(S, U, "bm9uY2U"),
            f'{{"type":"challenge","session_id":"{S}","server_id":"{U}","nonce":"bm9uY2U"}}',
        ),
        (
            welcome_frame(S, U, D, 20, 256, 65536, {"clipboard": 3, "sys.devices": 1}),
            f'{{"type":"welcome","session_id":"{S}","user_id":"{U}","device_id":"{D}",'
            '"heartbeat_s":20,"window":256,"max_body_bytes":65536,'
            '"streams":{"clipboard":3,"sys.devices":1}}',
        ),
        (
            ack_frame(ID, "clipboard", 42, TS),
            f'{{"type":"ack","id":"{ID}","stream":"clipboard","seq":42,"ts":"{TS}"}}',
        ),
        (nack_frame(ID, "invalid"), f'{{"type":"nack","id":"{ID}","code":"invalid"}}'),
        (nack_frame(None, "invalid"), '{"type":"nack","id":null,"code":"invalid"}'),
        (
            nack_frame(ID, "conflict", stream="s", head_seq=7),
            f'{{"type":"nack","id":"{ID}","code":"conflict","stream":"s","head_seq":7}}',
        ),
        (
            nack_frame(ID, "rate_limited", retry_after_ms=250),
            f'{{"type":"nack","id":"{ID}","code":"rate_limited","retry_after_ms":250}}',
        ),
        (synced_frame({"a": 1, "b": 0}), '{"type":"synced","streams":{"a":1,"b":0}}'),
        (synced_frame({}), '{"type":"synced","streams":{}}'),
        (gap_frame("s", 3, 10), '{"type":"gap","stream":"s","after":3,"next":10}'),
        (
            presence_frame(D, True),
            f'{{"type":"presence","device_id":"{D}","online":true}}',
        ),
        (presence_frame(D, False), f'{{"type":"presence","device_id":"{D}","online":false}}'),
        (pong_frame(None), '{"type":"pong","ref":null}'),
        (pong_frame({"n": 2**80}), '{"type":"pong","ref":{"n":' + str(2**80) + "}}"),
        (
            error_frame("unknown_type", "no such type", "x"),
            '{"type":"error","code":"unknown_type","message":"no such type","ref":"x"}',
        ),
        (
            error_frame("auth_failed", "bad signature"),
            '{"type":"error","code":"auth_failed","message":"bad signature","ref":null}',
        ),
    ],
)
def test_frame_text(frame: str, expected: str) -> None:
    assert frame == expected
    assert json.loads(frame) == json.loads(expected)


BODIES = [
    "null",
    '"plain"',
    '{"text":"h\u00e9llo \u4e16\u754c \U0001f600","n":[1,2.5,true]}',
    '"quote \\" backslash \\\\ newline \\n"',
    "123456789012345678901234567890",
    "[]",
]


@pytest.mark.parametrize("body", BODIES)
def test_event_frame_round_trip(body: str) -> None:
    frame = event_frame("clip.board", 42, ID, D, "k\u00e9y", TS, body)
    assert frame.endswith(',"body":' + body + "}")  # spliced verbatim
    assert loads(frame) == {
        "type": "event",
        "stream": "clip.board",
        "seq": 42,
        "id": ID,
        "from": D,
        "key": "k\u00e9y",
        "ts": TS,
        "body": loads(body),
    }


def test_event_frame_key_order_and_nulls() -> None:
    frame = event_frame("sys.devices", 1, ID, None, None, TS, '{"event":"device_added"}')
    assert frame == (
        f'{{"type":"event","stream":"sys.devices","seq":1,"id":"{ID}","from":null,'
        f'"key":null,"ts":"{TS}","body":{{"event":"device_added"}}}}'
    )


@pytest.mark.parametrize("key", ['a"b', "a\\b", "line\nbreak", "\u0000ctl", '}],"body":1'])
def test_event_frame_escapes_string_fields(key: str) -> None:
    obj = loads(event_frame("s", 1, ID, D, key, TS, "true"))
    assert isinstance(obj, dict)
    assert obj["key"] == key
    assert obj["body"] is True
