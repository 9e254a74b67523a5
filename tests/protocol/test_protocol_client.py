"""The device side of the handshake (protocol.md §2), played against the server's core."""

from __future__ import annotations

import pytest

from relaybox.protocol import Handshake, HandshakeState, loads
from relaybox.protocol.client import (
    FATAL_HANDSHAKE_ERRORS,
    ClientHandshake,
    ClientState,
    HandshakeFailed,
    Refused,
    SendAuth,
    ServerMismatch,
    Skipped,
    Welcomed,
    decode_frame,
)
from relaybox.protocol.messages import Auth, Hello
from tests.protocol.vectors import (
    CHALLENGE,
    CLIENT_NONCE,
    DEVICE,
    KEY,
    SERVER,
    SERVER_NONCE,
    SESSION,
    WELCOME,
    client,
    parse,
)


def test_both_sides_complete_the_handshake() -> None:
    """The client's frames are exactly what the server's state machine accepts, and the
    signature verifies against the device's public key."""
    server = Handshake(SERVER, SESSION, SERVER_NONCE)
    hs = client(server_id=SERVER)
    assert hs.state is ClientState.START and not hs.done
    hello = parse(hs.hello())
    assert hello == Hello(1, DEVICE, CLIENT_NONCE)
    assert hs.state is ClientState.AWAIT_CHALLENGE and hs.expecting == "challenge"
    server.receive(hello)
    event = hs.receive_text(server.challenge())
    assert isinstance(event, SendAuth) and event.session_id == SESSION
    assert hs.state is ClientState.AWAIT_WELCOME and hs.expecting == "welcome"
    auth = parse(event.frame)
    assert isinstance(auth, Auth)
    server.receive(auth)
    assert server.verify(bytes(KEY.verify_key))
    server.authenticated()
    assert server.state is HandshakeState.READY
    event = hs.receive(WELCOME)
    assert event == Welcomed(WELCOME)
    assert hs.state is ClientState.READY and hs.done and hs.welcome == WELCOME


def test_a_signing_function_signs_the_same_bytes_as_a_key() -> None:
    seen: list[bytes] = []

    def sign(message: bytes) -> bytes:
        seen.append(message)
        return KEY.sign(message).signature

    by_key, by_function = client(), ClientHandshake(DEVICE, sign, nonce=CLIENT_NONCE)
    for hs in (by_key, by_function):
        hs.hello()
    a, b = by_key.receive(CHALLENGE), by_function.receive(CHALLENGE)
    assert isinstance(a, SendAuth) and isinstance(b, SendAuth) and a.frame == b.frame
    assert seen[0].split(b"\n")[1:] == [s.encode() for s in (SERVER, SESSION, DEVICE,
                                                              CLIENT_NONCE, SERVER_NONCE)]


def test_every_handshake_has_a_fresh_nonce() -> None:
    nonces = {loads(ClientHandshake(DEVICE, KEY).hello())["nonce"] for _ in range(8)}
    assert len(nonces) == 8


def test_a_challenge_from_another_server_is_never_signed() -> None:
    signed: list[bytes] = []
    hs = ClientHandshake(DEVICE, lambda m: signed.append(m) or bytes(64),
                         server_id="0193aaaa-0000-7000-8000-0000000000ff")
    hs.hello()
    with pytest.raises(ServerMismatch) as info:
        hs.receive(CHALLENGE)
    assert info.value.got == SERVER and signed == []
    assert hs.state is ClientState.FAILED


@pytest.mark.parametrize("field", ["session_id", "server_id", "nonce"])
def test_a_malformed_challenge_fails(field: str) -> None:
    hs = client()
    hs.hello()
    with pytest.raises(HandshakeFailed, match="malformed challenge"):
        hs.receive({**CHALLENGE, field: 7})
    assert hs.state is ClientState.FAILED


@pytest.mark.parametrize("raw", [b'{"type":"challenge"}', "[1]", '{"type":1}', "{", "NaN"])
def test_a_frame_that_is_not_a_message_fails(raw: str | bytes) -> None:
    assert decode_frame(raw) is None
    hs = client()
    hs.hello()
    with pytest.raises(HandshakeFailed, match="malformed frame while waiting for challenge"):
        hs.receive_text(raw)


@pytest.mark.parametrize("code", sorted(FATAL_HANDSHAKE_ERRORS))
def test_a_fatal_error_ends_the_handshake(code: str) -> None:
    hs = client()
    hs.hello()
    hs.receive(CHALLENGE)
    frame = {"type": "error", "code": code, "message": "no", "ref": None}
    event = hs.receive(frame)
    assert event == Refused(code, "no", True, frame)
    assert hs.state is ClientState.FAILED and hs.done and hs.refusal == event


def test_another_error_leaves_it_waiting() -> None:
    hs = client()
    hs.hello()
    event = hs.receive({"type": "error", "code": "busy", "message": "later"})
    assert isinstance(event, Refused) and not event.fatal
    assert hs.state is ClientState.AWAIT_CHALLENGE


def test_unknown_messages_are_skipped_unless_strict() -> None:
    lenient, strict = client(), client(strict=True)
    for hs in (lenient, strict):
        hs.hello()
    assert lenient.receive({"type": "presence"}) == Skipped({"type": "presence"})
    assert lenient.receive(WELCOME) == Skipped(WELCOME)  # a welcome before the challenge
    assert isinstance(lenient.receive(CHALLENGE), SendAuth)
    with pytest.raises(HandshakeFailed, match="presence while waiting for challenge"):
        strict.receive({"type": "presence"})
    assert strict.state is ClientState.FAILED


def test_hello_once_and_nothing_received_before_it_or_after_the_end() -> None:
    hs = client()
    with pytest.raises(RuntimeError):
        hs.receive(CHALLENGE)
    hs.hello()
    with pytest.raises(RuntimeError):
        hs.hello()
    hs.receive(CHALLENGE)
    hs.receive(WELCOME)
    with pytest.raises(RuntimeError):
        hs.receive(WELCOME)
