"""The device side of the gateway handshake as a state machine with no I/O (protocol.md §2).

One copy for every client: the SDK, the bench and the test helpers feed it the
frames they read and send the frames it gives back, whatever their transport::

    hs = ClientHandshake(device_id, signing_key, server_id=paired_server_id)
    send(hs.hello())
    while not hs.done:
        event = hs.receive_text(read())
        if isinstance(event, SendAuth):
            send(event.frame)
        elif isinstance(event, Refused) and event.fatal:
            ...  # the server closes next (4401, 4403 or 4400)
    hs.welcome  # the `welcome` message
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, TypeAlias

from nacl.signing import SigningKey

from relaybox.protocol.encoding import b64url_encode, dumps, loads, random_nonce
from relaybox.protocol.handshake import gateway_signing_bytes
from relaybox.protocol.messages import PROTOCOL_VERSION

__all__ = [
    "FATAL_HANDSHAKE_ERRORS",
    "ClientEvent",
    "ClientHandshake",
    "ClientState",
    "HandshakeFailed",
    "HandshakeRefused",
    "Refused",
    "SendAuth",
    "ServerMismatch",
    "Skipped",
    "Welcomed",
    "auth_frame",
    "decode_frame",
    "hello_frame",
]

#: protocol.md §2 step 4 and §6: the ``error`` codes after which the server closes the
#: connection (4401, 4403, 4400); any other ``error`` leaves the handshake waiting.
FATAL_HANDSHAKE_ERRORS: Final = frozenset({"auth_failed", "revoked", "unsupported_protocol"})

#: Signs the signing string: a detached Ed25519 signature, 64 raw bytes.
Signer: TypeAlias = Callable[[bytes], bytes]


def hello_frame(device_id: str, nonce: str, protocol: int = PROTOCOL_VERSION) -> str:
    """protocol.md §2 step 1: the first frame a device sends."""
    return dumps({"type": "hello", "protocol": protocol, "device_id": device_id,
                  "nonce": nonce})


def auth_frame(signature: bytes) -> str:
    """protocol.md §2 step 3: the signature over the signing string."""
    return dumps({"type": "auth", "signature": b64url_encode(signature)})


def decode_frame(raw: str | bytes) -> dict[str, Any] | None:
    """protocol.md §1: a text frame holding a JSON object with a string ``type``; else None."""
    if not isinstance(raw, str):
        return None
    try:
        msg = loads(raw)
    except ValueError:
        return None
    if not isinstance(msg, dict) or not isinstance(msg.get("type"), str):
        return None
    return msg


class HandshakeFailed(Exception):
    """The server's side of the handshake makes no sense; give up on this connection."""


class HandshakeRefused(HandshakeFailed):
    """The server refused the handshake with an ``error`` (``refused`` holds it)."""

    def __init__(self, refused: Refused) -> None:
        super().__init__(f"handshake refused: {refused.frame}")
        self.refused = refused


class ServerMismatch(HandshakeFailed):
    """protocol.md §2 step 2: the challenge names another server than the one paired with.

    Nothing was signed: a device never signs for a server it was not paired with.
    """

    def __init__(self, expected: str, got: object) -> None:
        super().__init__(f"challenge from server {got}, expected {expected}")
        self.expected = expected
        self.got = got


class ClientState(enum.Enum):
    """Where the device's side of the handshake is."""

    START = "start"  # nothing sent yet
    AWAIT_CHALLENGE = "await_challenge"  # `hello` sent
    AWAIT_WELCOME = "await_welcome"  # `auth` sent
    READY = "ready"  # `welcome` received: the session is open
    FAILED = "failed"  # a fatal refusal, or a handshake that made no sense


@dataclass(frozen=True)
class SendAuth:
    """The challenge was accepted: send ``frame`` (the `auth`)."""

    frame: str
    challenge: dict[str, Any]

    @property
    def session_id(self) -> str:
        return str(self.challenge["session_id"])


@dataclass(frozen=True)
class Welcomed:
    """protocol.md §2 step 4: the session is ready."""

    welcome: dict[str, Any]


@dataclass(frozen=True)
class Refused:
    """The server answered with an ``error``; after a ``fatal`` one it closes."""

    code: str
    message: str
    fatal: bool
    frame: dict[str, Any]


@dataclass(frozen=True)
class Skipped:
    """A message of another type, ignored (protocol.md: ignore types you do not know)."""

    frame: dict[str, Any]


ClientEvent: TypeAlias = SendAuth | Welcomed | Refused | Skipped


class ClientHandshake:
    """hello → challenge → auth → welcome, for one connection (protocol.md §2).

    ``key`` is the device's SigningKey or a function returning a detached signature.
    With ``server_id`` (the one seen at pairing), a challenge from any other server
    raises ServerMismatch before anything is signed. ``nonce`` is the client nonce
    (fresh random bytes unless given). ``strict``: a message of any type but the one
    awaited or ``error`` raises HandshakeFailed instead of being skipped (the server
    sends none: tests and the bench hold it to that; the SDK skips them, as
    protocol.md asks of a client).
    """

    def __init__(self, device_id: str, key: SigningKey | Signer, *,
                 server_id: str | None = None, nonce: str | None = None,
                 strict: bool = False) -> None:
        self.device_id = device_id
        self._sign: Signer = (
            (lambda message: key.sign(message).signature) if isinstance(key, SigningKey)
            else key)
        self.expected_server_id = server_id
        self.nonce = nonce if nonce is not None else random_nonce()
        self.strict = strict
        self.state = ClientState.START
        self.challenge: dict[str, Any] | None = None
        self.welcome: dict[str, Any] | None = None
        self.refusal: Refused | None = None

    @property
    def done(self) -> bool:
        """True once the session is ready or the handshake failed."""
        return self.state in (ClientState.READY, ClientState.FAILED)

    @property
    def expecting(self) -> str:
        """The type of message this side waits for next (for error messages)."""
        return {ClientState.AWAIT_CHALLENGE: "challenge",
                ClientState.AWAIT_WELCOME: "welcome"}.get(self.state, "nothing")

    def hello(self) -> str:
        """The `hello` frame to send first."""
        if self.state is not ClientState.START:
            raise RuntimeError(f"hello() in state {self.state.name}")
        self.state = ClientState.AWAIT_CHALLENGE
        return hello_frame(self.device_id, self.nonce)

    def receive_text(self, raw: str | bytes) -> ClientEvent:
        """``receive`` for a frame as read; a frame that is not a message fails it."""
        msg = decode_frame(raw)
        if msg is None:
            raise self._fail(f"malformed frame while waiting for {self.expecting}")
        return self.receive(msg)

    def receive(self, msg: Mapping[str, Any]) -> ClientEvent:
        """Feed one decoded message from the server; get what it means."""
        if self.state not in (ClientState.AWAIT_CHALLENGE, ClientState.AWAIT_WELCOME):
            raise RuntimeError(f"receive() in state {self.state.name}")
        frame = dict(msg)
        kind = frame.get("type")
        if kind == "error":
            code = str(frame.get("code"))
            refused = Refused(code, str(frame.get("message")), code in FATAL_HANDSHAKE_ERRORS,
                              frame)
            if refused.fatal:
                self.state = ClientState.FAILED
                self.refusal = refused
            return refused
        if kind == "challenge" and self.state is ClientState.AWAIT_CHALLENGE:
            return self._challenged(frame)
        if kind == "welcome" and self.state is ClientState.AWAIT_WELCOME:
            self.state = ClientState.READY
            self.welcome = frame
            return Welcomed(frame)
        if self.strict:
            raise self._fail(f"{kind} while waiting for {self.expecting}: {frame}")
        return Skipped(frame)

    def _challenged(self, ch: dict[str, Any]) -> SendAuth:
        server_id = ch.get("server_id")
        # protocol.md §2 step 3: never sign for a server we were not paired with.
        if self.expected_server_id is not None and server_id != self.expected_server_id:
            self.state = ClientState.FAILED
            raise ServerMismatch(self.expected_server_id, server_id)
        session_id, server_nonce = ch.get("session_id"), ch.get("nonce")
        if not (isinstance(server_id, str) and isinstance(session_id, str)
                and isinstance(server_nonce, str)):
            raise self._fail("malformed challenge")
        message = gateway_signing_bytes(server_id, session_id, self.device_id, self.nonce,
                                        server_nonce)
        self.challenge = ch
        self.state = ClientState.AWAIT_WELCOME
        return SendAuth(auth_frame(self._sign(message)), ch)

    def _fail(self, why: str) -> HandshakeFailed:
        self.state = ClientState.FAILED
        return HandshakeFailed(why)
