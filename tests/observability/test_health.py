"""The circuit breaker and the health monitor, on a real SQLite database and a moved clock."""

from __future__ import annotations

import asyncio
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import peewee as pw
import pytest

from relaybox.server.gateway.hub import Hub
from relaybox.server.observability.health import (
    CLOSED,
    HALF_OPEN,
    OPEN,
    CircuitBreaker,
    HealthMonitor,
)
from relaybox.store.db import make_sqlite
from relaybox.store.front import EventLog


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_breaker_opens_then_lets_one_trial_through_after_its_pause() -> None:
    clock = Clock()
    br = CircuitBreaker("redis", base_s=1.0, max_s=4.0, clock=clock)
    assert br.allow() and br.up
    assert br.failure("connection refused") is True  # closed -> open: an outage
    assert br.state == OPEN and not br.up
    assert not br.allow()  # callers get "down" at once: no retry storm
    clock.now += 1.25  # past the first pause (1 s, jitter at most +20 %)
    assert br.allow() and br.state == HALF_OPEN
    assert not br.allow()  # only one trial at a time
    assert br.failure("still refused") is False  # open again, not a new outage
    assert not br.allow()
    clock.now += 2.5  # the pause doubled to 2 s
    assert br.allow()
    assert br.success() is True  # a recovery
    assert br.state == CLOSED and br.allow() and br.last_error == ""


def test_breaker_pause_grows_to_its_cap() -> None:
    clock = Clock()
    br = CircuitBreaker("db", base_s=0.5, max_s=4.0, clock=clock)
    pauses = []
    for _ in range(8):
        br.failure("down")
        pauses.append(br.retry_at - clock.now)
        clock.now = br.retry_at
        assert br.allow()
    assert pauses[0] == pytest.approx(0.5, rel=0.21)
    assert pauses[1] == pytest.approx(1.0, rel=0.21)
    assert all(p <= 4.0 * 1.2 for p in pauses)
    assert pauses[-1] >= 4.0 * 0.8


def test_a_threshold_tolerates_single_failures() -> None:
    br = CircuitBreaker("x", threshold=3, clock=Clock())
    assert br.failure() is False and br.failure() is False and br.up
    assert br.failure() is True and not br.up


@dataclass
class _Ctx:
    db: pw.Database
    eventlog: EventLog
    hub: Hub
    bus: None = None


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


async def test_monitor_reports_a_database_that_cannot_be_opened_and_its_return(
        tmp_path: Path) -> None:
    folder = tmp_path / "db"
    db = make_sqlite(folder / "relaybox.db")
    shutil.rmtree(folder)  # the database file cannot be opened any more
    eventlog = EventLog(db, read_threads=1)
    clock = Clock()
    monitor = HealthMonitor(_Ctx(db, eventlog, Hub("n", None)), clock=clock)  # type: ignore[arg-type]
    caplog = Lines()
    logger = logging.getLogger("relaybox.health")
    logger.addHandler(caplog)
    old_level = logger.level
    logger.setLevel(logging.INFO)
    try:
        snap = await monitor.check()
        assert not snap.database and snap.redis and snap.failing == ["database"]
        assert "database is down" in caplog.text
        folder.mkdir()  # back, but the breaker waits before it looks again
        assert not (await monitor.check()).database
        assert caplog.text.count("database is down") == 1  # one line per outage
        clock.now += 10
        assert (await monitor.check()).ok
        assert "database is back" in caplog.text
    finally:
        logger.removeHandler(caplog)
        logger.setLevel(old_level)
        await asyncio.get_running_loop().run_in_executor(None, eventlog.readers.shutdown)


async def test_monitor_checks_writes_after_a_failed_commit(tmp_path: Path) -> None:
    db = make_sqlite(tmp_path / "relaybox.db")
    eventlog = EventLog(db, read_threads=1)
    eventlog.start(asyncio.get_running_loop())
    monitor = HealthMonitor(_Ctx(db, eventlog, Hub("n", None)), clock=Clock())  # type: ignore[arg-type]
    try:
        eventlog.healthy = False  # as the writer leaves it after a commit failed
        assert (await monitor.check()).database  # a write round trip succeeded
        assert eventlog.healthy
    finally:
        await asyncio.get_running_loop().run_in_executor(None, eventlog.stop)
