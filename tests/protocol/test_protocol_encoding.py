"""Tests for wire encodings: base64url, UUIDs, timestamps, stream names, exact JSON."""

from __future__ import annotations

import json
import re

import pytest

from relaybox.protocol import encoding
from relaybox.protocol.encoding import (
    b64url_decode,
    b64url_encode,
    dumps,
    dumps_bytes,
    format_ts,
    is_system_stream,
    is_valid_stream,
    loads,
    now_ms,
    parse_uuid,
    random_nonce,
    uuid4,
    uuid7,
)

NONCE_32 = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8"  # bytes(range(32))

# --- base64url ----------------------------------------------------------------


@pytest.mark.parametrize("length", [0, 1, 2, 3, 4, 16, 31, 32, 33, 64])
def test_b64url_round_trip(length: int) -> None:
    data = bytes((i * 37 + 250) % 256 for i in range(length))
    text = b64url_encode(data)
    assert "=" not in text
    assert b64url_decode(text, length) == data


def test_b64url_uses_url_alphabet() -> None:
    assert b64url_encode(b"\xfb\xff\xbf") == "-_-_"
    assert b64url_decode("-_-_", 3) == b"\xfb\xff\xbf"


def test_b64url_known_value() -> None:
    assert b64url_decode(NONCE_32, 32) == bytes(range(32))


@pytest.mark.parametrize(
    ("text", "length", "reason"),
    [
        (NONCE_32 + "=", 32, "padding"),
        (b64url_encode(b"ab") + "=", 2, "padding on a short value"),
        (NONCE_32[:-1], 32, "too short (31 bytes)"),
        (NONCE_32 + "AA", 32, "too long (33 bytes)"),
        (NONCE_32, 31, "decodes to more than asked"),
        (NONCE_32[:-1] + " ", 32, "whitespace"),
        (" " + NONCE_32[1:], 32, "leading whitespace"),
        (NONCE_32[:-1] + "\n", 32, "newline"),
        (NONCE_32[:-1] + "+", 32, "standard alphabet +"),
        (NONCE_32[:-1] + "/", 32, "standard alphabet /"),
        (NONCE_32[:-1] + "!", 32, "non-alphabet char"),
        (NONCE_32[:-1] + "\u0661", 32, "unicode digit"),
        (NONCE_32[:-1] + "h", 32, "non-zero trailing bits (non-canonical)"),
        ("AB", 1, "non-zero trailing bits on one byte"),
        ("", 1, "empty"),
    ],
)
def test_b64url_decode_rejects(text: str, length: int, reason: str) -> None:
    with pytest.raises(ValueError):
        b64url_decode(text, length)


@pytest.mark.parametrize("value", [None, 5, b"AAAA"])
def test_b64url_decode_rejects_non_str(value: object) -> None:
    with pytest.raises(ValueError):
        b64url_decode(value, 3)  # type: ignore[arg-type]


def test_random_nonce_is_32_fresh_bytes() -> None:
    a, b = random_nonce(), random_nonce()
    assert len(b64url_decode(a, 32)) == 32
    assert a != b


# --- UUIDs --------------------------------------------------------------------

V4 = "3f2b8c1e-9a4d-4e6f-8b2a-1c3d5e7f9a0b"
V7 = "01937a4c-5b2e-7c3d-9e4f-a5b6c7d8e9f0"
V1 = "c232ab00-9414-11ec-b3c8-9f6bdeced846"


@pytest.mark.parametrize("value", [V4, V7, V1, "00000000-0000-0000-8000-000000000000"])
def test_parse_uuid_accepts_any_version(value: str) -> None:
    assert parse_uuid(value) == value


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (V4.upper(), "upper case"),
        (V4[:-1] + "B", "one upper-case digit"),
        (V4.replace("-", ""), "no dashes"),
        ("{" + V4 + "}", "braces"),
        ("urn:uuid:" + V4, "urn prefix"),
        (V4 + "\n", "trailing newline"),
        (" " + V4, "leading space"),
        (V4[:-1], "too short"),
        (V4 + "0", "too long"),
        ("3f2b8c1e-9a4d-4e6f-cb2a-1c3d5e7f9a0b", "variant 11 (Microsoft)"),
        ("3f2b8c1e-9a4d-4e6f-7b2a-1c3d5e7f9a0b", "variant 0 (NCS)"),
        ("00000000-0000-0000-0000-000000000000", "nil UUID"),
        ("ffffffff-ffff-ffff-ffff-ffffffffffff", "max UUID"),
        ("3f2b8c1e-9a4d-4e6f-8b2a-1c3d5e7f9a0g", "non-hex digit"),
        ("3f2b8c1e9-a4d-4e6f-8b2a-1c3d5e7f9a0b", "dash misplaced"),
        (None, "None"),
        (12345, "int"),
        (V4.encode(), "bytes"),
    ],
)
def test_parse_uuid_rejects(value: object, reason: str) -> None:
    with pytest.raises(ValueError):
        parse_uuid(value)


@pytest.mark.parametrize(
    ("value", "ok"),
    [(V4, True), (V7, True), (V1, False), ("3f2b8c1e-9a4d-3e6f-8b2a-1c3d5e7f9a0b", False)],
)
def test_parse_uuid_versions(value: str, ok: bool) -> None:
    versions = frozenset({4, 7})
    if ok:
        assert parse_uuid(value, versions) == value
    else:
        with pytest.raises(ValueError):
            parse_uuid(value, versions)


def test_uuid7_layout_and_time() -> None:
    before = now_ms()
    value = uuid7()
    after = now_ms()
    assert parse_uuid(value, frozenset({7})) == value
    ms = int(value.replace("-", "")[:12], 16)
    assert before <= ms <= after


def test_uuid7_is_time_ordered_and_unique() -> None:
    values = [uuid7() for _ in range(200)]
    assert len(set(values)) == 200
    prefixes = [v[:13] for v in values]  # 48-bit milliseconds
    assert prefixes == sorted(prefixes)


def test_uuid4_layout() -> None:
    values = {uuid4() for _ in range(50)}
    assert len(values) == 50
    for value in values:
        assert parse_uuid(value, frozenset({4})) == value


# --- time ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ms", "text"),
    [
        (0, "1970-01-01T00:00:00.000Z"),
        (1, "1970-01-01T00:00:00.001Z"),
        (-1, "1969-12-31T23:59:59.999Z"),
        (1795625572123, "2026-11-25T16:52:52.123Z"),
        (1709251199999, "2024-02-29T23:59:59.999Z"),
        (1709251200000, "2024-03-01T00:00:00.000Z"),
    ],
)
def test_format_ts(ms: int, text: str) -> None:
    assert format_ts(ms) == text


def test_format_ts_now_shape() -> None:
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", format_ts(now_ms()))


# --- stream names -------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["a", "0", "clipboard", "a.b_c-d", "9lives", "sys.devices", "a" * 64, "a-"]
)
def test_valid_stream_names(name: str) -> None:
    assert is_valid_stream(name)


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("", "empty"),
        ("a" * 65, "65 characters"),
        ("Clip", "upper case"),
        (".a", "starts with dot"),
        ("-a", "starts with dash"),
        ("_a", "starts with underscore"),
        ("a b", "space"),
        ("a/b", "slash"),
        ("caf\u00e9", "non-ASCII"),
        ("a\n", "trailing newline"),
        (None, "None"),
        (7, "int"),
    ],
)
def test_invalid_stream_names(name: object, reason: str) -> None:
    assert not is_valid_stream(name)


@pytest.mark.parametrize(
    ("name", "system"), [("sys.devices", True), ("sys.x", True), ("sys", False), ("system", False)]
)
def test_is_system_stream(name: str, system: bool) -> None:
    assert is_system_stream(name) is system


# --- JSON ---------------------------------------------------------------------

BIG_INTS = [
    2**64 - 1,  # largest orjson keeps as int
    2**64,
    -(2**63),
    -(2**63) - 1,
    10**19,
    123456789012345678901234567890,
    -(10**40),
]


@pytest.mark.parametrize("value", BIG_INTS)
@pytest.mark.parametrize("as_bytes", [False, True])
def test_loads_big_integers_exact(value: int, as_bytes: bool) -> None:
    text = f'{{"n":{value},"list":[1,{value}],"s":"x"}}'
    data: str | bytes = text.encode() if as_bytes else text
    obj = loads(data)
    assert obj == {"n": value, "list": [1, value], "s": "x"}
    assert isinstance(obj, dict) and type(obj["n"]) is int


@pytest.mark.parametrize("value", BIG_INTS)
def test_dumps_big_integers_exact(value: int) -> None:
    assert dumps({"n": value}) == f'{{"n":{value}}}'
    assert dumps_bytes([value]) == f"[{value}]".encode()
    assert loads(dumps({"n": value})) == {"n": value}


@pytest.mark.parametrize("text", ["NaN", "Infinity", "-Infinity", "1e400", "-1e400"])
@pytest.mark.parametrize("slow_path", [False, True])
def test_loads_rejects_non_finite(text: str, slow_path: bool) -> None:
    # A 19-digit integer alongside forces the exact (stdlib) parser.
    doc = f"[{text},{10**20}]" if slow_path else f"[{text}]"
    with pytest.raises(ValueError):
        loads(doc)


@pytest.mark.parametrize("slow_path", [False, True])
def test_loads_rejects_lone_surrogate(slow_path: bool) -> None:
    doc = f'["\\ud800",{10**20}]' if slow_path else '["\\ud800"]'
    with pytest.raises(ValueError):
        loads(doc)


@pytest.mark.parametrize("slow_path", [False, True])
def test_loads_keeps_surrogate_pairs(slow_path: bool) -> None:
    doc = f'["\\ud83d\\ude00",{10**20}]' if slow_path else '["\\ud83d\\ude00"]'
    assert loads(doc)[0] == "\U0001f600"  # type: ignore[index]


@pytest.mark.parametrize("slow_path", [False, True])
def test_loads_rejects_invalid_utf8(slow_path: bool) -> None:
    doc = b'["\xff"' + (b",100000000000000000000]" if slow_path else b"]")
    with pytest.raises(ValueError):
        loads(doc)


def test_loads_slow_path_rejects_utf16_bytes() -> None:
    with pytest.raises(ValueError):
        loads("[100000000000000000000]".encode("utf-16"))


def test_loads_slow_path_deep_nesting_is_value_error() -> None:
    with pytest.raises(ValueError):
        loads("[" * 5000 + str(10**20) + "]" * 5000)


def test_loads_too_many_digits_is_value_error() -> None:
    with pytest.raises(ValueError):
        loads("1" * 5000)


def test_loads_long_digit_run_in_string_is_harmless() -> None:
    assert loads('{"s":"12345678901234567890","f":0.5}') == {"s": "12345678901234567890", "f": 0.5}


def test_loads_fast_path_is_orjson(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(text: str) -> object:
        raise AssertionError("slow path used")

    monkeypatch.setattr(encoding, "_exact_loads", boom)
    assert loads('{"a":[1,2.5,"\u00e9",null,true]}') == {"a": [1, 2.5, "\u00e9", None, True]}


def test_dumps_compact_unescaped_ordered() -> None:
    obj = {"z": 1, "a": ["\u00e9\u4e2d\U0001f600", None, True, 1.5], "m": {"k": '"\\\n'}}
    text = dumps(obj)
    assert text == '{"z":1,"a":["\u00e9\u4e2d\U0001f600",null,true,1.5],"m":{"k":"\\"\\\\\\n"}}'
    assert text == json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def test_dumps_deep_nesting_falls_back() -> None:
    deep: object = 1
    for _ in range(400):  # beyond orjson's encoder depth limit
        deep = [deep]
    assert dumps(deep) == "[" * 400 + "1" + "]" * 400


def test_dumps_rejects_lone_surrogate_and_unsupported() -> None:
    with pytest.raises(ValueError):
        dumps(["\ud800", 2**70])
    with pytest.raises(TypeError):
        dumps({1, 2})



def test_no_path_accepts_nesting_past_orjsons_limit() -> None:
    """The exact (big-number) path refuses what orjson refuses, on every Python: stdlib
    json's own limit is the recursion limit, deeper on 3.12+."""
    depth = 1025
    for inner in ("1", str(10**20)):
        with pytest.raises(ValueError):
            loads("[" * depth + inner + "]" * depth)
    assert loads("[" * 1024 + "1" + "]" * 1024) is not None  # the fast path's own limit
