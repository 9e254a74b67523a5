"""Turns every error into RFC 9457 problem+json (never a traceback to the client)."""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

import orjson
from sanic import HTTPResponse, Request
from sanic.exceptions import SanicException

from relaybox.errors import RateLimited, RelayError, Unauthorized

log = logging.getLogger("relaybox.http")

_SANIC_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
                405: "method_not_allowed", 408: "request_timeout", 413: "too_large",
                415: "unsupported_media_type", 416: "range_not_satisfiable",
                422: "invalid", 429: "rate_limited", 503: "unavailable"}


def problem(status: int, code: str, detail: str, request: Request | None,
            headers: dict[str, str] | None = None, **extra: Any) -> HTTPResponse:
    try:
        title = HTTPStatus(status).phrase
    except ValueError:
        title = "Error"
    rid = getattr(request.ctx, "request_id", None) if request is not None else None
    body = {"type": "about:blank", "title": title, "status": status, "code": code,
            "detail": detail, "request_id": rid, **extra}
    hdrs = dict(headers or {})
    if rid:
        hdrs["X-Request-ID"] = rid
    return HTTPResponse(orjson.dumps(body), status=status, headers=hdrs,
                        content_type="application/problem+json")


def handle_error(request: Request, exc: Exception) -> HTTPResponse:
    if isinstance(exc, RelayError):
        headers: dict[str, str] = {}
        if isinstance(exc, RateLimited):
            headers["Retry-After"] = str(max(1, int(exc.retry_after_s + 0.999)))
        if isinstance(exc, Unauthorized):
            headers["WWW-Authenticate"] = 'Bearer realm="relaybox"'
        extra = {k: v for k, v in exc.extra.items() if k not in ("type", "title", "status")}
        return problem(exc.status_code, exc.code, exc.detail, request, headers, **extra)
    if isinstance(exc, SanicException):
        status = int(getattr(exc, "status_code", 500) or 500)
        if status >= 500:
            log.error("request failed: %s", exc)
        code = _SANIC_CODES.get(status, "error")
        headers = dict(getattr(exc, "headers", None) or {})
        detail = str(exc) if status < 500 else "internal error"
        return problem(status, code, detail, request, headers)
    log.exception("unhandled error on %s %s", request.method, request.path)
    return problem(500, "internal", "internal error", request)
