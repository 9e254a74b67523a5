"""The scheduler inside ``serve``: retention every interval and a daily backup, once per cluster."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

import peewee as pw
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from relaybox.bus import SyncBus
from relaybox.config import Settings
from relaybox.services import backup, retention

log = logging.getLogger("relaybox.jobs")

RETENTION = "retention"
BACKUP = "backup"
FIRST_RETENTION_MAX_S = 300  # a server restarted often still prunes


class JobScheduler:
    """APScheduler in a background thread; jobs run in its threads, never on the event loop.

    ``job_runs`` / ``job_failures`` / ``job_skipped`` count per job name and
    ``last_backup_at`` is the unix time of the last good backup (exported as metrics).
    """

    def __init__(self, settings: Settings, db: pw.Database, *, lock_url: str | None,
                 clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.db = db
        self.lock_url = lock_url
        self.clock = clock
        self.job_runs: dict[str, int] = {RETENTION: 0, BACKUP: 0}
        self.job_failures: dict[str, int] = {RETENTION: 0, BACKUP: 0}
        self.job_skipped: dict[str, int] = {RETENTION: 0, BACKUP: 0}
        self.last_backup_at: float | None = None
        self.last_backup_file: Path | None = None
        self.last_retention: retention.RetentionReport | None = None
        self._stopping = threading.Event()
        self._aps: BackgroundScheduler | None = None

    # -- lifecycle ------------------------------------------------------------------------
    def start(self) -> None:
        s = self.settings
        aps = BackgroundScheduler(
            executors={"default": ThreadPoolExecutor(2)},
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": 600},
        )
        first = datetime.now().astimezone() + timedelta(
            seconds=min(s.retention_interval_s, FIRST_RETENTION_MAX_S))
        aps.add_job(self.run_retention, IntervalTrigger(seconds=s.retention_interval_s),
                    id=RETENTION, name=RETENTION, next_run_time=first)
        if s.backup_time:
            hh, _, mm = s.backup_time.partition(":")
            aps.add_job(self.run_backup, CronTrigger(hour=int(hh), minute=int(mm)),
                        id=BACKUP, name=BACKUP)
        aps.start()
        self._aps = aps
        log.info("scheduler started: retention every %ss, backup %s", s.retention_interval_s,
                 f"daily at {s.backup_time}" if s.backup_time else "disabled")

    def stop(self) -> None:
        """Stop; a running job finishes (retention stops at its next chunk)."""
        self._stopping.set()
        aps, self._aps = self._aps, None
        if aps is not None and aps.running:
            aps.shutdown(wait=True)

    def jobs(self) -> dict[str, Any]:
        """{job id: next run time} of the live scheduler."""
        return {j.id: j.next_run_time for j in self._aps.get_jobs()} if self._aps else {}

    # -- the jobs (called by APScheduler, or by tests with a fake ``now``) -----------------
    def run_retention(self, now: float | None = None) -> retention.RetentionReport | None:
        now = self.clock() if now is None else now
        ttl = max(1, int(self.settings.retention_interval_s * 0.9))
        if not self._lock(RETENTION, ttl):
            return None
        started = time.monotonic()
        self.job_runs[RETENTION] += 1
        try:
            report = retention.prune(self.db, self.settings, int(now * 1000),
                                     should_stop=self._stopping.is_set)
        except Exception:
            self.job_failures[RETENTION] += 1
            log.exception("retention job failed")
            return None
        finally:
            self._close_db()
        self.last_retention = report
        log.info("retention job done in %.2fs: %d events, %d pairing codes, "
                 "%d refresh tokens removed", time.monotonic() - started, report.events,
                 report.pairing_codes, report.refresh_tokens)
        return report

    def run_backup(self, now: float | None = None) -> Path | None:
        now = self.clock() if now is None else now
        # One lock per local day: every process fires at the same HH:MM, one of them wins.
        day = time.strftime("%Y-%m-%d", time.localtime(now))
        if not self._lock(f"{BACKUP}:{day}", 23 * 3600):
            return None
        started = time.monotonic()
        self.job_runs[BACKUP] += 1
        try:
            made = backup.create_backup(self.settings, auto=True, clock=lambda: now)
            removed = backup.prune_backups(self.settings.backups_path, self.settings.backup_keep)
        except Exception as exc:
            self.job_failures[BACKUP] += 1
            log.error("backup job failed: %s", getattr(exc, "detail", None) or exc)
            return None
        self.last_backup_at = now
        self.last_backup_file = made.file
        log.info("backup job done in %.2fs: %s (%d bytes), %d old backups removed",
                 time.monotonic() - started, made.file, made.bytes, len(removed))
        return made.file

    # -- helpers ------------------------------------------------------------------------------
    def _lock(self, name: str, ttl_s: int) -> bool:
        """True when this process should run the job (it took the cluster-wide lock)."""
        if self.lock_url is None:
            return True
        bus = SyncBus(self.lock_url)
        try:
            got = bus.acquire_lock(name, ttl_s)
        except Exception as exc:
            # Without Redis, running twice is better than not running: both jobs are
            # idempotent (retention) or harmless when repeated (one more backup file).
            log.warning("job lock %s unavailable (%s); running anyway", name, exc)
            return True
        finally:
            bus.close()
        if not got:
            self.job_skipped[name.split(":")[0]] += 1
            log.info("job %s already ran elsewhere; skipped", name)
        return got

    def _close_db(self) -> None:
        # Peewee connections are per thread: close the one this job thread opened.
        if not self.db.is_closed():
            self.db.close()


class SchedulerHost(Protocol):
    """What the jobs need of a server process (server/context.py ``ServerContext``)."""

    @property
    def settings(self) -> Settings: ...
    @property
    def db(self) -> pw.Database: ...
    @property
    def bus(self) -> object | None: ...  # only whether there is one: jobs lock through Redis

    scheduler: JobScheduler | None


async def start(ctx: SchedulerHost) -> None:
    """Start the jobs for this server process (ctx is the ServerContext)."""
    lock_url = ctx.settings.redis_url if ctx.bus is not None else None
    sched = JobScheduler(ctx.settings, ctx.db, lock_url=lock_url or None)
    await asyncio.get_running_loop().run_in_executor(None, sched.start)
    ctx.scheduler = sched


async def stop(ctx: SchedulerHost) -> None:
    """Stop the jobs, letting a running one finish off the event loop."""
    sched = ctx.scheduler
    if sched is not None:
        await asyncio.get_running_loop().run_in_executor(None, sched.stop)
