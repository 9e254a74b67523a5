"""The one error hierarchy: each class knows its HTTP status and stable code."""

from __future__ import annotations


class RelayError(Exception):
    """Base of every expected failure; ``code`` is stable and machine readable."""

    status_code = 400
    code = "bad_request"
    title = "Bad Request"

    def __init__(self, detail: str = "", *, code: str | None = None, **extra: object) -> None:
        super().__init__(detail or self.title)
        self.detail = detail or self.title
        if code is not None:
            self.code = code
        self.extra = extra


class InvalidInput(RelayError):
    status_code = 422
    code = "invalid"
    title = "Unprocessable Content"


class Unauthorized(RelayError):
    status_code = 401
    code = "unauthorized"
    title = "Unauthorized"


class Forbidden(RelayError):
    status_code = 403
    code = "forbidden"
    title = "Forbidden"


class QuotaExceeded(Forbidden):
    """A publish over one of the user's quotas; ``quota`` names it (configuration.md)."""

    code = "quota_exceeded"


class NotFound(RelayError):
    status_code = 404
    code = "not_found"
    title = "Not Found"


class Conflict(RelayError):
    status_code = 409
    code = "conflict"
    title = "Conflict"


class TooLarge(RelayError):
    status_code = 413
    code = "too_large"
    title = "Content Too Large"


class RateLimited(RelayError):
    status_code = 429
    code = "rate_limited"
    title = "Too Many Requests"

    def __init__(self, detail: str = "", *, retry_after_s: float = 1.0,
                 code: str | None = None, **extra: object) -> None:
        super().__init__(detail, code=code, **extra)
        self.retry_after_s = retry_after_s


class Unavailable(RelayError):
    status_code = 503
    code = "unavailable"
    title = "Service Unavailable"
