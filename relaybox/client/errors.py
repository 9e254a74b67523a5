"""Exceptions raised by the device SDK; each says what went wrong in one line."""

from __future__ import annotations

from typing import Final

from relaybox.protocol.codes import CloseCode


class ClientError(Exception):
    """Base of every failure the SDK reports."""


class IdentityError(ClientError):
    """The identity file is missing, unreadable, malformed or readable by others."""


class ClientClosedError(ClientError):
    """The client was closed before the operation finished."""


class FatalError(ClientError):
    """The client stopped for good and will not reconnect (protocol.md §6)."""

    close_code: int | None = None


class AuthFailedError(FatalError):
    """The server does not know this device or refused its signature (close 4401)."""

    close_code = CloseCode.AUTH_FAILED


class RevokedError(FatalError):
    """This device was revoked (close 4403)."""

    close_code = CloseCode.REVOKED


class SessionReplacedError(FatalError):
    """The same device connected elsewhere and took over the session (close 4409)."""

    close_code = CloseCode.SESSION_REPLACED


class ServerMismatchError(FatalError):
    """The server's ``server_id`` is not the one this device was paired with."""


class ProtocolVersionError(FatalError):
    """The server does not speak the protocol version of this client."""


class PublishError(ClientError):
    """A publish was refused with a ``nack`` (protocol.md §3 Publish)."""

    def __init__(self, code: str, message: str = "") -> None:
        super().__init__(f"publish refused: {code}" + (f" ({message})" if message else ""))
        self.code = code
        self.message = message


class ConflictError(PublishError):
    """A compare-and-set publish lost: the key (or stream) is already at ``head_seq``."""

    def __init__(self, stream: str, head_seq: int, base_seq: int | None = None) -> None:
        detail = f"stream {stream!r} is at seq {head_seq}"
        if base_seq is not None:
            detail += f", not {base_seq}"
        super().__init__("conflict", detail)
        self.stream = stream
        self.head_seq = head_seq
        self.base_seq = base_seq


class ApiError(ClientError):
    """A REST call failed; ``status`` and ``code`` come from the problem+json answer."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(f"{detail} (HTTP {status}, {code})")
        self.status = status
        self.code = code
        self.detail = detail


#: protocol.md §6: the closes after which the client stops for good.
FATAL_CLOSES: Final[dict[int, type[FatalError]]] = {
    CloseCode.AUTH_FAILED: AuthFailedError,
    CloseCode.REVOKED: RevokedError,
    CloseCode.SESSION_REPLACED: SessionReplacedError,
}
#: protocol.md §2 step 4: the handshake refusals after which it stops for good.
FATAL_REFUSALS: Final[dict[str, type[FatalError]]] = {
    "auth_failed": AuthFailedError,
    "revoked": RevokedError,
    "unsupported_protocol": ProtocolVersionError,
}
_MESSAGES: Final[dict[type[FatalError], str]] = {
    AuthFailedError: "the server refused this device (unknown device or wrong key)",
    RevokedError: "this device was revoked",
    SessionReplacedError: "this device connected again elsewhere; this session was replaced",
    ProtocolVersionError: "the server does not speak protocol version 1",
}


def fatal(kind: type[FatalError]) -> FatalError:
    """The error of that kind, with its one-line message."""
    return kind(_MESSAGES[kind])


def describe(exc: BaseException) -> str:
    """Why a connection attempt failed, in one line."""
    text = str(exc) or type(exc).__name__
    if isinstance(exc, OSError) and exc.strerror:
        text = exc.strerror
    return text
