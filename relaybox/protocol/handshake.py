"""The gateway handshake state machine, signing strings and Ed25519 checks."""

from __future__ import annotations

import enum
from typing import Final

from nacl.bindings import crypto_core_ed25519_is_valid_point
from nacl.exceptions import CryptoError
from nacl.signing import VerifyKey

from relaybox.protocol.codes import CloseCode
from relaybox.protocol.encoding import b64url_decode
from relaybox.protocol.errors import ProtocolError
from relaybox.protocol.messages import Auth, Hello, Message, challenge_frame

__all__ = [
    "GATEWAY_CONTEXT",
    "TOKEN_CONTEXT",
    "Handshake",
    "HandshakeState",
    "gateway_signing_bytes",
    "parse_public_key",
    "token_signing_bytes",
    "verify_signature",
]

GATEWAY_CONTEXT: Final = "relaybox-gateway-v1"  # protocol.md §2 step 3
TOKEN_CONTEXT: Final = "relaybox-token-v1"  # noqa: S105  # api.md §2 How a device authenticates
PUBLIC_KEY_BYTES: Final = 32
#: A valid public key nobody signs for: checking a signature against it when the device is
#: unknown makes that refusal cost as much as a bad signature of a known device.
UNKNOWN_DEVICE_KEY: Final = bytes.fromhex(
    "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")


def gateway_signing_bytes(
    server_id: str, session_id: str, device_id: str, client_nonce: str, server_nonce: str
) -> bytes:
    """protocol.md §2 step 3: six lines joined by "\\n", no trailing newline, UTF-8."""
    lines = (GATEWAY_CONTEXT, server_id, session_id, device_id, client_nonce, server_nonce)
    return "\n".join(lines).encode("utf-8")


def token_signing_bytes(server_id: str, device_id: str, timestamp: int, nonce: str) -> bytes:
    """api.md §2: five lines joined by "\\n", no trailing newline, UTF-8."""
    lines = (TOKEN_CONTEXT, server_id, device_id, str(int(timestamp)), nonce)
    return "\n".join(lines).encode("utf-8")


def verify_signature(public_key: bytes, message: bytes, signature: bytes) -> bool:
    """True if ``signature`` is a valid detached Ed25519 signature; never raises."""
    try:
        VerifyKey(public_key).verify(message, signature)
    except (CryptoError, ValueError, TypeError):
        return False
    return True


def parse_public_key(text: str) -> bytes:
    """Decode a base64url Ed25519 public key; ValueError unless it is a valid point."""
    key = b64url_decode(text, PUBLIC_KEY_BYTES)
    # Rejects points off the curve and small-order points (libsodium's check).
    if not crypto_core_ed25519_is_valid_point(key):
        raise ValueError("not a valid Ed25519 public key")
    return key


class HandshakeState(enum.Enum):
    """protocol.md §2: the states of one gateway session."""

    AWAIT_HELLO = "await_hello"
    AWAIT_AUTH = "await_auth"
    READY = "ready"
    CLOSED = "closed"


class Handshake:
    """Which messages a session may send when (protocol.md §2), with no I/O.

    The gateway feeds every parsed message to ``receive``; on ``Hello`` it
    sends ``challenge()``; on ``Auth`` it looks the device up, checks
    ``verify(public_key)`` and calls ``authenticated()``; ``close()`` at the end.
    A violation raises ProtocolError (close 4400) and closes the machine.
    """

    def __init__(self, server_id: str, session_id: str, server_nonce: str) -> None:
        self.server_id = server_id
        self.session_id = session_id
        self.server_nonce = server_nonce
        self.state = HandshakeState.AWAIT_HELLO
        self.hello: Hello | None = None
        self.auth: Auth | None = None

    def _violation(self, message: str) -> ProtocolError:
        self.state = HandshakeState.CLOSED
        return ProtocolError("bad_request", message, CloseCode.BAD_REQUEST)

    def receive(self, msg: Message) -> None:
        """Check that ``msg`` is allowed now and advance the state."""
        state = self.state
        if state is HandshakeState.READY:
            # In READY everything but a second handshake is for the session.
            if isinstance(msg, Hello | Auth):
                raise self._violation(f"{type(msg).__name__.lower()} after the handshake")
        elif state is HandshakeState.AWAIT_HELLO:
            if not isinstance(msg, Hello):
                raise self._violation("the first message must be hello")
            self.hello = msg
            self.state = HandshakeState.AWAIT_AUTH
        elif state is HandshakeState.AWAIT_AUTH:
            # Only one auth: a second one while the first is checked is a violation.
            if not isinstance(msg, Auth) or self.auth is not None:
                raise self._violation("expected one auth after the challenge")
            self.auth = msg
        else:
            raise self._violation("the session is closed")

    @property
    def device_id(self) -> str:
        """The device id from ``hello``."""
        return self._require_hello().device_id

    def _require_hello(self) -> Hello:
        if self.hello is None:
            raise RuntimeError("no hello received yet")
        return self.hello

    def challenge(self) -> str:
        """The challenge frame for this session (protocol.md §2 step 2)."""
        return challenge_frame(self.session_id, self.server_id, self.server_nonce)

    def signing_bytes(self) -> bytes:
        """The bytes the device must sign (protocol.md §2 step 3); needs ``hello``."""
        hello = self._require_hello()
        return gateway_signing_bytes(
            self.server_id, self.session_id, hello.device_id, hello.nonce, self.server_nonce
        )

    def verify(self, public_key: bytes) -> bool:
        """True if the received ``auth`` signature is valid for ``public_key``."""
        if self.auth is None:
            return False
        return verify_signature(public_key, self.signing_bytes(), self.auth.signature)

    def authenticated(self) -> None:
        """Mark the handshake complete after a verified ``auth``: state READY."""
        if self.state is not HandshakeState.AWAIT_AUTH or self.auth is None:
            raise RuntimeError(
                f"authenticated() in state {self.state.name}: "
                "pass hello and auth to receive() first"
            )
        self.state = HandshakeState.READY

    def close(self) -> None:
        """Enter CLOSED; every later message is a violation."""
        self.state = HandshakeState.CLOSED
