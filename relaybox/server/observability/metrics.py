"""Prometheus metrics: the collectors, the hooks the gateway calls, sampling and exposition.

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
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from relaybox import __version__
from relaybox.aio import cancel_and_wait
from relaybox.config import Settings
from relaybox.protocol.codes import CLOSE_REASONS, CloseCode
from relaybox.server.observability import health, metrics_state, prom

if TYPE_CHECKING:
    from relaybox.server.context import ServerContext

log = logging.getLogger("relaybox.gateway")

LATENCY_BUCKETS = (.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1.0, 2.5, 5.0, 10.0)
COMMIT_BUCKETS = (.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1.0, 2.5, 5.0)
BATCH_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)
HTTP_BUCKETS = (.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1.0, 2.5, 5.0)
HANDSHAKE_RESULTS = ("ok", "auth_failed", "revoked", "rate_limited", "timeout")
NACK_CODES = ("invalid", "too_large", "forbidden", "rate_limited", "unavailable", "conflict")
RATE_LIMITS = ("http", "gateway_publish", "handshake")
# Connections ended by a limit (docs/security.md Limits).
CONNECTION_LIMITS = ("outbox_full", "per_address", "max_connections", "header_timeout")
KEY_SOURCES = ("cache", "database")  # where a handshake found the device's key
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# Label "task", not "job": Prometheus adds its own "job" label to every series it scrapes.
TASKS = ("retention", "backup")  # relaybox/jobs/scheduler.py
SAMPLE_EVERY_S = 1.0
BACKUP_SCAN_EVERY_S = 30.0

_now = time.time
_bisect = bisect.bisect_left


class Metrics:
    """Hooks the gateway and API call; each updates Prometheus collectors."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.ctx: ServerContext | None = None
        self.mp_dir: Path | None = None
        self.registry: Any = None
        # Fast-path accumulators, moved into the collectors by flush().
        self._delivered = 0
        self._bounds_ms = [b * 1000.0 for b in LATENCY_BUCKETS]
        self._lat_counts = [0] * (len(LATENCY_BUCKETS) + 1)
        self._lat_sum_ms = 0.0
        self._published_seen = 0
        self._lag = metrics_state.LagReader()
        self._task_counts = metrics_state.CountDeltas()
        self._backup_ts = 0.0
        self._backup_scanned_at = 0.0
        self._cpu_seen: dict[int, float] = {}  # pid -> CPU seconds already counted
        self._http_count: dict[tuple[str, str, int], Any] = {}
        self._http_dur: dict[tuple[str, str], Any] = {}
        self._task: asyncio.Task[None] | None = None

    # -- collectors ------------------------------------------------------------------------
    def setup(self, ctx: ServerContext | None = None) -> None:
        """Create the collectors (in the process that serves; ``ctx`` is its ServerContext)."""
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.ctx = ctx
        self.mp_dir = prom.multiprocess_dir()
        self.registry = CollectorRegistry()
        reg = None if self.mp_dir else self.registry

        def gauge(name: str, doc: str, mode: str) -> Any:
            # mode: how the values of several worker processes combine.
            return Gauge(name, doc, registry=reg, multiprocess_mode=mode)  # type: ignore[arg-type]

        def family(name: str, doc: str, label: str, known: tuple[str, ...]) -> prom.Family:
            return prom.Family(Counter(name, doc, (label,), registry=reg), known)

        def histogram(name: str, doc: str, buckets: tuple[float, ...]) -> Any:
            return Histogram(name, doc, registry=reg, buckets=buckets)

        self.sessions = gauge("relaybox_gateway_sessions", "Live gateway sessions.", "livesum")
        self.handshakes = family("relaybox_gateway_handshakes_total",
                                 "Gateway handshakes by result.", "result", HANDSHAKE_RESULTS)
        self.closed = family("relaybox_gateway_sessions_closed_total",
                             "Gateway sessions ended, by close code.", "code",
                             tuple(str(int(c)) for c in CloseCode))
        self.published = Counter("relaybox_events_published_total",
                                 "Events stored (repeats of a stored id not counted).",
                                 registry=reg)
        self.delivered_total = Counter("relaybox_events_delivered_total",
                                       "Events sent live to a session.", registry=reg)
        self.nacks = family("relaybox_events_nacked_total", "Publishes refused, by code.",
                            "code", NACK_CODES)
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
        self.http_requests = Counter("relaybox_http_requests_total",
                                     "HTTP requests by route template, method and status.",
                                     ("route", "method", "status"), registry=reg)
        self.http_seconds = Histogram("relaybox_http_request_duration_seconds",
                                      "HTTP request latency by route template and method.",
                                      ("route", "method"), registry=reg, buckets=HTTP_BUCKETS)
        self.conn_limited = family("relaybox_connections_refused_total",
                                   "Connections refused or closed by a connection limit.",
                                   "limit", CONNECTION_LIMITS)
        self.key_lookups = family("relaybox_device_key_lookups_total",
                                  "Handshakes by where the device's key was checked.",
                                  "source", KEY_SOURCES)
        self.limited = family("relaybox_rate_limited_total",
                              "Requests refused by a rate limit.", "limit", RATE_LIMITS)
        self.tasks = {
            "job_runs": family("relaybox_scheduler_runs_total", "Scheduled task runs.",
                               "task", TASKS),
            "job_failures": family("relaybox_scheduler_failures_total",
                                   "Scheduled task failures.", "task", TASKS),
            "job_skipped": family("relaybox_scheduler_skipped_total",
                                  "Scheduled tasks skipped (another process ran them).",
                                  "task", TASKS),
        }
        self.backup_ts = gauge("relaybox_backup_last_success_timestamp_seconds",
                               "Unix time of the newest backup (0 = none).", "max")
        self.backup_enabled = gauge("relaybox_backup_enabled",
                                    "1 when the daily backup is scheduled.", "livemax")
        self.started = gauge("relaybox_start_time_seconds", "Unix time this server started.",
                             "min")
        self.memory = gauge("relaybox_memory_resident_bytes",
                            "Resident memory of the server processes (sum).", "livesum")
        # prometheus_client's process collector does not work in multiprocess mode (which
        # `relaybox serve` always uses), so CPU time is counted here, writers included.
        self.cpu = Counter("relaybox_cpu_seconds_total",
                           "CPU time used by the server processes (user and system).",
                           registry=reg)
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
        self.handshakes(result).inc()
        if result == "rate_limited":
            self.limited("handshake").inc()
        if result != "ok":
            log.info("handshake refused: %s", result)

    def session_opened(self) -> None:
        self._set_sessions()
        log.info("session opened")

    def session_closed(self, code: int | None) -> None:
        # None: the client ended the session; the server answered with 1000 (normal).
        key = str(int(code) if code is not None else int(CloseCode.NORMAL))
        self.closed(key).inc()
        self._set_sessions()
        log.info("session closed: %s %s", key, CLOSE_REASONS.get(int(key), ""))

    def connection_limited(self, limit: str) -> None:
        self.conn_limited(limit).inc()

    def outbox_overflow(self) -> None:
        self.conn_limited("outbox_full").inc()

    def key_lookup(self, source: str) -> None:
        self.key_lookups(source).inc()

    def nacked(self, code: str) -> None:
        self.nacks(code).inc()
        if code == "rate_limited":
            self.limited("gateway_publish").inc()

    def delivered(self, committed_ms: int) -> None:
        """An event committed at ``committed_ms`` (Unix ms) was sent to a session."""
        # Hot path (once per event and receiver): plain arithmetic only.
        self._delivered += 1
        lat = _now() * 1000.0 - committed_ms
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
        if limit in RATE_LIMITS:
            self.limited(limit).inc()

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
            self.limited("http").inc()

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
            prom.histogram_add(self.latency, LATENCY_BUCKETS, counts, total)

    async def sample(self, now: float | None = None) -> None:
        """Flush, then read the state that is not event driven (lag, tasks, memory, backups)."""
        now = _now() if now is None else now
        self.flush()
        ctx = self.ctx
        memory = metrics_state.resident_bytes()
        writer = getattr(getattr(ctx, "eventlog", None), "writer_pid", None)
        if writer:
            memory += metrics_state.resident_bytes(writer)  # the writer process
        self.memory.set(memory)
        self._count_cpu([0, writer] if writer else [0])
        if ctx is None:
            return
        lag = self._lag.read(ctx.hub, now)
        self.unacked.set(lag.total)
        self.unacked_max.set(lag.most)
        self.behind.set(lag.behind)
        self.oldest_age.set(lag.oldest_s)
        sched = getattr(ctx, "scheduler", None)
        if sched is not None:
            for count, task, increase in self._task_counts.read(sched):
                self.tasks[count](task).inc(increase)
            self._backup_ts = max(self._backup_ts, metrics_state.last_backup_at(sched))
        if now - self._backup_scanned_at >= BACKUP_SCAN_EVERY_S:
            self._backup_scanned_at = now
            newest = await asyncio.get_running_loop().run_in_executor(
                None, metrics_state.newest_backup, self.settings.backups_path)
            self._backup_ts = max(self._backup_ts, newest)
        self.backup_ts.set(self._backup_ts)

    def _count_cpu(self, pids: list[int]) -> None:
        """Add the CPU time ``pids`` (0: this process) used since the last sample."""
        seen = {}
        for pid in pids:
            used = cpu_seconds(pid or None)
            last = self._cpu_seen.get(pid, 0.0)
            if used > last:
                self.cpu.inc(used - last)
            seen[pid] = max(used, last)
        self._cpu_seen = seen  # a replaced writer's successor is counted from its start

    def start_sampler(self) -> None:
        """Sample server state every SAMPLE_EVERY_S on the running loop (``run_sampler``)
        until ``stop_sampler``."""
        self._task = asyncio.get_running_loop().create_task(self.run_sampler(),
                                                            name="relaybox-metrics")

    async def stop_sampler(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None

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
            prom.mark_process_dead(self.mp_dir)


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
        monitor = health_monitor(ctx)
        if ctx is not None and monitor is not None:
            snap = monitor.snapshot()
            out.append(GaugeMetricFamily("relaybox_database_up",
                                         "1 when the database answers.", value=int(snap.database)))
            if ctx.bus is not None:
                out.append(GaugeMetricFamily("relaybox_redis_up", "1 when Redis answers.",
                                             value=int(snap.redis)))
        if self.metrics.settings.replication_enabled:
            from relaybox.services.replication import lag_seconds

            # Read from the file the supervising serve process keeps (backup.md).
            lag = lag_seconds(self.metrics.settings)
            if lag is not None:
                out.append(GaugeMetricFamily(
                    "relaybox_replication_lag_seconds",
                    "Seconds since the replica last held every commit Litestream had read "
                    "from the WAL (replication.enabled).", value=lag))
        return out


def cpu_seconds(pid: int | None = None) -> float:
    """User plus system CPU seconds of this process, or of process ``pid`` (0 if gone)."""
    if pid is None:
        return time.process_time()
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rpartition(b")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0


def health_monitor(ctx: ServerContext | None) -> health.HealthMonitor | None:
    return getattr(ctx, "health", None) if ctx is not None else None
