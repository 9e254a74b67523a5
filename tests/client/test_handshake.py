"""The SDK's handshake: the protocol core driven over a scripted transport (no sockets)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from relaybox.client.errors import (
    FATAL_REFUSALS,
    AuthFailedError,
    ProtocolVersionError,
    RevokedError,
    ServerMismatchError,
)
from relaybox.client.handshake import authenticate, run_handshake
from relaybox.client.identity import Identity
from relaybox.protocol import Handshake, loads, welcome_frame
from relaybox.protocol.client import (
    FATAL_HANDSHAKE_ERRORS,
    HandshakeFailed,
    HandshakeRefused,
    Refused,
)
from relaybox.protocol.encoding import dumps
from tests.protocol.vectors import (
    DEVICE,
    KEY,
    SERVER,
    SERVER_NONCE,
    SESSION,
    USER,
    WELCOME,
    client,
    parse,
)


def test_the_sdk_knows_every_fatal_refusal() -> None:
    assert set(FATAL_REFUSALS) == FATAL_HANDSHAKE_ERRORS


def drive(answers: list[Any], **kw: Any) -> tuple[list[str], Any]:
    """run_handshake over a transport that answers with ``answers`` in turn."""
    sent: list[str] = []
    script = iter(answers)

    async def recv() -> str | bytes:
        item = next(script)
        if callable(item):
            return str(item(sent))
        return item if isinstance(item, str | bytes) else str(item)

    async def main() -> Any:
        return await run_handshake(client(), sent.append, recv, **kw)

    try:
        return sent, asyncio.run(main())
    except HandshakeFailed as exc:
        return sent, exc


def test_the_driver_sends_hello_and_auth_and_returns_welcome() -> None:
    server = Handshake(SERVER, SESSION, SERVER_NONCE)

    def challenge(sent: list[str]) -> str:
        server.receive(parse(sent[0]))
        return server.challenge()

    def welcome(sent: list[str]) -> str:
        server.receive(parse(sent[1]))
        assert server.verify(bytes(KEY.verify_key))
        return welcome_frame(SESSION, USER, DEVICE, 20, 256, 65536, {"notes": 3})

    sent, result = drive([challenge, welcome])
    assert [loads(f)["type"] for f in sent] == ["hello", "auth"]
    assert result == WELCOME


def test_the_driver_raises_a_refusal_or_hands_a_harmless_one_over() -> None:
    error = '{"type":"error","code":"busy","message":"later","ref":null}'
    fatal = '{"type":"error","code":"revoked","message":"gone","ref":null}'
    _, result = drive([error])
    assert isinstance(result, HandshakeRefused) and result.refused.code == "busy"
    seen: list[Refused] = []
    _, result = drive([error, fatal], on_error=seen.append)
    assert [r.code for r in seen] == ["busy"]
    assert isinstance(result, HandshakeRefused) and result.refused.code == "revoked"


def identity(server_id: str = SERVER) -> Identity:
    return Identity("http://relay.test", server_id, DEVICE, USER, bytes(range(32)))


def authenticate_against(answers: list[str], ident: Identity) -> Any:
    script = iter(answers)

    async def recv() -> str:
        return next(script)

    async def main() -> Any:
        return await authenticate(ident, lambda frame: None, recv, on_error=lambda r: None)

    try:
        return asyncio.run(main())
    except Exception as exc:
        return exc


def test_the_sdk_refuses_to_sign_for_another_server() -> None:
    challenge = dumps({"type": "challenge", "session_id": SESSION, "server_id": SERVER,
                       "nonce": SERVER_NONCE})
    result = authenticate_against([challenge], identity(server_id=USER))
    assert isinstance(result, ServerMismatchError)
    assert f"has server_id {SERVER}, but this device was paired with server {USER}" in str(
        result)


@pytest.mark.parametrize(("code", "kind"), [("auth_failed", AuthFailedError),
                                            ("revoked", RevokedError),
                                            ("unsupported_protocol", ProtocolVersionError)])
def test_a_fatal_refusal_is_the_sdks_fatal_error(code: str, kind: type[Exception]) -> None:
    error = dumps({"type": "error", "code": code, "message": "no", "ref": None})
    assert type(authenticate_against([error], identity())) is kind
