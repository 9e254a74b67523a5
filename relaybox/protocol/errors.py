"""Errors raised by the protocol core: fatal violations and non-fatal refusals."""

from __future__ import annotations

from relaybox.protocol.codes import CloseCode


class ProtocolError(Exception):
    """A message the gateway must refuse.

    ``close_code`` None means non-fatal: answer with an ``error`` frame and
    keep the session; otherwise close the session with that code
    (protocol.md §6).
    """

    code: str
    message: str
    close_code: int | None

    def __init__(
        self, code: str, message: str, close_code: int | None = CloseCode.BAD_REQUEST
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.close_code = close_code

    @property
    def fatal(self) -> bool:
        """True when the session must be closed with ``close_code``."""
        return self.close_code is not None

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(code={self.code!r}, message={self.message!r}, "
            f"close_code={self.close_code!r})"
        )


class PublishRefused(ProtocolError):
    """A publish refused before storage; answered with a ``nack`` (protocol.md §3 Publish).

    ``id`` is the publish id when it was a valid UUID, else None. ``code`` is
    one of "invalid", "too_large", "forbidden". A nack never closes the session.
    """

    id: str | None

    def __init__(self, code: str, message: str, id: str | None = None) -> None:
        super().__init__(code, message, close_code=None)
        self.id = id

    def __repr__(self) -> str:
        return f"PublishRefused(code={self.code!r}, message={self.message!r}, id={self.id!r})"
