"""Logging setup: plain lines for people or JSON lines, one per event that matters.

Every line carries the request id (HTTP) or the session and device ids (gateway) of the
work that logged it, read from context variables that the request middleware and the
gateway set; the trace id is added when tracing is on. A redaction step removes bearer
tokens, JWTs, passwords in URLs and ``token=…`` style secrets from every line, tracebacks
included, so a careless log call cannot leak a credential (docs/operations.md Logs).
"""

from __future__ import annotations

import contextvars
import dataclasses
import json
import logging
import multiprocessing
import re
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from relaybox.config import Settings
from relaybox.protocol.encoding import HIDDEN_RE

if TYPE_CHECKING:  # the writer process logs through this module without loading Sanic
    from sanic import Request, Sanic
    from sanic.response import HTTPResponse

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "relaybox_request_id", default=None)
session_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "relaybox_session_id", default=None)
device_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "relaybox_device_id", default=None)

# Set by tracing.install when tracing is on: returns the current trace id (hex) or None.
trace_id_getter: Callable[[], str | None] | None = None

CONTEXT_KEYS = ("request_id", "session_id", "device_id", "trace_id")
# Loggers of the web framework that share our handler, so that every line has one format.
FRAMEWORK_LOGGERS = ("sanic.root", "sanic.error", "sanic.server", "sanic.websockets")

_configured = False

# -- redaction ---------------------------------------------------------------------------
_REDACTED = "[redacted]"
_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    # An Authorization header in any rendering: "Authorization: Bearer x", {'authorization': 'x'}
    (re.compile(r"(?i)(authorization['\"]?\s*[:=]\s*['\"]?)(?:bearer\s+|basic\s+)?"
                r"[^\s'\",;]+"), r"\1" + _REDACTED),
    (re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]{4,}"), r"\1 " + _REDACTED),
    # JSON Web Tokens wherever they appear.
    (re.compile(r"\beyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*"), _REDACTED),
    # key=value / "key": "value" for keys that name a secret.
    (re.compile(r"(?i)\b([a-z_]*(?:token|password|passwd|secret|signature|api_key))"
                r"(['\"]?\s*[:=]\s*['\"]?)(?!\[redacted\])[^\s'\",;&}]+"),
     r"\1\2" + _REDACTED),
    # user:password@ in URLs (database_url, redis_url).
    (re.compile(r"([a-z][a-z0-9+.-]*://[^/\s:@]*):[^/\s@]+@"), r"\1:" + _REDACTED + "@"),
)


def redact(text: str) -> str:
    """``text`` without credentials (see the patterns above)."""
    for pattern, repl in _PATTERNS:
        text = pattern.sub(repl, text)
    return text


# -- context -------------------------------------------------------------------------------
def bind_session(session_id: str, device_id: str) -> None:
    """Tag every later log line of this task (and tasks it starts) with the session."""
    session_id_var.set(session_id)
    device_id_var.set(device_id or None)


def bind_request(request_id: str | None) -> contextvars.Token[str | None]:
    return request_id_var.set(request_id)


class ContextFilter(logging.Filter):
    """Copies the context ids onto each record (explicit ``extra=`` values win)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "request_id", None) is None:
            record.request_id = request_id_var.get()
        if getattr(record, "session_id", None) is None:
            record.session_id = session_id_var.get()
        if getattr(record, "device_id", None) is None:
            record.device_id = device_id_var.get()
        if getattr(record, "trace_id", None) is None:
            getter = trace_id_getter
            record.trace_id = getter() if getter is not None else None
        return True


# -- formatters ----------------------------------------------------------------------------
def _iso(created: float, msecs: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created)) + f".{int(msecs):03d}Z"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, the context ids, exc."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": _iso(record.created, record.msecs),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": redact(record.getMessage()),
        }
        for key in CONTEXT_KEYS:
            value = getattr(record, key, None)
            if value:
                doc[key] = str(value)
        if record.exc_info:
            doc["exc"] = redact(self.formatException(record.exc_info))
        elif record.exc_text:
            doc["exc"] = redact(record.exc_text)
        return json.dumps(doc, ensure_ascii=False)


class PlainFormatter(logging.Formatter):
    """``2026-11-25T16:52:52.123Z INFO relaybox.gateway: msg [session_id=… device_id=…]``."""

    def format(self, record: logging.LogRecord) -> str:
        # A message may carry what a peer sent (a name, a path, an error text): its control
        # and invisible characters are written as escapes, so that a log line can neither
        # act on the terminal showing it nor forge another line (security.md).
        line = (f"{_iso(record.created, record.msecs)} {record.levelname} {record.name}: "
                f"{_inert(record.getMessage())}")
        ids = " ".join(f"{k}={getattr(record, k)}" for k in CONTEXT_KEYS
                       if getattr(record, k, None) and f"{k}=" not in line)
        if ids:
            line = f"{line} [{ids}]"
        if record.exc_info:
            line = f"{line}\n{self.formatException(record.exc_info)}"
        elif record.exc_text:
            line = f"{line}\n{record.exc_text}"
        return redact(line)


def _escape_char(match: re.Match[str]) -> str:
    n = ord(match.group())
    return f"\\x{n:02x}" if n <= 0xFF else f"\\u{n:04x}" if n <= 0xFFFF else f"\\U{n:08x}"


def _inert(text: str) -> str:
    return HIDDEN_RE.sub(_escape_char, text)


def make_handler(settings: Settings, stream: Any = None) -> logging.Handler:
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if settings.log_format == "json" else PlainFormatter())
    handler.addFilter(ContextFilter())
    return handler


def configure(settings: Settings, stream: Any = None) -> None:
    """Send relaybox's (and the web framework's) log lines to stderr in the chosen format."""
    global _configured
    handler = make_handler(settings, stream)
    level = settings.log_level.upper()
    root = logging.getLogger("relaybox")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
    _attach_framework(handler)
    _configured = True


def configure_writer(spec: dict[str, Any]) -> None:
    """The writer process's log set-up (store/writer_main.py runs it, named in its spec):
    the server's format, level and redaction."""
    configure(dataclasses.replace(Settings(), log_format=spec.get("log_format", "plain"),
                                  log_level=spec.get("log_level", "info")))


def _attach_framework(handler: logging.Handler) -> None:
    level = logging.getLogger("relaybox").level
    for name in FRAMEWORK_LOGGERS:
        lg = logging.getLogger(name)
        lg.handlers[:] = [handler]
        lg.propagate = False
        # The framework's loggers follow log_level too; the websockets library's
        # per-connection lines ("connection closed") stay at warning and above: relaybox
        # logs each session's end itself, with its close code.
        lg.setLevel(max(level, logging.WARNING) if name == "sanic.websockets" else level)


def _reattach_framework() -> None:
    # Sanic configures its own loggers when an app is made: point them back at ours.
    handlers = logging.getLogger("relaybox").handlers
    if _configured and handlers:
        _attach_framework(handlers[0])


# -- the app side ----------------------------------------------------------------------------
def install(app: Sanic, settings: Settings) -> None:
    """Request-id context for every HTTP request; logging set up in worker processes.

    Idempotent: a second call on the same app does nothing.
    """
    if getattr(app.ctx, "logs_installed", False):
        return
    app.ctx.logs_installed = True
    # Worker processes of `serve --workers N` are spawned fresh and build their app here:
    # they need the same set-up as the serving process. A server run inside a test
    # process keeps the test's logging (caplog) untouched.
    if multiprocessing.parent_process() is not None and not _configured:
        configure(settings)
    _reattach_framework()

    @app.before_server_start
    async def reattach_framework_logging(app: Sanic) -> None:
        _reattach_framework()

    @app.on_request
    async def bind_request_id(request: Request) -> None:
        request.ctx.log_token = bind_request(getattr(request.ctx, "request_id", None))

    @app.on_response
    async def unbind_request_id(request: Request, response: HTTPResponse) -> None:
        token = getattr(request.ctx, "log_token", None)
        if token is not None:
            request.ctx.log_token = None
            try:
                request_id_var.reset(token)
            except ValueError:  # set in another context (a handler that spawned a task)
                request_id_var.set(None)
