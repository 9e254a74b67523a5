"""OpenTelemetry spans: per HTTP request and per publish (with commit and fan-out), export."""

from __future__ import annotations

import asyncio
import itertools
import logging
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner
from opentelemetry import trace
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from sanic import Sanic

from relaybox.config import load_settings
from relaybox.server.app import create_app
from relaybox.server.observability import logs, tracing
from tests.observability.helpers import Device, await_until, start_server, stop_server
from tests.support import DeviceKey, Server, free_port, seed

_names = itertools.count()
TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@dataclass
class Traced:
    server: Server
    exporter: InMemorySpanExporter
    keys: list[DeviceKey]

    def spans(self, name: str) -> list[Any]:
        return [s for s in self.exporter.get_finished_spans() if s.name == name]


def _attrs(span: Any) -> dict[str, Any]:
    return dict(span.attributes or {})


@pytest.fixture
async def traced(tmp_path: Path) -> AsyncIterator[Traced]:
    """A server inside the test process, its spans going to an in-memory exporter."""
    data = tmp_path / "data"
    keys = seed(data, {"alice": 2})["alice"]
    port = free_port()
    settings = load_settings(data, env={"RELAYBOX_TRACING_ENABLED": "true",
                                        "RELAYBOX_GATEWAY_PUBLISH_RATE_PER_S": "0"},
                             overrides={"port": port})
    exporter = InMemorySpanExporter()
    tracing.configure(settings, exporter=exporter)
    test_mode, Sanic.test_mode = Sanic.test_mode, True
    app = create_app(settings, name=f"traced{next(_names)}")
    srv = await app.create_server(host="127.0.0.1", port=port, return_asyncio_server=True)
    assert srv is not None
    await srv.startup()
    await srv.before_start()
    await srv.after_start()
    try:
        yield Traced(Server(data, port, {}), exporter, keys)
    finally:
        await srv.before_stop()
        srv.close()
        await srv.wait_closed()
        await srv.after_stop()
        tracing.shutdown()
        Sanic.test_mode = test_mode


async def test_a_request_span_is_named_by_route_and_continues_the_callers_trace(
        traced: Traced) -> None:
    async with httpx.AsyncClient() as client:
        r = await client.get(f"{traced.server.url}/api/v1/streams/private-notes/events",
                             headers={"traceparent": TRACEPARENT})
    assert r.status_code == 401
    [span] = [s for s in traced.exporter.get_finished_spans() if "streams" in s.name]
    assert span.name.startswith("GET /api/v1/streams/<")
    assert "private-notes" not in span.name  # the template, not the path
    assert span.kind == trace.SpanKind.SERVER
    assert _attrs(span)["http.response.status_code"] == 401
    assert _attrs(span)["relaybox.request_id"] == r.headers["X-Request-ID"]
    assert format(span.context.trace_id, "032x") == "0af7651916cd43dd8448eb211c80319c"
    assert span.parent is not None and format(span.parent.span_id, "016x") == \
        "b7ad6b7169203331"


async def test_a_publish_span_covers_commit_and_fanout(traced: Traced) -> None:
    a = await Device.connect(traced.server, traced.keys[0])
    b = await Device.connect(traced.server, traced.keys[1])
    pid = await a.publish("clipboard", {"text": "hi"})

    async def delivered() -> bool:
        return pid in a.acks and len(b.events.get("clipboard", {})) == 1

    await await_until(delivered, what="ack and delivery")
    await a.close()
    await b.close()
    [pub] = [s for s in traced.spans("relaybox.publish") if _attrs(s)["relaybox.event_id"] == pid]
    attrs = _attrs(pub)
    assert attrs["relaybox.stream"] == "clipboard"
    assert attrs["relaybox.device_id"] == traced.keys[0].device_id
    assert attrs["relaybox.result"] == "accepted"
    assert attrs["relaybox.seq"] == a.acks[pid][1]
    children = {s.name: s for s in traced.exporter.get_finished_spans()
                if s.parent is not None and s.parent.span_id == pub.context.span_id}
    assert set(children) == {"relaybox.commit", "relaybox.fanout"}
    commit, fanout = children["relaybox.commit"], children["relaybox.fanout"]
    assert _attrs(commit)["relaybox.batch_size"] >= 1
    times = [pub.start_time, commit.end_time, fanout.start_time, fanout.end_time, pub.end_time]
    assert times == sorted(times)  # commit, then fan-out, inside the publish
    assert "text" not in str(attrs) and "hi" not in attrs.values()  # never the body


async def test_log_lines_carry_the_current_trace_id(traced: Traced) -> None:
    span = tracing.publish_span("s", "id")
    assert isinstance(span, tracing.PublishSpan)
    with trace.use_span(span.span, end_on_exit=True):
        record = logging.LogRecord("relaybox.x", logging.INFO, __file__, 1, "m", None, None)
        logs.ContextFilter().filter(record)
    expected = format(span.span.get_span_context().trace_id, "032x")
    assert getattr(record, "trace_id", None) == expected


def test_tracing_off_loads_no_tracing_sdk(tmp_path: Path) -> None:
    code = f"""
import sys
from relaybox.config import load_settings
from relaybox.server.observability import tracing
from relaybox.server.app import create_app
create_app(load_settings({str(tmp_path)!r}, env={{}}))
span = tracing.publish_span("s", "id")
span.finish(None)
assert span is tracing.NOOP and not tracing.enabled()
loaded = [m for m in ("opentelemetry.sdk.trace", "opentelemetry.propagate") if m in sys.modules]
print(loaded)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60)
    assert out.stdout.strip() == "[]", out.stderr


def test_serve_refuses_an_endpoint_without_the_exporter(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The exporter is a third-party package: make it look uninstalled.
    monkeypatch.setitem(sys.modules, "opentelemetry.exporter.otlp.proto.http", None)
    from relaybox.cli import cli

    data = tmp_path / "data"
    relaybox_logger = logging.getLogger("relaybox")
    saved = relaybox_logger.handlers[:], relaybox_logger.propagate, relaybox_logger.level
    try:
        result = CliRunner().invoke(cli, ["--data-dir", str(data), "serve"], env={
            "RELAYBOX_TRACING_ENABLED": "true",
            "RELAYBOX_TRACING_OTLP_ENDPOINT": "http://127.0.0.1:4318"})
    finally:
        relaybox_logger.handlers[:], relaybox_logger.propagate = saved[0], saved[1]
        relaybox_logger.setLevel(saved[2])
    assert result.exit_code == 1
    assert result.stderr.strip() == (
        "error: tracing.otlp_endpoint is set but opentelemetry-exporter-otlp-proto-http is "
        "not installed: pip install 'relaybox[tracing]'")
    assert not data.exists()  # refused before anything was created


class _Collector(BaseHTTPRequestHandler):
    received: list[tuple[str, bytes]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.received.append((self.path, body))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        return None


@pytest.fixture
def collector() -> Iterator[tuple[str, list[tuple[str, bytes]]]]:
    received: list[tuple[str, bytes]] = []
    handler = type("Collector", (_Collector,), {"received": received})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", received
    httpd.shutdown()
    httpd.server_close()


async def test_spans_are_exported_over_otlp_http(
        tmp_path: Path, collector: tuple[str, list[tuple[str, bytes]]]) -> None:
    endpoint, received = collector
    srv = start_server(tmp_path / "data", tracing_enabled="true", tracing_otlp_endpoint=endpoint,
                       tracing_service_name="relaybox-export-test", metrics_enabled="false",
                       extra_env={"OTEL_BSP_SCHEDULE_DELAY": "50"})  # export within 50 ms
    try:
        async with httpx.AsyncClient() as client:
            assert (await client.get(srv.url + "/api/v1/status")).status_code == 200
            r = await client.get(srv.url + "/metrics")
            assert r.status_code == 404  # metrics.enabled = false

        async def exported() -> bool:
            return any(path == "/v1/traces" and b"relaybox-export-test" in body
                       and b"/api/v1/status" in body for path, body in received)

        await await_until(exported, timeout=20, what="an OTLP export")
        assert "Traceback" not in await asyncio.to_thread(srv.log)
    finally:
        stop_server(srv)
