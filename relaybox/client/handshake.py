"""The protocol core's client handshake driven over any asyncio transport (protocol.md §2)."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import Any

from relaybox.protocol.client import (
    ClientHandshake,
    HandshakeRefused,
    Refused,
    SendAuth,
    Welcomed,
)

__all__ = ["run_handshake"]


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


async def _sent(result: object) -> None:
    if inspect.isawaitable(result):
        await result
