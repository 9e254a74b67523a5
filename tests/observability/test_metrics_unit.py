"""Metrics inside one process: the hot-path accumulators, task counters, the shared folder."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from relaybox.config import Settings, load_settings
from relaybox.jobs.scheduler import JobScheduler
from relaybox.server.gateway.hub import Hub
from relaybox.server.observability import prom
from relaybox.server.observability.metrics import Metrics
from relaybox.server.observability.prom import MULTIPROC_ENV
from relaybox.store.db import open_database
from tests.observability.helpers import parse, value
from tests.support import seed


def _settings(tmp_path: Path) -> Settings:
    return load_settings(tmp_path / "data", env={})


def _metrics(settings: Settings, ctx: object = None) -> Metrics:
    m = Metrics(settings)
    m.setup(ctx)
    assert m.mp_dir is None  # a test process: the plain in-memory registry
    return m


def _samples(m: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return parse(m.render().decode())[0]


def test_deliveries_are_bucketed_like_observations(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import relaybox.server.observability.metrics as metrics_module

    m = _metrics(_settings(tmp_path))
    now_ms = time.time() * 1000
    # The clock stands still: each event's age is exactly what the test gives it.
    monkeypatch.setattr(metrics_module, "_now", lambda: now_ms / 1000)
    ages_ms = [0.0, 3.0, 40.0, 700.0, 20_000.0]
    for age in ages_ms:
        m.delivered(int(now_ms - age))
    s = _samples(m)
    assert value(s, "relaybox_events_delivered_total") == 0  # not flushed yet
    m.flush()
    s = _samples(m)
    assert value(s, "relaybox_events_delivered_total") == 5
    bucket = "relaybox_delivery_latency_seconds_bucket"
    # Each age lands in the first bucket whose bound is >= it (cumulative counts).
    assert value(s, bucket, le="0.001") == 1
    assert value(s, bucket, le="0.005") == 2
    assert value(s, bucket, le="0.05") == 3
    assert value(s, bucket, le="1.0") == 4
    assert value(s, bucket, le="10.0") == 4
    assert value(s, bucket, le="+Inf") == 5
    assert value(s, "relaybox_delivery_latency_seconds_count") == 5
    assert value(s, "relaybox_delivery_latency_seconds_sum") == pytest.approx(20.743, abs=0.5)


def test_http_methods_outside_the_standard_set_share_one_label(tmp_path: Path) -> None:
    m = _metrics(_settings(tmp_path))
    for method in ("BREW", "PROPFIND", "GET"):
        m.http_request("/api/v1/status", method, 200, 0.002)
    s = _samples(m)
    assert value(s, "relaybox_http_requests_total", route="/api/v1/status", method="OTHER",
                 status="200") == 2
    assert value(s, "relaybox_http_requests_total", route="/api/v1/status", method="GET",
                 status="200") == 1
    m.http_request("/api/v1/status", "GET", 429, 0.001)
    assert value(_samples(m), "relaybox_rate_limited_total", limit="http") == 1


async def test_scheduler_runs_failures_and_backup_time(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    seed(settings.data_dir, {"alice": 1})
    db = open_database(settings)
    sched = JobScheduler(settings, db, lock_url=None)
    ctx = _Ctx(Hub("node", None), sched)
    m = _metrics(settings, ctx)
    s = _samples(m)
    assert value(s, "relaybox_scheduler_runs_total", task="backup") == 0  # present from start
    assert value(s, "relaybox_backup_last_success_timestamp_seconds") == 0
    assert value(s, "relaybox_backup_enabled") == 1

    made = sched.run_backup()
    assert made is not None
    await m.sample()
    s = _samples(m)
    assert value(s, "relaybox_scheduler_runs_total", task="backup") == 1
    assert value(s, "relaybox_scheduler_failures_total", task="backup") == 0
    assert value(s, "relaybox_backup_last_success_timestamp_seconds") == pytest.approx(
        made.stat().st_mtime, abs=5)

    # A failing run: the backup folder cannot be created (a file is in the way).
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    sched.settings = dataclasses.replace(settings, backup_dir=str(blocker / "sub"))
    assert sched.run_backup() is None
    await m.sample()
    await m.sample()  # counts are added once, not again on every sample
    s = _samples(m)
    assert value(s, "relaybox_scheduler_runs_total", task="backup") == 2
    assert value(s, "relaybox_scheduler_failures_total", task="backup") == 1
    db.close()


async def test_backup_time_comes_from_the_backup_folder_without_a_scheduler(
        tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    settings.backups_path.mkdir(parents=True)
    old = settings.backups_path / "relaybox-20260101T000000Z.tar.gz"
    old.write_bytes(b"x")
    os.utime(old, (1_700_000_000, 1_700_000_000))
    (settings.backups_path / "unrelated.txt").write_text("newer, but not a backup")
    m = _metrics(settings, _Ctx(Hub("node", None), None))
    await m.sample()
    assert value(_samples(m), "relaybox_backup_last_success_timestamp_seconds") == 1_700_000_000


def test_prepare_multiprocess_clears_folders_of_dead_servers(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(MULTIPROC_ENV, "")  # restored after the test
    run = tmp_path / "run"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    stale = run / f"metrics-{int(dead.stdout)}"
    live = run / f"metrics-{os.getppid()}"
    for d in (stale, live):
        d.mkdir(parents=True)
        (d / "counter_1.db").write_bytes(b"")
    mine = prom.prepare_multiprocess(run)
    assert mine == run / f"metrics-{os.getpid()}" and mine.is_dir()
    assert os.environ[MULTIPROC_ENV] == str(mine)
    assert not stale.exists()
    assert live.exists()  # another running server's folder is left alone
    prom.cleanup_multiprocess(mine)
    assert not mine.exists()
    assert MULTIPROC_ENV not in os.environ


@dataclasses.dataclass
class _Ctx:
    """The two parts of a ServerContext that sampling reads."""

    hub: Hub
    scheduler: JobScheduler | None
    bus: None = None
