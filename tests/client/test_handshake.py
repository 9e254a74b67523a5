"""The SDK's handshake: the protocol core driven over a scripted transport (no sockets)."""

from __future__ import annotations

import asyncio
from typing import Any

from relaybox.client.connection import _FATAL_ERRORS
from relaybox.client.handshake import run_handshake
from relaybox.protocol import Handshake, loads, welcome_frame
from relaybox.protocol.client import (
    FATAL_HANDSHAKE_ERRORS,
    HandshakeFailed,
    HandshakeRefused,
    Refused,
)
from tests.protocol.test_protocol_client import (
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
    assert set(_FATAL_ERRORS) == FATAL_HANDSHAKE_ERRORS


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
