"""OpenTelemetry tracing, off by default: a span per HTTP request and per gateway publish.

Nothing here imports opentelemetry unless ``tracing.enabled`` is set, and the hooks the
gateway calls cost one global lookup when it is not. A publish span runs from the
``publish`` frame to its ack or nack, with ``relaybox.commit`` (the group commit that
stored it) and ``relaybox.fanout`` (relay to the live sessions) as children, drawn from
the timings of the batch that carried the event. Both come from the hooks the event log
offers its observer (store/front.py ``EventLogObserver``), so the gateway needs no
tracing code.
"""

from __future__ import annotations

import importlib.util
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from sanic import HTTPResponse, Request, Sanic

from relaybox import __version__
from relaybox.config import Settings
from relaybox.server.observability import logs
from relaybox.store.events import PublishRequest, PublishResult, StoredEvent

log = logging.getLogger("relaybox.server")

EXPORTER_PACKAGE = "opentelemetry-exporter-otlp-proto-http"
RECENT_BATCHES = 16  # batches remembered to match a finished publish with its commit


class TracingUnavailable(RuntimeError):
    """Tracing is configured but a package it needs is not installed."""


class _NoopSpan:
    """What the hooks return while tracing is off: every method does nothing."""

    __slots__ = ()

    def finish(self, result: Any = None) -> None:
        return None

    def __enter__(self) -> _NoopSpan:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


NOOP = _NoopSpan()


@dataclass(slots=True)
class _Batch:
    keys: frozenset[tuple[str, str, int]]
    commit_start_ns: int
    commit_end_ns: int
    fanout_start_ns: int
    fanout_end_ns: int
    size: int


@dataclass
class _State:
    tracer: Any
    provider: Any
    batches: deque[_Batch] = field(default_factory=lambda: deque(maxlen=RECENT_BATCHES))

    def batch_of(self, key: tuple[str, str, int] | None) -> _Batch | None:
        for b in reversed(self.batches):
            if key is None or key in b.keys:
                return b
        return None


_state: _State | None = None


def enabled() -> bool:
    return _state is not None


# -- set-up -------------------------------------------------------------------------------------
def check(settings: Settings) -> str | None:
    """Why tracing cannot start with these settings (None: it can, or it is off)."""
    if not settings.tracing_enabled:
        return None
    if importlib.util.find_spec("opentelemetry.sdk") is None:
        return ("tracing.enabled is set but OpenTelemetry is not installed: "
                "pip install 'relaybox[tracing]'")
    if settings.tracing_otlp_endpoint and importlib.util.find_spec(
            "opentelemetry.exporter.otlp.proto.http") is None:
        return (f"tracing.otlp_endpoint is set but {EXPORTER_PACKAGE} is not installed: "
                "pip install 'relaybox[tracing]'")
    return None


def otlp_traces_url(endpoint: str) -> str:
    """A bare collector address (``http://host:4318``) gets the OTLP/HTTP traces path."""
    parts = urlsplit(endpoint)
    return endpoint.rstrip("/") + "/v1/traces" if parts.path in ("", "/") else endpoint


def configure(settings: Settings, exporter: Any = None) -> None:
    """Start tracing for this process (``exporter`` overrides the OTLP one, for tests)."""
    global _state
    problem = check(settings)
    if problem is not None:
        raise TracingUnavailable(problem)
    from opentelemetry import trace
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

    shutdown()
    provider = TracerProvider(resource=Resource.create({
        "service.name": settings.tracing_service_name, "service.version": __version__}))
    if exporter is not None:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    elif settings.tracing_otlp_endpoint:
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        except ImportError as exc:  # find_spec saw it, but it does not import
            raise TracingUnavailable(f"{EXPORTER_PACKAGE} failed to import: {exc}") from None
        provider.add_span_processor(BatchSpanProcessor(
            OTLPSpanExporter(endpoint=otlp_traces_url(settings.tracing_otlp_endpoint))))
    _state = _State(tracer=provider.get_tracer("relaybox", __version__), provider=provider)

    def current_trace_id() -> str | None:
        ctx = trace.get_current_span().get_span_context()
        return format(ctx.trace_id, "032x") if ctx.is_valid else None

    logs.trace_id_getter = current_trace_id


def shutdown() -> None:
    """Flush and stop tracing in this process."""
    global _state
    state, _state = _state, None
    logs.trace_id_getter = None
    if state is not None:
        state.provider.shutdown()


# -- the gateway hook ------------------------------------------------------------------------------
class PublishSpan:
    """One gateway publish, from the frame to its ack or nack."""

    __slots__ = ("span", "state")

    def __init__(self, state: _State, span: Any) -> None:
        self.state = state
        self.span = span

    def finish(self, result: Any = None) -> None:
        """End with the event log's result (Accepted, Conflicted or Failed)."""
        from opentelemetry import trace
        from opentelemetry.trace import Status, StatusCode

        span = self.span
        event = getattr(result, "event", None)
        if event is not None:
            duplicate = bool(getattr(result, "duplicate", False))
            span.set_attribute("relaybox.result", "duplicate" if duplicate else "accepted")
            span.set_attribute("relaybox.seq", event.seq)
            batch = None if duplicate else self.state.batch_of(
                (event.user_id, event.stream, event.seq))
            if batch is not None:
                parent = trace.set_span_in_context(span)
                tracer = self.state.tracer
                commit = tracer.start_span("relaybox.commit", context=parent,
                                           start_time=batch.commit_start_ns,
                                           attributes={"relaybox.batch_size": batch.size})
                commit.end(end_time=batch.commit_end_ns)
                fanout = tracer.start_span("relaybox.fanout", context=parent,
                                           start_time=batch.fanout_start_ns)
                fanout.end(end_time=batch.fanout_end_ns)
        elif hasattr(result, "head_seq"):
            span.set_attribute("relaybox.result", "conflict")
        else:
            span.set_attribute("relaybox.result", "unavailable")
            span.set_status(Status(StatusCode.ERROR, str(getattr(result, "reason", ""))[:200]))
        span.end()

    def __enter__(self) -> PublishSpan:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.span.is_recording():
            self.span.end()


def publish_span(stream: str, client_id: str, device_id: str | None = None
                 ) -> PublishSpan | _NoopSpan:
    """A span for one publish; call ``finish(result)`` when its result is known."""
    state = _state
    if state is None:
        return NOOP
    attrs = {"relaybox.stream": stream, "relaybox.event_id": client_id}
    if device_id:
        attrs["relaybox.device_id"] = device_id
    session_id = logs.session_id_var.get()
    if session_id:
        attrs["relaybox.session_id"] = session_id
    return PublishSpan(state, state.tracer.start_span("relaybox.publish", attributes=attrs))


class _PublishObserver:
    """The event log's hooks (store/front.py ``EventLogObserver``): a span for every
    publish (gateway or HTTP), with its batch's commit and fan-out."""

    __slots__ = ("state",)

    def __init__(self, state: _State) -> None:
        self.state = state

    def publishing(self, req: PublishRequest) -> Callable[[PublishResult], None]:
        return publish_span(req.stream, req.client_id, req.device_id).finish

    def batch(self, new_events: list[StoredEvent], size: int, seconds: float,
              fanout_start_ns: int, fanout_end_ns: int) -> None:
        keys = frozenset((e.user_id, e.stream, e.seq) for e in new_events)
        self.state.batches.append(_Batch(keys, fanout_start_ns - int(seconds * 1e9),
                                         fanout_start_ns, fanout_start_ns, fanout_end_ns,
                                         size))


# -- the app side ------------------------------------------------------------------------------
def install(app: Sanic, settings: Settings) -> None:
    """Add a span per request and per gateway publish when tracing is enabled."""
    if not settings.tracing_enabled:
        return
    if _state is None:
        configure(settings)

    @app.before_server_start
    async def trace_eventlog(app: Sanic) -> None:
        if _state is not None:
            app.ctx.relay.eventlog.observe(_PublishObserver(_state))

    @app.after_server_stop
    async def stop_tracing(app: Sanic) -> None:
        if _state is not None:
            _state.provider.force_flush()

    @app.on_request
    async def start_request_span(request: Request) -> None:
        state = _state
        route = request.route
        if state is None or (route is not None and getattr(route.extra, "websocket", False)):
            return
        from opentelemetry import context, propagate, trace
        from opentelemetry.trace import SpanKind

        # The route template names the span: a raw path may hold a pairing code.
        template = "/" + route.path if route is not None else "unmatched"
        attrs: dict[str, Any] = {"http.request.method": request.method, "http.route": template}
        rid = getattr(request.ctx, "request_id", None)
        if rid:
            attrs["relaybox.request_id"] = rid
        span = state.tracer.start_span(f"{request.method} {template}",
                                       context=propagate.extract(request.headers),
                                       kind=SpanKind.SERVER, attributes=attrs)
        request.ctx.trace_span = span
        request.ctx.trace_token = context.attach(trace.set_span_in_context(span))

    @app.on_response
    async def end_request_span(request: Request, response: HTTPResponse) -> None:
        span = getattr(request.ctx, "trace_span", None)
        if span is None:
            return
        from opentelemetry import context
        from opentelemetry.trace import Status, StatusCode

        request.ctx.trace_span = None
        status = response.status if response is not None else 500
        span.set_attribute("http.response.status_code", status)
        if status >= 500:
            span.set_status(Status(StatusCode.ERROR))
        span.end()
        token = getattr(request.ctx, "trace_token", None)
        if token is not None:
            try:
                context.detach(token)
            except Exception:  # noqa: S110 - attached in another context; nothing to undo
                pass
