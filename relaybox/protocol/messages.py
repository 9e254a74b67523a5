"""The gateway's messages, both ways: parse a device's text frame into a validated frozen
dataclass, and build the server's frames (compact JSON text, keys in spec order)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final, TypeAlias, TypeGuard

from relaybox.protocol.codes import CloseCode
from relaybox.protocol.encoding import (
    b64url_decode,
    dumps,
    dumps_bytes,
    is_system_stream,
    is_valid_stream,
    loads,
    parse_uuid,
)
from relaybox.protocol.errors import ProtocolError, PublishRefused

__all__ = [
    "PROTOCOL_VERSION",
    "Ack",
    "Auth",
    "Hello",
    "Message",
    "Ping",
    "Publish",
    "Unknown",
    "ack_frame",
    "challenge_frame",
    "error_frame",
    "event_frame",
    "gap_frame",
    "nack_frame",
    "parse_message",
    "pong_frame",
    "presence_frame",
    "synced_frame",
    "welcome_frame",
]

PROTOCOL_VERSION: Final = 1
NONCE_BYTES: Final = 32  # protocol.md §2 step 1
SIGNATURE_BYTES: Final = 64  # protocol.md §2 step 3
MAX_KEY_BYTES: Final = 256  # protocol.md §3 Publish
PUBLISH_ID_VERSIONS: Final = frozenset({4, 7})  # protocol.md §1 Identifiers

_MISSING: Final = object()


@dataclass(frozen=True, slots=True)
class Hello:
    """protocol.md §2 step 1. ``nonce`` is the base64url text as sent."""

    protocol: int
    device_id: str
    nonce: str


@dataclass(frozen=True, slots=True)
class Auth:
    """protocol.md §2 step 3: the detached Ed25519 signature (64 bytes)."""

    signature: bytes


@dataclass(frozen=True, slots=True)
class Publish:
    """protocol.md §3 Publish. ``body`` is the compact JSON text of the body."""

    id: str
    stream: str
    body: str
    key: str | None = None
    base_seq: int | None = None


@dataclass(frozen=True, slots=True)
class Ack:
    """protocol.md §3 Delivery: cumulative ack of ``stream`` up to ``seq``."""

    stream: str
    seq: int


@dataclass(frozen=True, slots=True)
class Ping:
    """protocol.md §4: an application-level ping; ``ref`` is echoed in the pong."""

    ref: object = None


@dataclass(frozen=True, slots=True)
class Unknown:
    """A message whose ``type`` this server does not know (protocol.md §2, last paragraph)."""

    type: str


Message: TypeAlias = Hello | Auth | Publish | Ack | Ping | Unknown


def _bad_request(message: str) -> ProtocolError:
    return ProtocolError("bad_request", message, CloseCode.BAD_REQUEST)


def _is_uint(value: object) -> TypeGuard[int]:
    # bool is a subclass of int but not a JSON number.
    return type(value) is int and value >= 0


def _parse_hello(obj: dict[str, object], max_body_bytes: int) -> Hello:
    # protocol.md §2 step 1: all field errors are fatal (4400).
    protocol = obj.get("protocol")
    if type(protocol) is not int:
        raise _bad_request("hello.protocol must be an integer")
    if protocol != PROTOCOL_VERSION:
        raise ProtocolError(
            "unsupported_protocol",
            f"protocol {protocol} is not supported; this server speaks {PROTOCOL_VERSION}",
            CloseCode.BAD_REQUEST,
        )
    try:
        device_id = parse_uuid(obj.get("device_id"))
    except ValueError:
        raise _bad_request("hello.device_id must be a canonical UUID") from None
    nonce = obj.get("nonce")
    try:
        if not isinstance(nonce, str):
            raise ValueError("not a string")
        b64url_decode(nonce, NONCE_BYTES)
    except ValueError:
        raise _bad_request("hello.nonce must be base64url of 32 bytes") from None
    return Hello(protocol=protocol, device_id=device_id, nonce=nonce)


def _parse_auth(obj: dict[str, object], max_body_bytes: int) -> Auth:
    # protocol.md §2 step 4: a signature that is not 64 bytes is malformed (4400).
    text = obj.get("signature")
    try:
        if not isinstance(text, str):
            raise ValueError("not a string")
        signature = b64url_decode(text, SIGNATURE_BYTES)
    except ValueError:
        raise _bad_request("auth.signature must be base64url of 64 bytes") from None
    return Auth(signature=signature)


def _parse_publish(obj: dict[str, object], max_body_bytes: int) -> Publish:
    # protocol.md §3 Publish: every refusal is a nack; order is invalid,
    # then forbidden, then too_large.
    try:
        id = parse_uuid(obj.get("id"), PUBLISH_ID_VERSIONS)
    except ValueError:
        raise PublishRefused("invalid", "id must be a canonical UUIDv4 or UUIDv7") from None
    stream = obj.get("stream")
    if not is_valid_stream(stream):
        raise PublishRefused("invalid", "stream is not a valid stream name", id)
    # An explicit null is read as "not given", like an absent optional field.
    key = obj.get("key")
    if key is not None:
        # Up to 4 UTF-8 bytes per character, so short keys need no encoding.
        if not isinstance(key, str) or (
            len(key) > MAX_KEY_BYTES // 4 and len(key.encode("utf-8")) > MAX_KEY_BYTES
        ):
            raise PublishRefused(
                "invalid", f"key must be a string of at most {MAX_KEY_BYTES} UTF-8 bytes", id
            )
    base_seq = obj.get("base_seq")
    if base_seq is not None and not _is_uint(base_seq):
        raise PublishRefused("invalid", "base_seq must be an integer >= 0", id)
    body = obj.get("body", _MISSING)
    if body is _MISSING:
        raise PublishRefused("invalid", "body is missing", id)
    try:
        encoded = dumps_bytes(body)
    except (TypeError, ValueError):
        raise PublishRefused("invalid", "body cannot be encoded as JSON", id) from None
    if is_system_stream(stream):
        raise PublishRefused("forbidden", "sys. streams are written only by the server", id)
    if len(encoded) > max_body_bytes:
        raise PublishRefused("too_large", f"body is over {max_body_bytes} bytes", id)
    return Publish(
        id=id,
        stream=stream,
        body=encoded.decode("utf-8"),
        key=key,
        base_seq=base_seq,
    )


def _parse_ack(obj: dict[str, object], max_body_bytes: int) -> Ack:
    # protocol.md §2: a known type with bad fields is a non-fatal error.
    stream = obj.get("stream")
    seq = obj.get("seq")
    if not is_valid_stream(stream) or not _is_uint(seq):
        raise ProtocolError(
            "invalid", "ack needs a valid stream and an integer seq >= 0", close_code=None
        )
    return Ack(stream=stream, seq=seq)


def _parse_ping(obj: dict[str, object], max_body_bytes: int) -> Ping:
    ref = obj.get("ref")
    if isinstance(ref, dict | list):
        # protocol.md §4: the ref is echoed, so it must encode again; JSON nested deeper
        # than the encoder goes is refused here, not when the pong is written.
        try:
            dumps_bytes(ref)
        except (TypeError, ValueError):
            raise ProtocolError("invalid", "ping ref is nested too deeply",
                                close_code=None) from None
    return Ping(ref=ref)


_PARSERS: Final[dict[str, Callable[[dict[str, object], int], Message]]] = {
    "hello": _parse_hello,
    "auth": _parse_auth,
    "publish": _parse_publish,
    "ack": _parse_ack,
    "ping": _parse_ping,
}


def parse_message(data: str | bytes, *, max_body_bytes: int) -> Message:
    """Parse one received WebSocket frame (``bytes`` means a binary frame).

    Raises ProtocolError: fatal (``close_code`` set) for frames that break
    protocol.md §1 or bad ``hello``/``auth`` fields; non-fatal for a bad
    ``ack``; PublishRefused (non-fatal, answer with a nack) for a bad
    ``publish``. Before the handshake is READY the caller should treat every
    ProtocolError as fatal, since only hello and auth are allowed then.
    """
    # protocol.md §1: one UTF-8 text frame holding one JSON object with a string type.
    if not isinstance(data, str):
        raise _bad_request("binary frames are not allowed")
    try:
        obj = loads(data)
    except ValueError:
        raise _bad_request("frame is not valid JSON") from None
    if type(obj) is not dict:
        raise _bad_request("frame must be a JSON object")
    kind = obj.get("type")
    if type(kind) is not str:
        raise _bad_request("frame needs a string field 'type'")
    parser = _PARSERS.get(kind)
    if parser is None:
        return Unknown(type=kind)
    return parser(obj, max_body_bytes)


# -- server-to-client frames ------------------------------------------------------------
def challenge_frame(session_id: str, server_id: str, nonce: str) -> str:
    """protocol.md §2 step 2: the server's answer to ``hello``."""
    return dumps(
        {"type": "challenge", "session_id": session_id, "server_id": server_id, "nonce": nonce}
    )


def welcome_frame(
    session_id: str,
    user_id: str,
    device_id: str,
    heartbeat_s: int | float,
    window: int,
    max_body_bytes: int,
    streams: Mapping[str, int],
) -> str:
    """protocol.md §2 step 4: a successful handshake, with each stream's head seq."""
    return dumps(
        {
            "type": "welcome",
            "session_id": session_id,
            "user_id": user_id,
            "device_id": device_id,
            "heartbeat_s": heartbeat_s,
            "window": window,
            "max_body_bytes": max_body_bytes,
            "streams": dict(streams),
        }
    )


def ack_frame(id: str, stream: str, seq: int, ts: str) -> str:
    """protocol.md §3 Publish: the event is durably stored as ``seq``."""
    return dumps({"type": "ack", "id": id, "stream": stream, "seq": seq, "ts": ts})


def nack_frame(id: str | None, code: str, **extra: object) -> str:
    """protocol.md §3 Publish: a refusal; ``extra`` adds e.g. stream, head_seq, retry_after_ms."""
    return dumps({"type": "nack", "id": id, "code": code, **extra})


def event_frame(
    stream: str,
    seq: int,
    id: str,
    from_device: str | None,
    key: str | None,
    ts: str,
    body: str,
) -> str:
    """protocol.md §3 Delivery: one stored event.

    ``body`` is JSON text as stored and is spliced in verbatim, so a body is
    serialised once at publish time and never again per recipient.
    """
    head = dumps(
        {
            "type": "event",
            "stream": stream,
            "seq": seq,
            "id": id,
            "from": from_device,
            "key": key,
            "ts": ts,
        }
    )
    # head ends with "}"; replace it with the body member.
    return f'{head[:-1]},"body":{body}}}'


def synced_frame(streams: Mapping[str, int]) -> str:
    """protocol.md §3 Catch-up: everything that existed at connect time was sent."""
    return dumps({"type": "synced", "streams": dict(streams)})


def gap_frame(stream: str, after: int, next: int) -> str:
    """protocol.md §3 Catch-up: retention removed events after ``after`` before ``next``."""
    return dumps({"type": "gap", "stream": stream, "after": after, "next": next})


def presence_frame(device_id: str, online: bool) -> str:
    """protocol.md §3 Server notices: another device of the user came or went."""
    return dumps({"type": "presence", "device_id": device_id, "online": online})


def pong_frame(ref: object) -> str:
    """protocol.md §4: the answer to a client ``ping``, echoing its ``ref``."""
    return dumps({"type": "pong", "ref": ref})


def error_frame(code: str, message: str, ref: object = None) -> str:
    """protocol.md §6: a non-fatal error, or the notice sent before a close."""
    return dumps({"type": "error", "code": code, "message": message, "ref": ref})
