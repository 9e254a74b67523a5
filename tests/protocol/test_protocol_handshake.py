"""Tests for the handshake state machine, signing strings and Ed25519 checks."""

from __future__ import annotations

import pytest
from nacl.signing import SigningKey

from relaybox.protocol import (
    CLOSE_REASONS,
    GATEWAY_CONTEXT,
    TOKEN_CONTEXT,
    Ack,
    Auth,
    CloseCode,
    Handshake,
    HandshakeState,
    Hello,
    Message,
    Ping,
    ProtocolError,
    Publish,
    PublishRefused,
    Unknown,
    b64url_encode,
    gateway_signing_bytes,
    loads,
    parse_public_key,
    token_signing_bytes,
    verify_signature,
)
from tests.protocol.vectors import CLIENT_NONCE, DEVICE, KEY, SERVER, SERVER_NONCE, SESSION

PUBLIC = bytes(KEY.verify_key)

HELLO = Hello(1, DEVICE, CLIENT_NONCE)
AUTH = Auth(bytes(64))
PUBLISH = Publish("3f2b8c1e-9a4d-4e6f-8b2a-1c3d5e7f9a0b", "s", "1")
OTHERS: list[Message] = [PUBLISH, Ack("s", 1), Ping(None), Unknown("x")]


# --- signing strings ----------------------------------------------------------


def test_gateway_signing_bytes_exact() -> None:
    data = gateway_signing_bytes(SERVER, SESSION, DEVICE, CLIENT_NONCE, SERVER_NONCE)
    expected = (
        f"relaybox-gateway-v1\n{SERVER}\n{SESSION}\n{DEVICE}\n{CLIENT_NONCE}\n{SERVER_NONCE}"
    ).encode()
    assert data == expected
    assert GATEWAY_CONTEXT == "relaybox-gateway-v1"
    assert data.count(b"\n") == 5 and not data.endswith(b"\n")


def test_token_signing_bytes_exact() -> None:
    data = token_signing_bytes(SERVER, DEVICE, 1795625572, "bm9uY2Utbm9uY2U")
    assert data == f"relaybox-token-v1\n{SERVER}\n{DEVICE}\n1795625572\nbm9uY2Utbm9uY2U".encode()
    assert TOKEN_CONTEXT == "relaybox-token-v1"


# --- signatures ---------------------------------------------------------------

MESSAGE = gateway_signing_bytes(SERVER, SESSION, DEVICE, CLIENT_NONCE, SERVER_NONCE)
SIGNATURE = KEY.sign(MESSAGE).signature


def _flip(data: bytes, bit: int) -> bytes:
    out = bytearray(data)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


def test_real_signature_verifies() -> None:
    assert verify_signature(PUBLIC, MESSAGE, SIGNATURE)


@pytest.mark.parametrize("bit", [0, 7, 255, 256, 511])
def test_flipped_signature_bit_fails(bit: int) -> None:
    assert not verify_signature(PUBLIC, MESSAGE, _flip(SIGNATURE, bit))


@pytest.mark.parametrize("bit", [0, 100, len(MESSAGE) * 8 - 1])
def test_flipped_message_bit_fails(bit: int) -> None:
    assert not verify_signature(PUBLIC, _flip(MESSAGE, bit), SIGNATURE)


def test_other_key_fails() -> None:
    other = bytes(SigningKey(bytes(32)).verify_key)
    assert not verify_signature(other, MESSAGE, SIGNATURE)


@pytest.mark.parametrize(
    ("public_key", "signature", "reason"),
    [
        (PUBLIC[:31], SIGNATURE, "short key"),
        (PUBLIC + b"\0", SIGNATURE, "long key"),
        (b"", SIGNATURE, "empty key"),
        (PUBLIC, SIGNATURE[:63], "short signature"),
        (PUBLIC, SIGNATURE + b"\0", "long signature"),
        (PUBLIC, b"", "empty signature"),
        (bytes(32), SIGNATURE, "all-zero key"),
        (PUBLIC, None, "None signature"),
        ("not bytes", SIGNATURE, "str key"),
    ],
)
def test_bad_input_is_false_not_raise(public_key: object, signature: object, reason: str) -> None:
    assert verify_signature(public_key, MESSAGE, signature) is False  # type: ignore[arg-type]


def test_parse_public_key_ok() -> None:
    assert parse_public_key(b64url_encode(PUBLIC)) == PUBLIC


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (b64url_encode(PUBLIC) + "=", "padded"),
        (b64url_encode(PUBLIC[:31]), "31 bytes"),
        (b64url_encode(PUBLIC + b"\0"), "33 bytes"),
        (b64url_encode(bytes(32)), "all zeros (small order)"),
        (b64url_encode(b"\x01" + bytes(31)), "identity point (small order)"),
        (b64url_encode(b"\x02" + bytes(31)), "not on the curve"),
        ("", "empty"),
    ],
)
def test_parse_public_key_rejects(text: str, reason: str) -> None:
    with pytest.raises(ValueError):
        parse_public_key(text)


# --- state machine ------------------------------------------------------------


def new() -> Handshake:
    return Handshake(SERVER, SESSION, SERVER_NONCE)


def violation(hs: Handshake, msg: Message) -> None:
    with pytest.raises(ProtocolError) as info:
        hs.receive(msg)
    assert not isinstance(info.value, PublishRefused)
    assert (info.value.code, info.value.close_code) == ("bad_request", CloseCode.BAD_REQUEST)
    assert hs.state is HandshakeState.CLOSED


def test_full_handshake() -> None:
    hs = new()
    assert hs.state is HandshakeState.AWAIT_HELLO
    hs.receive(HELLO)
    assert hs.state is HandshakeState.AWAIT_AUTH
    assert hs.hello == HELLO and hs.device_id == DEVICE
    assert loads(hs.challenge()) == {
        "type": "challenge",
        "session_id": SESSION,
        "server_id": SERVER,
        "nonce": SERVER_NONCE,
    }
    assert hs.signing_bytes() == MESSAGE
    hs.receive(Auth(SIGNATURE))
    assert hs.state is HandshakeState.AWAIT_AUTH
    assert hs.verify(PUBLIC)
    hs.authenticated()
    assert hs.state is HandshakeState.READY
    for msg in OTHERS:
        hs.receive(msg)
    assert hs.state is HandshakeState.READY
    hs.close()
    assert hs.state is HandshakeState.CLOSED


def test_verify_false_for_wrong_key_and_before_auth() -> None:
    hs = new()
    hs.receive(HELLO)
    assert not hs.verify(PUBLIC)  # no auth yet
    hs.receive(Auth(_flip(SIGNATURE, 3)))
    assert not hs.verify(PUBLIC)


@pytest.mark.parametrize("msg", [AUTH, *OTHERS])
def test_await_hello_allows_only_hello(msg: Message) -> None:
    violation(new(), msg)


@pytest.mark.parametrize("msg", [HELLO, *OTHERS])
def test_await_auth_allows_only_auth(msg: Message) -> None:
    hs = new()
    hs.receive(HELLO)
    violation(hs, msg)


def test_second_auth_is_violation() -> None:
    hs = new()
    hs.receive(HELLO)
    hs.receive(AUTH)
    violation(hs, AUTH)


@pytest.mark.parametrize("msg", [HELLO, AUTH])
def test_ready_rejects_handshake_messages(msg: Message) -> None:
    hs = new()
    hs.receive(HELLO)
    hs.receive(AUTH)
    hs.authenticated()
    violation(hs, msg)


@pytest.mark.parametrize("msg", [HELLO, AUTH, *OTHERS])
def test_closed_rejects_everything(msg: Message) -> None:
    hs = new()
    hs.close()
    violation(hs, msg)


def test_violation_closes_the_machine() -> None:
    hs = new()
    violation(hs, Ping(None))
    violation(hs, HELLO)  # no second chance


def test_signing_bytes_needs_hello() -> None:
    with pytest.raises(RuntimeError):
        new().signing_bytes()


@pytest.mark.parametrize("steps", [0, 1])
def test_authenticated_needs_hello_and_auth(steps: int) -> None:
    hs = new()
    if steps:
        hs.receive(HELLO)
    with pytest.raises(RuntimeError):
        hs.authenticated()


def test_close_is_idempotent() -> None:
    hs = new()
    hs.close()
    hs.close()
    assert hs.state is HandshakeState.CLOSED


# --- close codes --------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "value", "reason"),
    [
        (CloseCode.NORMAL, 1000, "normal"),
        (CloseCode.GOING_AWAY, 1001, "going_away"),
        (CloseCode.TOO_BIG, 1009, "too_big"),
        (CloseCode.INTERNAL, 1011, "internal"),
        (CloseCode.BAD_REQUEST, 4400, "bad_request"),
        (CloseCode.AUTH_FAILED, 4401, "auth_failed"),
        (CloseCode.REVOKED, 4403, "revoked"),
        (CloseCode.HANDSHAKE_TIMEOUT, 4408, "handshake_timeout"),
        (CloseCode.SESSION_REPLACED, 4409, "session_replaced"),
        (CloseCode.HEARTBEAT_TIMEOUT, 4410, "heartbeat_timeout"),
        (CloseCode.RATE_LIMITED, 4429, "rate_limited"),
    ],
)
def test_close_codes(code: CloseCode, value: int, reason: str) -> None:
    assert code == value
    assert CLOSE_REASONS[value] == reason
    assert reason == code.name.lower()


def test_close_reasons_cover_every_code() -> None:
    assert set(CLOSE_REASONS) == {int(c) for c in CloseCode}


def test_error_attributes() -> None:
    err = ProtocolError("bad_request", "boom")
    assert (err.code, err.message, err.close_code, err.fatal) == (
        "bad_request",
        "boom",
        4400,
        True,
    )
    assert str(err) == "boom"
    nack = PublishRefused("too_large", "big", "id-1")
    assert (nack.code, nack.id, nack.close_code, nack.fatal) == ("too_large", "id-1", None, False)
    assert isinstance(nack, ProtocolError)
