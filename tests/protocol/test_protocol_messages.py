"""Tests for parse_message: one case per validation rule of protocol.md §1-§4."""

from __future__ import annotations

import pytest

from relaybox.protocol import (
    Ack,
    Auth,
    CloseCode,
    Hello,
    Ping,
    ProtocolError,
    Publish,
    PublishRefused,
    Unknown,
    b64url_encode,
    dumps,
    parse_message,
)

MAX = 100
DEVICE = "01937a4c-5b2e-7c3d-9e4f-a5b6c7d8e9f0"
V4 = "3f2b8c1e-9a4d-4e6f-8b2a-1c3d5e7f9a0b"
V7 = "01937a4c-5b2e-7c3d-9e4f-a5b6c7d8e9f1"
V1 = "c232ab00-9414-11ec-b3c8-9f6bdeced846"
NONCE = b64url_encode(bytes(range(32)))
SIG = bytes(range(64))
_ABSENT = object()


def parse(obj: object, max_body_bytes: int = MAX) -> object:
    return parse_message(dumps(obj), max_body_bytes=max_body_bytes)


def fatal(data: str | bytes) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        parse_message(data, max_body_bytes=MAX)
    assert not isinstance(info.value, PublishRefused)
    assert info.value.close_code == CloseCode.BAD_REQUEST
    assert info.value.fatal
    return info.value


# --- protocol.md §1: frame level ---------------------------------------------


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b'{"type":"ping"}', "binary frame"),
        ("", "empty"),
        ("{", "invalid JSON"),
        ('{"type":"ping"} x', "trailing garbage"),
        ("[]", "array, not object"),
        ('"ping"', "string, not object"),
        ("null", "null"),
        ("1", "number"),
        ("{}", "missing type"),
        ('{"type":null}', "null type"),
        ('{"type":1}', "numeric type"),
        ('{"type":["ping"]}', "array type"),
        ('{"type":"ping","x":NaN}', "NaN"),
        ('{"type":"ping","x":1e999}', "overflow to infinity"),
        ('{"type":"ping","x":"\\udc00"}', "lone surrogate"),
    ],
)
def test_frame_violations_are_fatal(data: str | bytes, reason: str) -> None:
    err = fatal(data)
    assert err.code == "bad_request"


def test_unknown_type_is_returned_not_raised() -> None:
    assert parse({"type": "subscribe", "stream": "x"}) == Unknown(type="subscribe")
    assert parse({"type": ""}) == Unknown(type="")


def test_unknown_fields_are_ignored() -> None:
    assert parse({"type": "ping", "ref": 3, "extra": {"a": 1}}) == Ping(ref=3)


def test_bytes_frame_even_if_valid_json_is_fatal() -> None:
    assert fatal(dumps({"type": "ping"}).encode()).code == "bad_request"


# --- protocol.md §2: hello ----------------------------------------------------


def changed(msg: dict[str, object], over: dict[str, object]) -> dict[str, object]:
    """``msg`` with the fields of ``over`` set, or removed where they are ``_ABSENT``."""
    msg = {**msg, **over}
    return {name: value for name, value in msg.items() if value is not _ABSENT}


def hello(**over: object) -> dict[str, object]:
    return changed({"type": "hello", "protocol": 1, "device_id": DEVICE, "nonce": NONCE}, over)


def test_hello_ok() -> None:
    assert parse(hello()) == Hello(protocol=1, device_id=DEVICE, nonce=NONCE)


@pytest.mark.parametrize("device_id", [V4, V1, DEVICE])
def test_hello_accepts_any_uuid_version(device_id: str) -> None:
    assert parse(hello(device_id=device_id)) == Hello(1, device_id, NONCE)


@pytest.mark.parametrize("protocol", [0, 2, -1, 2**70])
def test_hello_unsupported_protocol(protocol: int) -> None:
    err = fatal(dumps(hello(protocol=protocol)))
    assert err.code == "unsupported_protocol"


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("protocol", _ABSENT, "protocol missing"),
        ("protocol", "1", "protocol string"),
        ("protocol", 1.0, "protocol float"),
        ("protocol", True, "protocol bool"),
        ("protocol", None, "protocol null"),
        ("device_id", _ABSENT, "device_id missing"),
        ("device_id", DEVICE.upper(), "device_id upper case"),
        ("device_id", "not-a-uuid", "device_id garbage"),
        ("device_id", 5, "device_id number"),
        ("nonce", _ABSENT, "nonce missing"),
        ("nonce", NONCE + "=", "nonce padded"),
        ("nonce", NONCE[:-1], "nonce 31 bytes"),
        ("nonce", b64url_encode(bytes(33)), "nonce 33 bytes"),
        ("nonce", b64url_encode(bytes(16)), "nonce 16 bytes"),
        ("nonce", NONCE.replace("A", "+"), "nonce standard alphabet"),
        ("nonce", 12, "nonce number"),
    ],
)
def test_hello_bad_fields_are_fatal(field: str, value: object, reason: str) -> None:
    assert fatal(dumps(hello(**{field: value}))).code == "bad_request"


# --- protocol.md §2: auth -----------------------------------------------------


def test_auth_ok() -> None:
    assert parse({"type": "auth", "signature": b64url_encode(SIG)}) == Auth(signature=SIG)


@pytest.mark.parametrize(
    ("signature", "reason"),
    [
        (_ABSENT, "missing"),
        (None, "null"),
        (b64url_encode(SIG[:63]), "63 bytes"),
        (b64url_encode(SIG + b"\0"), "65 bytes"),
        (b64url_encode(SIG) + "==", "padded"),
        (list(SIG), "array"),
    ],
)
def test_auth_malformed_signature_is_fatal(signature: object, reason: str) -> None:
    msg: dict[str, object] = {"type": "auth"}
    if signature is not _ABSENT:
        msg["signature"] = signature
    assert fatal(dumps(msg)).code == "bad_request"


# --- protocol.md §3: publish --------------------------------------------------


def publish(**over: object) -> dict[str, object]:
    return changed({"type": "publish", "id": V4, "stream": "clipboard", "body": "hi"}, over)


def raw_publish(body: str) -> str:
    """A publish frame with ``body`` JSON text inserted as written."""
    return '{"type":"publish","id":"' + V4 + '","stream":"s","body":' + body + "}"


def refused(obj: object, max_body_bytes: int = MAX) -> PublishRefused:
    with pytest.raises(PublishRefused) as info:
        parse(obj, max_body_bytes)
    assert info.value.close_code is None
    assert not info.value.fatal
    return info.value


def test_publish_minimal() -> None:
    assert parse(publish()) == Publish(id=V4, stream="clipboard", body='"hi"')


def test_publish_all_fields() -> None:
    msg = publish(id=V7, key="k", base_seq=0, body={"b": [1, "\u00e9"]})
    assert parse(msg) == Publish(V7, "clipboard", '{"b":[1,"\u00e9"]}', "k", 0)


def test_publish_body_is_compact_json_of_sent_body() -> None:
    text = '{ "type" : "publish", "id" : "' + V4 + '", "stream":"s", "body" : { "a" : [ 1 , 2 ] } }'
    result = parse_message(text, max_body_bytes=MAX)
    assert isinstance(result, Publish) and result.body == '{"a":[1,2]}'


@pytest.mark.parametrize("body", [None, 0, False, "", [], {}, 2**80, -(2**70), 1.5])
def test_publish_any_json_body(body: object) -> None:
    result = parse(publish(body=body))
    assert isinstance(result, Publish) and result.body == dumps(body)


def test_publish_null_key_and_base_seq_mean_absent() -> None:
    assert parse(publish(key=None, base_seq=None)) == Publish(V4, "clipboard", '"hi"')


@pytest.mark.parametrize(
    ("over", "reason"),
    [
        ({"id": _ABSENT}, "id missing"),
        ({"id": None}, "id null"),
        ({"id": V1}, "id UUIDv1"),
        ({"id": V4.upper()}, "id upper case"),
        ({"id": 7}, "id number"),
        ({"stream": _ABSENT}, "stream missing"),
        ({"stream": ""}, "stream empty"),
        ({"stream": "a" * 65}, "stream 65 chars"),
        ({"stream": "Clip"}, "stream upper case"),
        ({"stream": 5}, "stream number"),
        ({"key": 5}, "key number"),
        ({"key": ["k"]}, "key array"),
        ({"key": "k" * 257}, "key 257 ASCII bytes"),
        ({"key": "\u00e9" * 129}, "key 258 bytes of 2-byte chars"),
        ({"key": "\U0001f600" * 65}, "key 260 bytes of 4-byte chars"),
        ({"base_seq": -1}, "base_seq negative"),
        ({"base_seq": 1.0}, "base_seq float"),
        ({"base_seq": 1.5}, "base_seq fraction"),
        ({"base_seq": True}, "base_seq bool"),
        ({"base_seq": False}, "base_seq bool false"),
        ({"base_seq": "3"}, "base_seq string"),
        ({"body": _ABSENT}, "body missing"),
    ],
)
def test_publish_invalid(over: dict[str, object], reason: str) -> None:
    assert refused(publish(**over)).code == "invalid"


@pytest.mark.parametrize("bad_id", [_ABSENT, None, V1, "x"])
def test_publish_invalid_id_is_none_in_refusal(bad_id: object) -> None:
    assert refused(publish(id=bad_id)).id is None


def test_publish_refusal_carries_valid_id() -> None:
    assert refused(publish(stream="")).id == V4


@pytest.mark.parametrize(
    "key", ["", "k" * 256, "\u00e9" * 128, "\U0001f600" * 64, "\u4e2d" * 85 + "a"]
)
def test_publish_key_up_to_256_utf8_bytes(key: str) -> None:
    result = parse(publish(key=key))
    assert isinstance(result, Publish) and result.key == key


@pytest.mark.parametrize("base_seq", [0, 1, 2**62, 2**70])
def test_publish_base_seq_ok(base_seq: int) -> None:
    result = parse(publish(base_seq=base_seq))
    assert isinstance(result, Publish) and result.base_seq == base_seq


@pytest.mark.parametrize("stream", ["sys.devices", "sys.other"])
def test_publish_sys_stream_forbidden(stream: str) -> None:
    err = refused(publish(stream=stream))
    assert (err.code, err.id) == ("forbidden", V4)


def _body_of_size(size: int) -> str:
    # A JSON string body: two quotes plus the content, content 2-byte chars.
    assert size % 2 == 0
    return "\u00e9" * ((size - 2) // 2)


def test_publish_body_exactly_max_is_accepted() -> None:
    body = _body_of_size(MAX)
    assert len(dumps(body).encode()) == MAX
    result = parse(publish(body=body))
    assert isinstance(result, Publish) and result.body == f'"{body}"'


def test_publish_body_one_over_max_is_too_large() -> None:
    body = _body_of_size(MAX) + "a"
    err = refused(publish(body=body))
    assert (err.code, err.id) == ("too_large", V4)


def test_publish_size_counts_compact_unescaped_utf8() -> None:
    # Sent with whitespace and \u escapes: 6 bytes per char on the wire,
    # 2 bytes per char in the compact encoding the limit applies to.
    body = "\u00e9" * 49
    text = raw_publish('  "' + "\\u00e9" * 49 + '"  ')
    result = parse_message(text, max_body_bytes=MAX)
    assert isinstance(result, Publish) and result.body == f'"{body}"'


@pytest.mark.parametrize(
    ("over", "code"),
    [
        ({"stream": "sys.devices", "key": 5}, "invalid"),
        ({"stream": "sys.devices", "body": _ABSENT}, "invalid"),
        ({"stream": "sys.devices", "body": "x" * MAX}, "forbidden"),
        ({"base_seq": -1, "body": "x" * MAX}, "invalid"),
    ],
)
def test_publish_check_order(over: dict[str, object], code: str) -> None:
    assert refused(publish(**over)).code == code


def test_publish_deep_body_beyond_encoder_limit_is_invalid() -> None:
    # orjson reads up to 1024 levels; encoding that deep may exceed the
    # stdlib fallback's recursion limit: a nack, never a crash.
    text = raw_publish("[" * 1000 + "]" * 1000)
    try:
        result = parse_message(text, max_body_bytes=10**6)
    except PublishRefused as err:
        assert err.code == "invalid"
    else:
        assert isinstance(result, Publish) and result.body == "[" * 1000 + "]" * 1000


def test_publish_body_nested_past_orjson_encoder_limit() -> None:
    body = "[" * 300 + "1" + "]" * 300
    text = raw_publish(body)
    result = parse_message(text, max_body_bytes=MAX * 10)
    assert isinstance(result, Publish) and result.body == body


def test_publish_big_integer_body_exact() -> None:
    big = 2**64 * 3 + 1
    text = raw_publish(f'{{"n":{big},"m":-{big}}}')
    result = parse_message(text, max_body_bytes=MAX)
    assert isinstance(result, Publish)
    assert result.body == f'{{"n":{big},"m":-{big}}}'


# --- protocol.md §3: ack ------------------------------------------------------


@pytest.mark.parametrize(("stream", "seq"), [("clipboard", 0), ("sys.devices", 42), ("a", 2**70)])
def test_ack_ok(stream: str, seq: int) -> None:
    assert parse({"type": "ack", "stream": stream, "seq": seq}) == Ack(stream, seq)


@pytest.mark.parametrize(
    ("msg", "reason"),
    [
        ({"type": "ack", "seq": 1}, "stream missing"),
        ({"type": "ack", "stream": "Bad", "seq": 1}, "stream invalid"),
        ({"type": "ack", "stream": "s"}, "seq missing"),
        ({"type": "ack", "stream": "s", "seq": -1}, "seq negative"),
        ({"type": "ack", "stream": "s", "seq": 1.0}, "seq float"),
        ({"type": "ack", "stream": "s", "seq": True}, "seq bool"),
        ({"type": "ack", "stream": "s", "seq": "1"}, "seq string"),
        ({"type": "ack", "stream": "s", "seq": None}, "seq null"),
    ],
)
def test_ack_bad_fields_are_non_fatal(msg: dict[str, object], reason: str) -> None:
    with pytest.raises(ProtocolError) as info:
        parse(msg)
    assert not isinstance(info.value, PublishRefused)
    assert (info.value.code, info.value.close_code) == ("invalid", None)


# --- protocol.md §4: ping -----------------------------------------------------


@pytest.mark.parametrize("ref", [None, 1, "abc", {"a": [1]}, 2**80])
def test_ping_ref(ref: object) -> None:
    assert parse({"type": "ping", "ref": ref}) == Ping(ref=ref)


def test_ping_without_ref() -> None:
    assert parse({"type": "ping"}) == Ping(ref=None)


# --- messages are frozen -------------------------------------------------------


def test_messages_are_frozen() -> None:
    msg = Ack("s", 1)
    with pytest.raises(AttributeError):
        msg.seq = 2  # type: ignore[misc]
