"""Property tests: no input makes the protocol core raise anything but ProtocolError."""

from __future__ import annotations

import json
import math

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from relaybox.protocol import (
    Ack,
    Auth,
    Hello,
    Ping,
    ProtocolError,
    Publish,
    PublishRefused,
    Unknown,
    b64url_decode,
    b64url_encode,
    dumps,
    event_frame,
    loads,
    parse_message,
    parse_uuid,
)

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
MAX = 256
MESSAGE_TYPES = (Hello, Auth, Publish, Ack, Ping, Unknown)

# Any character, lone surrogates included.
any_char = st.characters(codec=None, blacklist_categories=())
any_text = st.text(any_char, max_size=40)

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(2**100), max_value=2**100)
    | st.floats(allow_nan=True, allow_infinity=True)
    | any_text
    | st.sampled_from(["clipboard", "sys.devices", "a" * 64, "a" * 65, ""])
    | st.uuids().map(str)
    | st.binary(max_size=70).map(b64url_encode)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(any_text, inner, max_size=4),
    max_leaves=12,
)
FIELDS = ["id", "stream", "body", "key", "base_seq", "seq", "ref", "protocol", "device_id"]
FIELDS += ["nonce", "signature"]
field_names = st.sampled_from(FIELDS) | any_text
message_types = st.sampled_from(["hello", "auth", "publish", "ack", "ping"]) | any_text
messages = st.builds(
    lambda kind, fields: {**fields, "type": kind},
    message_types | json_values,
    st.dictionaries(field_names, json_values, max_size=8),
)


# Valid messages of every type, then fields replaced or removed: reaches the
# checks deep inside each parser, not only the frame-level ones.
_V4 = "3f2b8c1e-9a4d-4e6f-8b2a-1c3d5e7f9a0b"
TEMPLATES: list[dict[str, object]] = [
    {"type": "hello", "protocol": 1, "device_id": _V4, "nonce": b64url_encode(bytes(32))},
    {"type": "auth", "signature": b64url_encode(bytes(64))},
    {"type": "publish", "id": _V4, "stream": "s", "body": {"a": 1}, "key": "k", "base_seq": 0},
    {"type": "ack", "stream": "s", "seq": 1},
    {"type": "ping", "ref": 1},
]
mutated = st.builds(
    lambda template, drop, over: {
        **{k: v for k, v in template.items() if k not in drop},
        **over,
    },
    st.sampled_from(TEMPLATES),
    st.sets(st.sampled_from(FIELDS), max_size=2),
    st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=2),
)


def _check(data: str | bytes) -> None:
    try:
        result = parse_message(data, max_body_bytes=MAX)
    except ProtocolError as err:
        assert isinstance(err.code, str) and isinstance(err.message, str)
        if isinstance(err, PublishRefused):
            assert err.code in {"invalid", "too_large", "forbidden"}
            assert err.close_code is None
        return
    assert isinstance(result, MESSAGE_TYPES)
    if isinstance(result, Publish):
        assert len(result.body.encode("utf-8")) <= MAX
        loads(result.body)  # the stored body is valid JSON


@FUZZ
@given(st.binary(max_size=200))
def test_binary_frames_always_fatal(data: bytes) -> None:
    try:
        parse_message(data, max_body_bytes=MAX)
    except ProtocolError as err:
        assert err.close_code == 4400
    else:
        raise AssertionError("binary frame accepted")


@FUZZ
@given(any_text)
def test_arbitrary_text(text: str) -> None:
    _check(text)


@FUZZ
@given(st.binary(max_size=200))
def test_arbitrary_bytes_as_text(data: bytes) -> None:
    _check(data.decode("utf-8", errors="replace"))


@FUZZ
@given(messages, st.booleans())
def test_arbitrary_json_objects(msg: dict[str, object], ascii_only: bool) -> None:
    # stdlib json writes NaN/Infinity tokens and \\ud800 escapes on purpose.
    _check(json.dumps(msg, ensure_ascii=ascii_only))


@FUZZ
@given(mutated, st.booleans())
def test_mutated_valid_messages(msg: dict[str, object], ascii_only: bool) -> None:
    _check(json.dumps(msg, ensure_ascii=ascii_only))


@FUZZ
@given(messages | mutated)
def test_arbitrary_json_objects_with_raw_surrogates(msg: dict[str, object]) -> None:
    _check(json.dumps(msg, ensure_ascii=False, indent=1))


def _finite(value: object) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, list):
        return all(_finite(v) for v in value)
    if isinstance(value, dict):
        return all(_finite(v) for v in value.values())
    return True


def _encodable(value: object) -> bool:
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return _finite(value)


@FUZZ
@given(json_values.filter(_encodable))
def test_publish_body_survives_exactly(body: object) -> None:
    text = json.dumps({"type": "publish", "id": _V4, "stream": "s", "body": body})
    result = parse_message(text, max_body_bytes=10**6)
    assert isinstance(result, Publish)
    assert loads(result.body) == body
    assert result.body == dumps(body)


@FUZZ
@given(
    st.text(max_size=20),
    st.integers(min_value=0, max_value=2**63),
    st.none() | st.text(max_size=20),
    st.none() | st.text(max_size=20),
    json_values.filter(_encodable),
)
def test_event_frame_parses_back(
    stream: str, seq: int, from_device: str | None, key: str | None, body: object
) -> None:
    frame = event_frame(stream, seq, _V4, from_device, key, "ts", dumps(body))
    assert loads(frame) == {
        "type": "event",
        "stream": stream,
        "seq": seq,
        "id": _V4,
        "from": from_device,
        "key": key,
        "ts": "ts",
        "body": body,
    }


@FUZZ
@given(st.binary(max_size=80))
def test_b64url_round_trip(data: bytes) -> None:
    assert b64url_decode(b64url_encode(data), len(data)) == data


@FUZZ
@given(any_text, st.integers(min_value=0, max_value=40))
def test_b64url_decode_only_value_error(text: str, length: int) -> None:
    try:
        data = b64url_decode(text, length)
    except ValueError:
        return
    assert len(data) == length and b64url_encode(data) == text


@FUZZ
@given(any_text | st.uuids().map(str) | st.uuids().map(lambda u: str(u).upper()))
def test_parse_uuid_only_value_error(text: str) -> None:
    try:
        assert parse_uuid(text) == text
    except ValueError:
        pass
