"""The protocol core's client handshake driven over any asyncio transport (protocol.md §2)."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import Any

from relaybox.client.errors import FATAL_REFUSALS, ServerMismatchError, fatal
from relaybox.client.identity import Identity
from relaybox.protocol.client import (
    ClientHandshake,
    HandshakeRefused,
    Refused,
    SendAuth,
    ServerMismatch,
    Welcomed,
)

__all__ = ["authenticate", "run_handshake"]


async def run_handshake(hs: ClientHandshake, send: Callable[[str], object],
                        recv: Callable[[], Awaitable[str | bytes]], *,
                        on_error: Callable[[Refused], object] | None = None
                        ) -> dict[str, Any]:
    """Send `hello`, answer the challenge, and return the `welcome` message.

    ``send`` may be a plain function or a coroutine function. A fatal ``error``
    (auth_failed, revoked, unsupported_protocol) raises HandshakeRefused; so does
    any other ``error`` unless ``on_error`` takes it (the server closes after those
    too, and ``recv`` then raises the transport's own error). Malformed or
    unexpected frames raise HandshakeFailed, a challenge from another server
    than the paired one ServerMismatch.
    """
    await _sent(send(hs.hello()))
    while True:
        event = hs.receive_text(await recv())
        if isinstance(event, SendAuth):
            await _sent(send(event.frame))
        elif isinstance(event, Welcomed):
            return event.welcome
        elif isinstance(event, Refused):
            if event.fatal or on_error is None:
                raise HandshakeRefused(event)
            on_error(event)


async def authenticate(identity: Identity, send: Callable[[str], object],
                       recv: Callable[[], Awaitable[str | bytes]], *,
                       on_error: Callable[[Refused], object]) -> dict[str, Any]:
    """The SDK's handshake as ``identity``; returns the `welcome`.

    A fatal refusal raises the SDK's FatalError for it (AuthFailedError …), a
    challenge from another server ServerMismatchError; a handshake that made no
    sense HandshakeFailed (worth another try).
    """
    hs = ClientHandshake(identity.device_id, identity.signing_key,
                         server_id=identity.server_id)
    try:
        return await run_handshake(hs, send, recv, on_error=on_error)
    except ServerMismatch as exc:
        raise ServerMismatchError(
            f"the server at {identity.server} has server_id {exc.got}, but this device "
            f"was paired with server {identity.server_id}; refusing to authenticate"
        ) from None
    except HandshakeRefused as exc:
        raise fatal(FATAL_REFUSALS[exc.refused.code]) from None


async def _sent(result: object) -> None:
    if inspect.isawaitable(result):
        await result
