"""WebSocket close codes of the gateway protocol and their spec names."""

from __future__ import annotations

import enum


class CloseCode(enum.IntEnum):
    """Close codes the gateway uses (protocol.md §6 Errors and close codes)."""

    NORMAL = 1000
    GOING_AWAY = 1001
    TOO_BIG = 1009
    INTERNAL = 1011
    BAD_REQUEST = 4400
    AUTH_FAILED = 4401
    REVOKED = 4403
    HANDSHAKE_TIMEOUT = 4408
    SESSION_REPLACED = 4409
    HEARTBEAT_TIMEOUT = 4410
    RATE_LIMITED = 4429


# protocol.md §6: the "code" column, used as the close reason text.
CLOSE_REASONS: dict[int, str] = {
    CloseCode.NORMAL: "normal",
    CloseCode.GOING_AWAY: "going_away",
    CloseCode.TOO_BIG: "too_big",
    CloseCode.INTERNAL: "internal",
    CloseCode.BAD_REQUEST: "bad_request",
    CloseCode.AUTH_FAILED: "auth_failed",
    CloseCode.REVOKED: "revoked",
    CloseCode.HANDSHAKE_TIMEOUT: "handshake_timeout",
    CloseCode.SESSION_REPLACED: "session_replaced",
    CloseCode.HEARTBEAT_TIMEOUT: "heartbeat_timeout",
    CloseCode.RATE_LIMITED: "rate_limited",
}
