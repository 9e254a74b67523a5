"""Turns every error into RFC 9457 problem+json (never a traceback to the client)."""

from __future__ import annotations

import logging
import re
from http import HTTPStatus
from typing import Any

import orjson
import peewee as pw
from sanic import HTTPResponse, Request
from sanic.exceptions import SanicException

from relaybox.errors import RateLimited, RelayError, Unauthorized
from relaybox.protocol.encoding import uuid7

log = logging.getLogger("relaybox.http")

REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")

_SANIC_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
                405: "method_not_allowed", 408: "request_timeout", 413: "too_large",
                415: "unsupported_media_type", 416: "range_not_satisfiable",
                422: "invalid", 429: "rate_limited", 503: "unavailable"}


def request_id(request: Request) -> str:
    """This request's id: the caller's X-Request-ID if sane, else a new one (set once)."""
    rid = getattr(request.ctx, "request_id", None)
    if rid is None:
        sent = request.headers.get("X-Request-ID", "")
        rid = sent if REQUEST_ID_RE.match(sent) else uuid7()
        request.ctx.request_id = rid
    return str(rid)


def problem_body(status: int, code: str, detail: str, rid: str | None,
                 **extra: Any) -> dict[str, Any]:
    """The RFC 9457 document of an error (api.md §1 Conventions)."""
    try:
        title = HTTPStatus(status).phrase
    except ValueError:
        title = "Error"
    return {"type": "about:blank", "title": title, "status": status, "code": code,
            "detail": detail, "request_id": rid, **extra}


def problem(status: int, code: str, detail: str, request: Request | None,
            headers: dict[str, str] | None = None, **extra: Any) -> HTTPResponse:
    rid = request_id(request) if request is not None else None
    body = problem_body(status, code, detail, rid, **extra)
    hdrs = dict(headers or {})
    if rid:
        hdrs["X-Request-ID"] = rid
    return HTTPResponse(orjson.dumps(body), status=status, headers=hdrs,
                        content_type="application/problem+json")


def handle_error(request: Request, exc: Exception) -> HTTPResponse:
    if isinstance(exc, RelayError):
        headers: dict[str, str] = {}
        if isinstance(exc, RateLimited) or exc.status_code == 503:
            retry = getattr(exc, "retry_after_s", 1.0)
            headers["Retry-After"] = str(max(1, int(retry + 0.999)))
        if isinstance(exc, Unauthorized):
            headers["WWW-Authenticate"] = 'Bearer realm="relaybox"'
        extra = {k: v for k, v in exc.extra.items()
                 if k not in ("type", "title", "status", "code", "detail", "request_id")}
        return problem(exc.status_code, exc.code, exc.detail, request, headers, **extra)
    if isinstance(exc, pw.PeeweeException):
        # The database is down or locked for too long: a retryable condition, not a bug.
        log.warning("database error on %s %s: %s", request.method, request.path, exc)
        return problem(503, "storage_unavailable", "the database is unavailable; retry later",
                       request, {"Retry-After": "1"})
    if isinstance(exc, SanicException):
        status = int(getattr(exc, "status_code", 500) or 500)
        if status >= 500:
            log.error("request failed: %s", exc)
        code = _SANIC_CODES.get(status, "error")
        headers = {k: str(v) for k, v in (getattr(exc, "headers", None) or {}).items()}
        if status == 405 and not any(k.lower() == "allow" for k in headers):
            # RFC 9110 §15.5.6; Sanic's router omits it for routes with parameters.
            headers["Allow"] = ", ".join(_allowed_methods(request))
        detail = str(exc) if status < 500 else "internal error"
        return problem(status, code, detail, request, headers)
    log.exception("unhandled error on %s %s", request.method, request.path)
    return problem(500, "internal", "internal error", request)


#: The order of the methods in an Allow header (RFC 9110 leaves it open; a fixed one
#: makes responses reproducible), OPTIONS last.
METHOD_ORDER = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def _allowed_methods(request: Request) -> list[str]:
    allowed = []
    for method in METHOD_ORDER:
        try:
            request.app.router.get(request.path, method, None)
        except SanicException:
            continue
        allowed.append(method)
    return allowed


def access_log(request: Request, status: int, rid: str) -> None:
    """One line per request: method, route, status and request id (api.md §1 Conventions)."""
    # The route pattern, not the path: a path may hold a pairing code.
    route = "/" + request.route.path if request.route is not None else request.path[:200]
    # A request ended before its head was read (a timeout) has no method yet.
    method = request.method if request.method != "NONE" else "-"
    log.info("%s %s %s request_id=%s", method, route, status, rid,
             extra={"request_id": rid})
