"""Hypothesis strategies for hostile input: JSON values, JSON texts and gateway frames."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from hypothesis import strategies as st

from relaybox.protocol.encoding import b64url_encode

# Any character, lone surrogates, NUL and other control characters included.
any_char = st.characters(codec=None, blacklist_categories=())
any_text = st.text(any_char, max_size=24)
control_text = st.text(st.characters(max_codepoint=0x1F), min_size=1, max_size=4)
lone_surrogate = st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF)

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.sampled_from([0, -1, 2**63 - 1, 2**63, 2**64, -(2**63) - 1, 10**400, -(10**400)])
    | st.floats(allow_nan=False, allow_infinity=False)
    | any_text
    | control_text
    | st.sampled_from(["clipboard", "sys.devices", "sys.x", "a" * 64, "a" * 65, "", "A",
                      "\x00", "a\x00b", "a\n", "\ufeff", "\ud800", "a\udfffb"])
    | st.uuids(version=4).map(str)
    | st.uuids().map(lambda u: str(u).upper())
    | st.binary(max_size=70).map(b64url_encode)
)


def nested(depth: int, inner: Any = 1) -> Any:
    """``[[[…inner…]]]`` nested ``depth`` levels (built without recursion)."""
    value = inner
    for _ in range(depth):
        value = [value]
    return value


json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(any_text, inner, max_size=4),
    max_leaves=12,
) | st.integers(min_value=1, max_value=300).map(nested)

# Ids and names close enough to real ones that the parsers get past their first check.
uuid_like = (
    st.uuids(version=4).map(str)
    | st.builds(lambda u: str(u)[:14] + "7" + str(u)[15:], st.uuids(version=4))
    | st.uuids().map(str)
    | st.sampled_from(["", "not-a-uuid", "00000000-0000-0000-0000-000000000000"])
)
stream_like = st.from_regex(r"\A[a-z0-9][a-z0-9._-]{0,12}\Z") | st.sampled_from(
    ["clipboard", "sys.devices", "sys.x", "a" * 64, "a" * 65, "-a", "A", "a b", "a\n", ""])
seq_like = st.integers(min_value=-2, max_value=2**64) | st.sampled_from([10**30, True, 1.0])


@st.composite
def well_typed(draw: st.DrawFn, kind: str, device_ids: list[str]) -> dict[str, Any]:
    """A message of ``kind`` with fields of the right shape and random values."""
    if kind == "hello":
        return {"type": "hello", "protocol": draw(st.sampled_from([1, 1, 1, 0, 2, -1, 2**65])),
                "device_id": draw(st.sampled_from(device_ids) | uuid_like),
                "nonce": b64url_encode(draw(st.binary(min_size=30, max_size=34)))}
    if kind == "auth":
        return {"type": "auth",
                "signature": b64url_encode(draw(st.binary(min_size=63, max_size=65)))}
    if kind == "publish":
        msg: dict[str, Any] = {"type": "publish", "id": draw(uuid_like),
                               "stream": draw(stream_like), "body": draw(json_values)}
        if draw(st.booleans()):
            msg["key"] = draw(st.none() | any_text | st.text(min_size=60, max_size=70))
        if draw(st.booleans()):
            msg["base_seq"] = draw(st.none() | seq_like)
        if draw(st.integers(0, 15)) == 0:
            msg["body"] = "x" * 66_000  # over max_body_bytes, under max_frame_bytes
        return msg
    if kind == "ack":
        return {"type": "ack", "stream": draw(stream_like), "seq": draw(seq_like)}
    if kind == "ping":
        return {"type": "ping", "ref": draw(json_values)}
    return {"type": kind, **draw(st.dictionaries(any_text, json_values, max_size=3))}


# Every client type of protocol.md, the server's own types sent the wrong way, and others.
MESSAGE_TYPES = ["hello", "auth", "publish", "ack", "ping", "welcome", "challenge", "event",
                 "synced", "gap", "nack", "pong", "error", "presence", "subscribe", "",
                 "PING", "ping\x00", "\ud800"]
FIELDS = ["type", "protocol", "device_id", "nonce", "signature", "id", "stream", "body",
          "key", "base_seq", "seq", "ref"]


@st.composite
def message(draw: st.DrawFn, device_ids: list[str]) -> Any:
    """A message object: well typed, then perhaps with fields dropped or given any value."""
    msg = draw(well_typed(draw(st.sampled_from(MESSAGE_TYPES)), device_ids))
    for name in draw(st.lists(st.sampled_from(FIELDS), max_size=2)):
        if draw(st.booleans()):
            msg.pop(name, None)
        else:
            msg[name] = draw(json_values)
    if draw(st.integers(0, 20)) == 0:
        return draw(json_values)  # not an object at all
    return msg


@dataclass(frozen=True)
class Frame:
    """One thing the client does: send a text or binary frame, fragments, or a ping."""

    kind: str  # "text", "text-bytes" (raw bytes in a text frame), "binary", "fragments",
    #            "ws-ping", "oversized" (data: its size)
    data: Any


def encode(obj: Any, ascii_only: bool, spaced: bool) -> Frame:
    """JSON text of ``obj``; lone surrogates are escaped (``\\ud800``) when ``ascii_only``,
    else they make the text invalid UTF-8 and go out as raw bytes in a text frame."""
    try:
        text = json.dumps(obj, ensure_ascii=ascii_only,
                          separators=(", ", ": ") if spaced else (",", ":"))
    except (RecursionError, ValueError):
        return Frame("text", "[" * 5000)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return Frame("text-bytes", text.encode("utf-8", "surrogatepass"))
    return Frame("text", text)


# Texts that are not JSON, or JSON that relaybox refuses (protocol.md §1).
BAD_TEXTS = [
    "", " ", "{", "}", "[]", "null", "1", '"ping"', "{}", '{"type":1}', '{"type":null}',
    '{"type":"ping","ref":NaN}', '{"type":"ping","ref":Infinity}',
    '{"type":"ping","ref":-Infinity}', '{"type":"ping","ref":1e400}',
    '{"type":"ping","ref":-1e400}', '{"type":"ping","ref":1' + "0" * 400 + "}",
    '{"type":"ping","ref":"\\ud800"}', '{"type":"ping","ref":"\\udfff\\ud800"}',
    '{"type":"ping","ref":"\\ud800","n":1234567890123456789012}',
    '{"type":"ping","ref":"a\x00b"}', '{"type":"ping","ref":"\x01\x1f"}',
    '{"type":"ping","ref":"\\u0000"}', '{"type":"ping"}\x00', '\x00{"type":"ping"}',
    '\ufeff{"type":"ping"}', '{"type":"ping","type":"hello"}', '{"type":"ping"} {}',
    '{"type":"ping",}', "{'type':'ping'}", '{"type":"ping","ref":01}',
    '{"type":"ping","ref":.5}', '{"type":"ping","ref":1.}', '{"type":"ping","ref":+1}',
    '{"type":"publish","body":' + "[" * 2000 + "]" * 2000 + "}",
    '{"type":"ping","ref":' + '{"a":' * 1100 + "1" + "}" * 1100 + "}",
    '{"type":"ping","ref":' + "[" * 100 + "12345678901234567890" + "]" * 100 + "}",
]


@st.composite
def frame(draw: st.DrawFn, device_ids: list[str]) -> Frame:
    """One client action, weighted towards JSON messages that look valid."""
    choice = draw(st.integers(0, 96))
    if choice < 60:
        return encode(draw(message(device_ids)), draw(st.booleans()), draw(st.booleans()))
    if choice < 72:
        return Frame("text", draw(st.sampled_from(BAD_TEXTS)))
    if choice < 78:
        return Frame("text", draw(st.text(any_char.filter(lambda c: not 0xD800 <= ord(c) <= 0xDFFF),
                                          max_size=40)))
    if choice < 83:
        return Frame("text-bytes", draw(st.binary(max_size=40)))
    if choice < 89:
        return Frame("binary", draw(st.sampled_from([b"", b"{}"]) | st.binary(max_size=40)
                                    | st.just(b'{"type":"ping","ref":1}')))
    if choice < 94:
        text = encode(draw(message(device_ids)), True, False).data
        if not isinstance(text, str) or len(text) < 2:
            return Frame("text", "")
        cut = draw(st.integers(1, len(text) - 1))
        return Frame("fragments", [text[:cut], text[cut:]])
    return Frame("ws-ping", draw(st.binary(max_size=20)))


# A text frame over max_frame_bytes (128 KiB): the WebSocket layer closes with 1009.
OVERSIZED = Frame("oversized", 140_000)


def oversized_text(size: int) -> str:
    return '{"type":"ping","ref":"' + "x" * (size - 22) + '"}'


@st.composite
def frames(draw: st.DrawFn, device_ids: list[str], max_size: int = 6) -> list[Frame]:
    """A sequence of frames, now and then ending with an oversized one.

    Only ever last, for now: anything sent after an oversized frame can cost the client
    the 1009 close frame (test_reproducers.py, test_frames_after_an_oversized_frame_keep_
    the_1009); once that is fixed, insert it anywhere.
    """
    out = draw(st.lists(frame(device_ids), min_size=1, max_size=max_size))
    if draw(st.integers(0, 14)) == 0:
        out.append(OVERSIZED)
    return out
