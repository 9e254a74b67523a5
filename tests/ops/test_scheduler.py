"""The scheduler: jobs driven with a fake clock, counted, locked once per cluster via Redis."""

from __future__ import annotations

import dataclasses
import json
import time
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace

import pytest

from relaybox.bus import SyncBus
from relaybox.config import Settings, load_settings
from relaybox.jobs import scheduler
from relaybox.jobs.scheduler import JobScheduler
from relaybox.store.append import append_now
from relaybox.store.db import open_database
from relaybox.store.events import PublishRequest
from relaybox.store.models import Event
from tests.support import seed

DAY = 86400.0
NOW = 1_800_000_000.0  # fake unix time for the jobs


@pytest.fixture
def settings(data_dir: Path) -> Settings:
    return load_settings(data_dir, env={})


def test_retention_job_prunes_as_of_the_injected_time(settings: Settings) -> None:
    dev = seed(settings.data_dir, {"alice": 1})["alice"][0]
    s = dataclasses.replace(settings, retention_days=30)
    db = open_database(s)
    old = int((NOW - 40 * DAY) * 1000)
    append_now(db, [PublishRequest(dev.user_id, dev.device_id,
                                   f"01900000-0000-7000-8000-00000000000{i}", "notes", "1")
                    for i in range(3)], lambda: old)
    sched = JobScheduler(s, db, lock_url=None)
    report = sched.run_retention(now=NOW)
    assert report is not None and report.events >= 3
    assert Event.select().where(Event.stream == "notes").count() == 0
    assert sched.job_runs["retention"] == 1 and sched.job_failures["retention"] == 0
    assert sched.last_retention is report
    db.close()


def test_backup_job_names_by_time_keeps_the_last_n_and_not_manual(settings: Settings) -> None:
    from relaybox.services.backup import create_backup

    s = dataclasses.replace(settings, backup_keep=2)
    manual = create_backup(s).file
    db = open_database(s)
    sched = JobScheduler(s, db, lock_url=None)
    made = [sched.run_backup(now=NOW + d * DAY) for d in range(3)]
    assert all(p is not None for p in made)
    stamps = [time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(NOW + d * DAY)) for d in range(3)]
    assert [p.name for p in made] == [f"relaybox-auto-{t}.tar.gz" for t in stamps]  # type: ignore[union-attr]
    left = sorted(p.name for p in s.backups_path.glob("*.tar.gz"))
    assert left == sorted([manual.name, made[1].name, made[2].name])  # type: ignore[union-attr]
    assert sched.job_runs["backup"] == 3 and sched.last_backup_at == NOW + 2 * DAY
    db.close()


def test_a_failing_backup_is_counted_not_raised(settings: Settings, tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    s = dataclasses.replace(settings, backup_dir=str(blocker))
    sched = JobScheduler(s, open_database(s), lock_url=None)
    assert sched.run_backup(now=NOW) is None
    assert sched.job_runs["backup"] == 1 and sched.job_failures["backup"] == 1
    assert sched.last_backup_at is None


def test_each_job_runs_once_across_processes(settings: Settings, redis_url: str) -> None:
    db = open_database(settings)
    # Two server processes (or nodes) with one Redis: their schedulers fire together.
    a = JobScheduler(settings, db, lock_url=redis_url)
    b = JobScheduler(settings, db, lock_url=redis_url)
    made = [a.run_backup(now=NOW), b.run_backup(now=NOW + 60)]
    assert made[0] is not None and made[1] is None
    assert (a.job_runs["backup"], b.job_runs["backup"], b.job_skipped["backup"]) == (1, 0, 1)
    # The next day is a new lock: one of them runs again.
    assert b.run_backup(now=NOW + DAY) is not None
    assert a.run_backup(now=NOW + DAY + 5) is None
    ran = [a.run_retention(now=NOW), b.run_retention(now=NOW)]
    assert (ran[0] is not None, ran[1] is None) == (True, True)
    assert b.job_skipped["retention"] == 1
    bus = SyncBus(redis_url)
    try:
        ttl = bus.redis.ttl("relaybox:lock:retention")
        assert 0 < ttl <= settings.retention_interval_s  # type: ignore[operator]
    finally:
        bus.close()
    db.close()


def test_a_job_still_runs_when_redis_is_gone(settings: Settings, tmp_path: Path) -> None:
    db = open_database(settings)
    sched = JobScheduler(settings, db, lock_url=f"unix://{tmp_path}/no-such.sock")
    assert sched.run_retention(now=NOW) is not None
    assert sched.job_runs["retention"] == 1
    db.close()


async def test_start_registers_both_jobs_and_stop_ends_them(settings: Settings) -> None:
    s = dataclasses.replace(settings, backup_time="04:15", retention_interval_s=3600)
    db = open_database(s)
    ctx = SimpleNamespace(settings=s, db=db, bus=None)
    await scheduler.start(ctx)
    sched: JobScheduler = ctx.scheduler
    try:
        jobs = sched.jobs()
        assert set(jobs) == {"retention", "backup"}
        first = jobs["retention"].timestamp() - time.time()
        assert 0 < first <= scheduler.FIRST_RETENTION_MAX_S + 1
        nxt: datetime = jobs["backup"]
        assert (nxt.hour, nxt.minute) == (4, 15)
        assert sched.lock_url is None  # no bus: a single process, no lock needed
    finally:
        await scheduler.stop(ctx)
    assert sched.jobs() == {}
    db.close()


async def test_an_empty_backup_time_disables_the_backup_job(settings: Settings) -> None:
    s = dataclasses.replace(settings, backup_time="", redis_url="redis://127.0.0.1:1")
    ctx = SimpleNamespace(settings=s, db=open_database(s), bus=object())
    await scheduler.start(ctx)
    try:
        assert set(ctx.scheduler.jobs()) == {"retention"}
        assert ctx.scheduler.lock_url == "redis://127.0.0.1:1"  # serve's Redis takes locks
    finally:
        await scheduler.stop(ctx)


def test_counters_are_plain_dicts_for_the_metrics_exporter(settings: Settings) -> None:
    sched = JobScheduler(settings, open_database(settings), lock_url=None)
    assert json.loads(json.dumps({"runs": sched.job_runs, "failures": sched.job_failures})) == {
        "runs": {"retention": 0, "backup": 0}, "failures": {"retention": 0, "backup": 0}}
    assert sched.last_backup_at is None
