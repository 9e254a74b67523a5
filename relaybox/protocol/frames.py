"""Builders for server-to-client frames: compact JSON text, keys in spec order."""

from __future__ import annotations

from collections.abc import Mapping

from relaybox.protocol.encoding import dumps

__all__ = [
    "ack_frame",
    "challenge_frame",
    "error_frame",
    "event_frame",
    "gap_frame",
    "nack_frame",
    "pong_frame",
    "presence_frame",
    "synced_frame",
    "welcome_frame",
]


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
