"""The handshake's test vectors (protocol.md §2): fixed ids, nonces and key, the frames a
server sends, and the device side that plays them. Shared by the protocol core's tests
and the SDK's (tests/client/test_handshake.py)."""

from __future__ import annotations

from typing import Any

from nacl.signing import SigningKey

from relaybox.protocol import b64url_encode, loads, welcome_frame
from relaybox.protocol.client import ClientHandshake
from relaybox.protocol.messages import parse_message

SERVER = "0193aaaa-0000-7000-8000-00000000000a"
SESSION = "0193aaaa-0000-7000-8000-00000000000b"
DEVICE = "0193aaaa-0000-7000-8000-00000000000c"
USER = "0193aaaa-0000-7000-8000-00000000000d"
CLIENT_NONCE = b64url_encode(bytes(range(32)))
SERVER_NONCE = b64url_encode(bytes(range(100, 132)))
KEY = SigningKey(bytes(range(32)))
CHALLENGE = {"type": "challenge", "session_id": SESSION, "server_id": SERVER,
             "nonce": SERVER_NONCE}
WELCOME = loads(welcome_frame(SESSION, USER, DEVICE, 20, 256, 65536, {"notes": 3}))


def client(**kw: Any) -> ClientHandshake:
    """The device side of the handshake, with the vectors' device, key and nonce."""
    return ClientHandshake(DEVICE, KEY, nonce=CLIENT_NONCE, **kw)


def parse(frame: str) -> Any:
    """A frame as the server's parser reads it."""
    return parse_message(frame, max_body_bytes=65536)
