"""Prometheus metrics: the hooks the gateway calls, the HTTP middleware and ``/metrics``.

With ``serve --workers N`` every worker writes its values to files under
``<data_dir>/run/metrics-<serve pid>`` (prometheus_client's multiprocess mode) and any
worker answers a scrape with the sum of all. prometheus_client picks that mode when it is
first imported, so this module imports it only inside functions, after
``prepare_multiprocess`` ran. Metric names and meanings: docs/operations.md.

The per-event hook (``delivered``) only bumps plain integers; a sampler task moves them
into the collectors once a second (a multiprocess counter costs microseconds per call,
which the gateway's ~60 µs/event budget cannot spare: docs/performance.md).
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import hmac
import logging
import os
import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sanic import HTTPResponse, Request, Sanic

from relaybox import __version__
from relaybox.config import Settings
from relaybox.protocol.codes import CLOSE_REASONS, CloseCode
from relaybox.server import health, logs
from relaybox.server.errors import problem

log = logging.getLogger("relaybox.gateway")

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"  # prometheus_client's own switch
LATENCY_BUCKETS = (.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1.0, 2.5, 5.0, 10.0)
COMMIT_BUCKETS = (.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1.0, 2.5, 5.0)
BATCH_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)
HTTP_BUCKETS = (.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1.0, 2.5, 5.0)
HANDSHAKE_RESULTS = ("ok", "auth_failed", "revoked", "rate_limited", "timeout")
NACK_CODES = ("invalid", "too_large", "forbidden", "rate_limited", "unavailable", "conflict")
RATE_LIMITS = ("http", "gateway_publish", "handshake")
TASKS = ("retention", "backup")  # relaybox/jobs/scheduler.py
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
SAMPLE_EVERY_S = 1.0
BACKUP_SCAN_EVERY_S = 30.0

_now = time.time
_bisect = bisect.bisect_left


# -- multiprocess set-up (called by `relaybox serve` before the server starts) -------------
def prepare_multiprocess(run_dir: Path, pid: int | None = None) -> Path:
    """A fresh ``<run_dir>/metrics-<pid>`` for this serve process; stale ones are removed."""
    run_dir.mkdir(parents=True, exist_ok=True)
    for old in run_dir.glob("metrics-*"):
        with contextlib.suppress(ValueError):
            if not _pid_alive(int(old.name.partition("-")[2])):
                shutil.rmtree(old, ignore_errors=True)
    path = run_dir / f"metrics-{pid or os.getpid()}"
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir()
    # Worker processes inherit the environment: this is how they find the folder.
    os.environ[MULTIPROC_ENV] = str(path)
    return path


def cleanup_multiprocess(path: Path | None) -> None:
    if path is not None:
        shutil.rmtree(path, ignore_errors=True)
        if os.environ.get(MULTIPROC_ENV) == str(path):
            del os.environ[MULTIPROC_ENV]


def multiprocess_dir() -> Path | None:
    """The shared folder when this process writes multiprocess values, else None."""
    from prometheus_client import values

    path = os.environ.get(MULTIPROC_ENV)
    return Path(path) if path and values.ValueClass is not values.MutexValue else None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


class Metrics:
    """Hooks the gateway and API call; each updates Prometheus collectors."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.ctx: Any = None
        self.mp_dir: Path | None = None
        self.registry: Any = None
        # Fast-path accumulators, moved into the collectors by flush().
        self._delivered = 0
        self._bounds_ms = [b * 1000.0 for b in LATENCY_BUCKETS]
        self._lat_counts = [0] * (len(LATENCY_BUCKETS) + 1)
        self._lat_sum_ms = 0.0
        self._published_seen = 0
        self._jobs_seen: dict[tuple[str, str], int] = {}
        self._stuck: dict[tuple[str, str], tuple[int, float]] = {}
        self._backup_ts = 0.0
        self._backup_scanned_at = 0.0
        self._http_count: dict[tuple[str, str, int], Any] = {}
        self._http_dur: dict[tuple[str, str], Any] = {}
        self._task: asyncio.Task[None] | None = None

    # -- collectors ------------------------------------------------------------------------
    def setup(self, ctx: Any = None) -> None:
        """Create the collectors (in the process that serves; ``ctx`` is its ServerContext)."""
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.ctx = ctx
        self.mp_dir = multiprocess_dir()
        self.registry = CollectorRegistry()
        reg = None if self.mp_dir else self.registry

        def counter(name: str, doc: str, labels: tuple[str, ...] = ()) -> Any:
            return Counter(name, doc, labels, registry=reg)

        def gauge(name: str, doc: str, mode: str) -> Any:
            return Gauge(name, doc, registry=reg, multiprocess_mode=mode)  # type: ignore[arg-type]

        def histogram(name: str, doc: str, buckets: tuple[float, ...],
                      labels: tuple[str, ...] = ()) -> Any:
            return Histogram(name, doc, labels, registry=reg, buckets=buckets)

        self.sessions = gauge("relaybox_gateway_sessions", "Live gateway sessions.", "livesum")
        hs = counter("relaybox_gateway_handshakes_total", "Gateway handshakes by result.",
                     ("result",))
        self._hs = {r: hs.labels(r) for r in HANDSHAKE_RESULTS}
        self._hs_family = hs
        closed = counter("relaybox_gateway_sessions_closed_total",
                         "Gateway sessions ended, by close code.", ("code",))
        self._closed = {int(c): closed.labels(str(int(c))) for c in CloseCode}
        self._closed_family = closed
        self.published = counter("relaybox_events_published_total",
                                 "Events stored (repeats of a stored id not counted).")
        self.delivered_total = counter("relaybox_events_delivered_total",
                                       "Events sent live to a session.")
        nacked = counter("relaybox_events_nacked_total", "Publishes refused, by code.",
                         ("code",))
        self._nacked = {c: nacked.labels(c) for c in NACK_CODES}
        self._nacked_family = nacked
        self.batch_size = histogram("relaybox_commit_batch_events",
                                    "Publishes per commit (group commit).", BATCH_BUCKETS)
        self.commit_seconds = histogram("relaybox_commit_duration_seconds",
                                        "Time to write and commit one batch.", COMMIT_BUCKETS)
        self.latency = histogram("relaybox_delivery_latency_seconds",
                                 "From an event's commit to its live delivery.",
                                 LATENCY_BUCKETS)
        self.unacked = gauge("relaybox_delivery_unacked_events",
                             "Events connected devices have not acked yet (sum).", "livesum")
        self.unacked_max = gauge("relaybox_delivery_unacked_events_max",
                                 "Most unacked events of any one connected device.", "livemax")
        self.oldest_age = gauge("relaybox_delivery_oldest_unacked_age_seconds",
                                "Age of the oldest event a connected device has not acked.",
                                "livemax")
        self.behind = gauge("relaybox_delivery_sessions_behind",
                            "Connected devices with at least one unacked event.", "livesum")
        self.http_requests = counter("relaybox_http_requests_total",
                                     "HTTP requests by route template, method and status.",
                                     ("route", "method", "status"))
        self.http_seconds = histogram("relaybox_http_request_duration_seconds",
                                      "HTTP request latency by route template and method.",
                                      HTTP_BUCKETS, ("route", "method"))
        rl = counter("relaybox_rate_limited_total", "Requests refused by a rate limit.",
                     ("limit",))
        self._rl = {name: rl.labels(name) for name in RATE_LIMITS}
        # Label "task", not "job": Prometheus attaches its own "job" label to every series.
        self.job_runs = counter("relaybox_scheduler_runs_total", "Scheduled task runs.",
                                ("task",))
        self.job_failures = counter("relaybox_scheduler_failures_total",
                                    "Scheduled task failures.", ("task",))
        self.job_skipped = counter("relaybox_scheduler_skipped_total",
                                   "Scheduled tasks skipped (another process ran them).",
                                   ("task",))
        for family in (self.job_runs, self.job_failures, self.job_skipped):
            for task in TASKS:
                family.labels(task)
        self.backup_ts = gauge("relaybox_backup_last_success_timestamp_seconds",
                               "Unix time of the newest backup (0 = none).", "max")
        self.backup_enabled = gauge("relaybox_backup_enabled",
                                    "1 when the daily backup is scheduled.", "livemax")
        self.started = gauge("relaybox_start_time_seconds",
                             "Unix time this server started.", "min")
        self.memory = gauge("relaybox_memory_resident_bytes",
                            "Resident memory of the server processes (sum).", "livesum")
        self.started.set(_now())
        self.backup_enabled.set(1 if self.settings.backup_time else 0)
        self.registry.register(_LiveCollector(self))
        if self.mp_dir is None:
            from prometheus_client import PLATFORM_COLLECTOR, PROCESS_COLLECTOR

            for c in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR):
                with contextlib.suppress(ValueError):
                    self.registry.register(c)

    # -- hooks (protocol events) -----------------------------------------------------------
    def handshake(self, result: str) -> None:
        child = self._hs.get(result)
        if child is None:
            child = self._hs[result] = self._hs_family.labels(result)
        child.inc()
        if result == "rate_limited":
            self._rl["handshake"].inc()
        if result != "ok":
            log.info("handshake refused: %s", result)

    def session_opened(self) -> None:
        self._set_sessions()
        log.info("session opened")

    def session_closed(self, code: int | None) -> None:
        # None: the client ended the session; the server answered with 1000 (normal).
        key = int(code) if code is not None else int(CloseCode.NORMAL)
        child = self._closed.get(key)
        if child is None:
            child = self._closed[key] = self._closed_family.labels(str(key))
        child.inc()
        self._set_sessions()
        log.info("session closed: %s %s", key, CLOSE_REASONS.get(key, ""))

    def nacked(self, code: str) -> None:
        child = self._nacked.get(code)
        if child is None:
            child = self._nacked[code] = self._nacked_family.labels(code)
        child.inc()
        if code == "rate_limited":
            self._rl["gateway_publish"].inc()

    def delivered(self, event: Any) -> None:
        # Hot path (once per event and receiver): plain arithmetic only.
        self._delivered += 1
        lat = _now() * 1000.0 - event.ts
        if lat < 0.0:
            lat = 0.0
        self._lat_counts[_bisect(self._bounds_ms, lat)] += 1
        self._lat_sum_ms += lat

    def batch(self, size: int, seconds: float) -> None:
        self.batch_size.observe(size)
        self.commit_seconds.observe(seconds)
        ctx = self.ctx
        if ctx is not None:
            stored = ctx.eventlog.stats.events
            if stored > self._published_seen:
                self.published.inc(stored - self._published_seen)
            self._published_seen = stored

    def rate_limited(self, limit: str) -> None:
        """A request refused by the named limit (one of RATE_LIMITS)."""
        child = self._rl.get(limit)
        if child is not None:
            child.inc()

    def http_request(self, route: str, method: str, status: int, seconds: float) -> None:
        if method not in METHODS:
            method = "OTHER"
        key = (route, method, status)
        child = self._http_count.get(key)
        if child is None:
            child = self._http_count[key] = self.http_requests.labels(route, method, str(status))
        child.inc()
        hist = self._http_dur.get((route, method))
        if hist is None:
            hist = self._http_dur[(route, method)] = self.http_seconds.labels(route, method)
        hist.observe(seconds)
        if status == 429:
            self._rl["http"].inc()

    def _set_sessions(self) -> None:
        if self.ctx is not None:
            self.sessions.set(self.ctx.hub.count)

    # -- sampling ---------------------------------------------------------------------------
    def flush(self) -> None:
        """Move the hot-path accumulators into the collectors."""
        if self._delivered:
            n, self._delivered = self._delivered, 0
            self.delivered_total.inc(n)
            counts, self._lat_counts = self._lat_counts, [0] * len(self._lat_counts)
            total, self._lat_sum_ms = self._lat_sum_ms / 1000.0, 0.0
            _histogram_add(self.latency, counts, total)

    async def sample(self, now: float | None = None) -> None:
        """Flush, then read the state that is not event driven (lag, jobs, memory, backups)."""
        now = _now() if now is None else now
        self.flush()
        self.memory.set(_resident_bytes())
        ctx = self.ctx
        if ctx is None:
            return
        self._sample_lag(ctx, now)
        sched = getattr(ctx, "scheduler", None)
        if sched is not None:
            for attr, family in (("job_runs", self.job_runs), ("job_failures", self.job_failures),
                                 ("job_skipped", self.job_skipped)):
                self._sample_jobs(attr, getattr(sched, attr, None), family)
            last = getattr(sched, "last_backup_at", None)
            if isinstance(last, int | float) and last > self._backup_ts:
                self._backup_ts = float(last)
        if now - self._backup_scanned_at >= BACKUP_SCAN_EVERY_S:
            self._backup_scanned_at = now
            newest = await asyncio.get_running_loop().run_in_executor(
                None, _newest_backup, self.settings.backups_path)
            self._backup_ts = max(self._backup_ts, newest)
        self.backup_ts.set(self._backup_ts)

    def _sample_jobs(self, attr: str, counts: Any, family: Any) -> None:
        # The scheduler (relaybox/jobs/scheduler.py) keeps plain counts; add what is new.
        if not isinstance(counts, Mapping):
            return
        for job, n in counts.items():
            if not isinstance(n, int):
                continue
            child = family.labels(str(job))
            key = (attr, str(job))
            seen = self._jobs_seen.get(key, 0)
            if n > seen:
                child.inc(n - seen)
            self._jobs_seen[key] = n

    def _sample_lag(self, ctx: Any, now: float) -> None:
        """Unacked events per connected device, summarised without per-device labels."""
        now_ms = now * 1000.0
        hub = ctx.hub
        total = most = behind = 0
        oldest_ms = 0.0
        stuck: dict[tuple[str, str], tuple[int, float]] = {}
        for session in list(hub.by_device.values()):
            lag = 0
            for name, st in list(session.streams.items()):
                # Sent and not acked, plus not sent yet. (Not known_head - acked: a device
                # never acks its own events, which are not delivered to it.)
                inflight = len(st.inflight)
                n = inflight + max(0, st.known_head - st.done)
                if n <= 0:
                    continue
                lag += n
                first = st.inflight[0] if inflight else st.done + 1
                nxt = hub.ring_after(session.user_id, name, first - 1, 1)
                if nxt and nxt[0].seq == first:
                    age = now_ms - nxt[0].ts
                else:
                    # Not in the recent ring: time since this position last moved (a floor).
                    key = (session.device_id, name)
                    prev = self._stuck.get(key)
                    since = prev[1] if prev is not None and prev[0] == first else now_ms
                    stuck[key] = (first, since)
                    age = now_ms - since
                oldest_ms = max(oldest_ms, age)
            if lag:
                behind += 1
                total += lag
                most = max(most, lag)
        self._stuck = stuck
        self.unacked.set(total)
        self.unacked_max.set(most)
        self.behind.set(behind)
        self.oldest_age.set(oldest_ms / 1000.0)

    async def run_sampler(self) -> None:
        while True:
            await asyncio.sleep(SAMPLE_EVERY_S)
            try:
                await self.sample()
            except Exception:
                log.exception("metrics sampling failed")

    # -- exposition -----------------------------------------------------------------------------
    def render(self) -> bytes:
        """The text exposition (blocking: reads the shared files in multiprocess mode)."""
        from prometheus_client import CollectorRegistry, generate_latest

        if self.mp_dir is None:
            return bytes(generate_latest(self.registry))
        from prometheus_client.multiprocess import MultiProcessCollector

        reg = CollectorRegistry()
        MultiProcessCollector(reg, str(self.mp_dir))
        reg.register(_LiveCollector(self))
        return bytes(generate_latest(reg))

    def mark_dead(self) -> None:
        if self.mp_dir is not None:
            from prometheus_client import multiprocess

            with contextlib.suppress(Exception):
                multiprocess.mark_process_dead(os.getpid(), str(self.mp_dir))


class _LiveCollector:
    """Values read at scrape time by the answering process: dependency health, version."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> list[Any]:
        from prometheus_client.core import GaugeMetricFamily

        out = []
        info = GaugeMetricFamily("relaybox_build_info", "relaybox version.", labels=["version"])
        info.add_metric([__version__], 1)
        out.append(info)
        ctx = self.metrics.ctx
        monitor = _monitor(ctx)
        if monitor is not None:
            snap = monitor.snapshot()
            out.append(GaugeMetricFamily("relaybox_database_up",
                                         "1 when the database answers.", value=int(snap.database)))
            if ctx.bus is not None:
                out.append(GaugeMetricFamily("relaybox_redis_up", "1 when Redis answers.",
                                             value=int(snap.redis)))
        return out


def _monitor(ctx: Any) -> health.HealthMonitor | None:
    return getattr(ctx, "health", None) if ctx is not None else None


def _histogram_add(hist: Any, counts: list[int], total: float) -> None:
    """Add pre-bucketed observations to a prometheus_client Histogram."""
    buckets = getattr(hist, "_buckets", None)
    sum_value = getattr(hist, "_sum", None)
    if buckets is not None and sum_value is not None and len(buckets) == len(counts):
        for value, n in zip(buckets, counts, strict=True):
            if n:
                value.inc(n)
        sum_value.inc(total)
        return
    # Fallback should the library's internals change: one observe per event.
    bounds = [*LATENCY_BUCKETS, LATENCY_BUCKETS[-1] * 2]
    for bound, n in zip(bounds, counts, strict=True):
        for _ in range(n):
            hist.observe(bound)


def _resident_bytes() -> int:
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _newest_backup(directory: Path) -> float:
    try:
        return max((p.stat().st_mtime for p in directory.glob("relaybox-*.tar.gz")),
                   default=0.0)
    except OSError:
        return 0.0


# -- the app side ---------------------------------------------------------------------------------
def install(app: Sanic, settings: Settings) -> None:
    """Register /metrics and the request middleware on ``app``.

    Also installs the log context middleware and the health monitor, which the metrics
    read (both idempotent, so app.py may install them itself).
    """
    logs.install(app, settings)
    health.install(app, settings)
    metrics = Metrics(settings) if settings.metrics_enabled else None
    app.ctx.metrics = metrics
    if metrics is None:
        return

    @app.before_server_start
    async def start_metrics(app: Sanic) -> None:
        ctx = app.ctx.relay
        ctx.health = getattr(app.ctx, "health", None)
        metrics.setup(ctx)
        metrics._task = asyncio.get_running_loop().create_task(
            metrics.run_sampler(), name="relaybox-metrics")

    @app.after_server_stop
    async def stop_metrics(app: Sanic) -> None:
        if metrics._task is not None:
            metrics._task.cancel()
            with contextlib.suppress(BaseException):
                await metrics._task
        if metrics.registry is not None:
            metrics.flush()
            metrics.mark_dead()

    @app.on_request
    async def metrics_start(request: Request) -> None:
        request.ctx.metrics_t0 = time.perf_counter()

    @app.on_response
    async def metrics_end(request: Request, response: HTTPResponse) -> None:
        t0 = getattr(request.ctx, "metrics_t0", None)
        if t0 is None or response is None or metrics.registry is None:
            return
        route = request.route
        if route is not None and getattr(route.extra, "websocket", False):
            return  # a gateway session is not a request: its metrics are the gateway's
        # The route template, never the raw path: label values must stay few.
        name = "/" + route.path if route is not None else "unmatched"
        metrics.http_request(name, request.method, response.status, time.perf_counter() - t0)

    token = settings.metrics_token.encode()

    async def metrics_route(request: Request) -> HTTPResponse:
        if token:
            sent = request.headers.get("Authorization", "").encode()
            if not hmac.compare_digest(sent, b"Bearer " + token):
                return problem(401, "unauthorized", "metrics need the metrics token", request,
                               {"WWW-Authenticate": 'Bearer realm="relaybox-metrics"'})
        monitor = _monitor(metrics.ctx)
        if monitor is not None:
            await monitor.check()
        metrics.flush()
        body = await asyncio.get_running_loop().run_in_executor(None, metrics.render)
        from prometheus_client import CONTENT_TYPE_LATEST

        return HTTPResponse(body, content_type=CONTENT_TYPE_LATEST)

    _document(metrics_route)
    app.add_route(metrics_route, "/metrics", methods=["GET"], name="metrics")


def _document(handler: Any) -> None:
    """Describe /metrics in the OpenAPI document (http-api.md lists it)."""
    try:
        from sanic_ext.extensions.openapi import openapi
        from sanic_ext.extensions.openapi.builders import OperationStore
    except ImportError:  # pragma: no cover - sanic-ext is a dependency
        return
    openapi.definition(summary="Prometheus metrics",
                       description="Text exposition format. When metrics.token is set, "
                                   "'Authorization: Bearer <metrics token>' is needed.")(handler)
    op = OperationStore()[handler]
    op.responses["200"] = {"description": "OK", "content": {
        "text/plain": {"schema": {"type": "string"}}}}
    op.responses["401"] = {"description": "Unauthorized", "content": {
        "application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}}
