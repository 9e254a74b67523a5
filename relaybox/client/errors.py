"""Exceptions raised by the device SDK; each says what went wrong in one line."""

from __future__ import annotations

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
