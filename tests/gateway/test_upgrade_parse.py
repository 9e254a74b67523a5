"""The gateway's own recognition of a plain upgrade request (server/upgrade.py).

``fast_accept`` may only accept what the `websockets` library (Sanic's handshake) accepts,
with the same Sec-WebSocket-Accept; everything else is left to the library. Checked here
against the library itself, on hand-picked requests and on generated ones.
"""

from __future__ import annotations

import base64

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st
from websockets.http11 import Request
from websockets.server import ServerProtocol

from relaybox.server.upgrade import fast_accept

KEY = "dGhlIHNhbXBsZSBub25jZQ=="
STANDARD = [("Host", "127.0.0.1:8080"), ("Upgrade", "websocket"),
            ("Connection", "Upgrade"), ("Sec-WebSocket-Key", KEY),
            ("Sec-WebSocket-Version", "13")]


def build(headers: list[tuple[str, str]], line: str = "GET /api/v1/gateway HTTP/1.1",
          sep: str = ": ") -> bytes:
    head = line + "\r\n" + "".join(f"{k}{sep}{v}\r\n" for k, v in headers) + "\r\n"
    return head.encode("latin-1")


def library_accept(data: bytes) -> str | None:
    """What websockets answers (as Sanic's handshake would): the accept key on a 101."""
    proto = ServerProtocol()
    proto.receive_data(data)
    events = proto.events_received()
    if len(events) != 1 or not isinstance(events[0], Request):
        return None
    response = proto.accept(events[0])
    if response.status_code != 101:
        return None
    return response.headers["Sec-WebSocket-Accept"]


def test_the_usual_request_is_recognised_with_the_rfc_accept_key() -> None:
    data = build(STANDARD)
    assert fast_accept(data) == library_accept(data) == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


@pytest.mark.parametrize("data", [
    build(STANDARD, "GET /api/v1/gateway?client=phone&v=1 HTTP/1.1"),
    build([(k.lower(), v) for k, v in STANDARD]),
    build([(k, v.upper() if k == "Upgrade" else v) for k, v in STANDARD]),
    build([*STANDARD[:2], ("Connection", "keep-alive, Upgrade"), *STANDARD[3:]]),
    build(STANDARD, sep=":"),
    build([*STANDARD, ("Sec-WebSocket-Extensions", "permessage-deflate; client_max_window_bits"),
           ("Origin", "https://example.org"), ("User-Agent", "relaybox-test/1")]),
], ids=["query", "lower-case-names", "upper-case-upgrade", "connection-list", "no-space",
        "browser-headers"])
def test_common_variants_are_recognised(data: bytes) -> None:
    assert fast_accept(data) is not None
    assert fast_accept(data) == library_accept(data)


@pytest.mark.parametrize("data", [
    build(STANDARD, "GET /api/v1/gateway HTTP/1.0"),
    build(STANDARD, "GET /api/v1/gatewayx HTTP/1.1"),
    build(STANDARD, "GET /api/v1/gateway/ HTTP/1.1"),
    build(STANDARD, "POST /api/v1/gateway HTTP/1.1"),
    build(STANDARD)[:-2],
    build(STANDARD) + b"\x81\x80abcd",
    build([*STANDARD, ("Sec-WebSocket-Key", KEY)]),
    build([*STANDARD, ("Origin", "a"), ("Origin", "b")]),
    build([*STANDARD, ("Content-Length", "0")]),
    build([*STANDARD, ("Transfer-Encoding", "chunked")]),
    build([*STANDARD, ("Sec-WebSocket-Protocol", "chat")]),
    build([(k, "12" if k == "Sec-WebSocket-Version" else v) for k, v in STANDARD]),
    build([(k, "c2hvcnQ=" if k == "Sec-WebSocket-Key" else v) for k, v in STANDARD]),
    build([(k, "websocket, h2c" if k == "Upgrade" else v) for k, v in STANDARD]),
    build([(k, "keep-alive" if k == "Connection" else v) for k, v in STANDARD]),
    build([*STANDARD, ("X-Folded", "a\r\n b")]),
    build([*STANDARD, ("X-Latin", "caf\xe9")]),
    b"\x00" * 64,
], ids=["http-1.0", "other-path", "trailing-slash", "post", "incomplete", "pipelined",
        "two-keys", "two-origins", "content-length", "transfer-encoding", "subprotocol",
        "version-12", "short-key", "two-upgrades", "no-upgrade-option", "folded",
        "non-ascii", "binary"])
def test_anything_else_is_left_to_the_library(data: bytes) -> None:
    assert fast_accept(data) is None


_names = st.sampled_from(["Host", "Upgrade", "upgrade", "Connection", "CONNECTION",
                          "Sec-WebSocket-Key", "Sec-WebSocket-Version", "Origin",
                          "Sec-WebSocket-Extensions", "Sec-WebSocket-Protocol",
                          "Content-Length", "Transfer-Encoding", "X-Any", "Bad Name", ""])
_values = st.one_of(
    st.sampled_from(["websocket", "WebSocket", "websocket, h2c", "Upgrade", "upgrade",
                     "keep-alive, Upgrade", "keep-alive,, Upgrade", "13", "12", " 13 ",
                     KEY, KEY[:-1], "0", "chunked", "chat", ""]),
    st.binary(min_size=16, max_size=16).map(lambda b: base64.b64encode(b).decode()),
    st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=255), max_size=12),
)
_lines = st.sampled_from(["GET /api/v1/gateway HTTP/1.1"] * 6 + [
                          "GET /api/v1/gateway?x=1 HTTP/1.1",
                          "GET /api/v1/gateway HTTP/1.0", "GET  /api/v1/gateway HTTP/1.1",
                          "GET /api/v1/gateway?a b HTTP/1.1", "get /api/v1/gateway HTTP/1.1"])


@settings(max_examples=2000, deadline=None)
@given(line=_lines, drop=st.sets(st.integers(0, len(STANDARD) - 1), max_size=1),
       changes=st.dictionaries(st.integers(1, len(STANDARD) - 1), _values, max_size=1),
       extra=st.one_of(st.just([]), st.lists(st.tuples(_names, _values), max_size=2)),
       sep=st.sampled_from([": ", ":", ":\t", " : ", ":  "]), data=st.data())
def test_whatever_is_recognised_the_library_accepts_alike(
        line: str, drop: set[int], changes: dict[int, str], extra: list[tuple[str, str]],
        sep: str, data: st.DataObject) -> None:
    """Near misses of the usual request: one header dropped or changed, a few added,
    other orders, separators and request lines."""
    base = [(k, changes.get(i, v)) for i, (k, v) in enumerate(STANDARD) if i not in drop]
    headers = data.draw(st.permutations(base + extra))
    request = build(headers, line, sep)
    ours = fast_accept(request)
    event("recognised" if ours is not None else "left to the library")
    if ours is not None:
        assert library_accept(request) == ours


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_are_refused_or_agree_with_the_library(data: bytes) -> None:
    for request in (data, b"GET /api/v1/gateway HTTP/1.1\r\n" + data):
        ours = fast_accept(request)
        if ours is not None:
            assert library_accept(request) == ours
