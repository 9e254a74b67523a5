"""Retention: old events go per stream from the oldest, floor_seq records it, devices get gap."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterator
from pathlib import Path

import peewee as pw
import pytest

from relaybox.config import Settings, load_settings
from relaybox.services import retention
from relaybox.store.append import append_now
from relaybox.store.db import open_database
from relaybox.store.events import PublishRequest
from relaybox.store.models import Event, PairingCode, RefreshToken, StreamHead
from tests.cli.helpers import collect, run, run_json
from tests.support import DeviceKey, Gw, Server, seed

World = tuple[pw.Database, Settings, DeviceKey]
DAY = 86_400_000
T0 = 1_800_000_000_000  # a fixed "now" in ms: time is injected, never slept


@pytest.fixture
def world(data_dir: Path) -> Iterator[World]:
    dev = seed(data_dir, {"alice": 1})["alice"][0]
    settings = load_settings(data_dir, env={})
    db = open_database(settings)
    yield db, settings, dev
    db.close()


def _publish(db: pw.Database, dev: DeviceKey, stream: str, n: int, ts: int) -> None:
    reqs = [PublishRequest(dev.user_id, dev.device_id, _cid(), stream, json.dumps(i))
            for i in range(n)]
    append_now(db, reqs, lambda: ts)


_n = iter(range(10**6))


def _cid() -> str:
    return f"01900000-0000-7000-8000-{next(_n):012d}"


def _seqs(dev: DeviceKey, stream: str) -> list[int]:
    return [e.seq for e in Event.select(Event.seq).where(
        (Event.user_id == dev.user_id) & (Event.stream == stream)).order_by(Event.seq)]


def _floor(dev: DeviceKey, stream: str) -> int:
    return int(StreamHead.get((StreamHead.user_id == dev.user_id)
                              & (StreamHead.stream == stream)).floor_seq)


def test_age_removes_the_expired_prefix_and_raises_the_floor(world: World) -> None:
    db, settings, dev = world
    _publish(db, dev, "notes", 4, T0 - 10 * DAY)   # seq 1-4: old
    _publish(db, dev, "notes", 3, T0 - 1 * DAY)    # seq 5-7: recent
    _publish(db, dev, "other", 2, T0 - 1 * DAY)
    s = dataclasses.replace(settings, retention_days=7)
    report = retention.prune(db, s, T0, chunk=3)
    assert _seqs(dev, "notes") == [5, 6, 7]
    assert _floor(dev, "notes") == 4  # last removed; the first kept is floor + 1
    assert _seqs(dev, "other") == [1, 2] and _floor(dev, "other") == 0
    # (seed's sys.devices notice is stamped with the real clock: long expired at T0)
    assert [(p.stream, p.removed, p.floor_seq) for p in report.streams] == [
        ("notes", 4, 4), ("sys.devices", 1, 1)]
    assert report.events == 5
    # Idempotent: a second run finds nothing more.
    assert retention.prune(db, s, T0).events == 0


def test_a_late_timestamp_never_lets_a_young_event_go(world: World) -> None:
    db, settings, dev = world
    _publish(db, dev, "notes", 2, T0 - 10 * DAY)
    _publish(db, dev, "notes", 1, T0)             # seq 3: young
    _publish(db, dev, "notes", 1, T0 - 10 * DAY)  # seq 4: old stamp after a clock step back
    retention.prune(db, dataclasses.replace(settings, retention_days=7), T0)
    # Only a prefix goes: seq 4 waits until seq 3 expires too.
    assert _seqs(dev, "notes") == [3, 4] and _floor(dev, "notes") == 2


def test_a_fully_expired_stream_is_emptied(world: World) -> None:
    db, settings, dev = world
    _publish(db, dev, "notes", 5, T0 - 30 * DAY)
    retention.prune(db, dataclasses.replace(settings, retention_days=7), T0, chunk=2)
    assert _seqs(dev, "notes") == [] and _floor(dev, "notes") == 5


def test_max_events_per_stream_keeps_the_newest(world: World) -> None:
    db, settings, dev = world
    _publish(db, dev, "notes", 10, T0)
    s = dataclasses.replace(settings, retention_max_events_per_stream=3)
    dry = retention.prune(db, s, T0, dry_run=True)
    assert dry.dry_run and dry.events == 7 and _seqs(dev, "notes") == list(range(1, 11))
    assert _floor(dev, "notes") == 0  # a dry run changes nothing
    done = retention.prune(db, s, T0, chunk=4)
    assert done.events == dry.events
    assert _seqs(dev, "notes") == [8, 9, 10] and _floor(dev, "notes") == 7


def test_keep_forever_by_default(world: World) -> None:
    db, settings, dev = world
    _publish(db, dev, "notes", 3, T0 - 3650 * DAY)
    assert retention.prune(db, settings, T0).events == 0
    assert _seqs(dev, "notes") == [1, 2, 3]


def test_expired_pairing_codes_and_refresh_tokens_go(world: World) -> None:
    db, settings, dev = world
    for i, exp in enumerate([T0 - 1, T0 + 60_000]):
        PairingCode.create(code_hash=f"{i:064d}", user=dev.user_id, created_at=T0 - 600_000,
                           expires_at=exp)
    rows = [("a", T0 - 1, None), ("b", T0 - 1, T0 - 5), ("c", T0 + DAY, T0 - 5),
            ("d", T0 + DAY, None)]
    for name, exp, used in rows:
        RefreshToken.create(token_hash=name * 64, family_id="f", device=dev.device_id,
                            created_at=T0 - DAY, expires_at=exp, used_at=used)
    dry = retention.prune(db, settings, T0, dry_run=True)
    assert (dry.pairing_codes, dry.refresh_tokens) == (1, 2)
    report = retention.prune(db, settings, T0, chunk=1)
    assert (report.pairing_codes, report.refresh_tokens) == (1, 2)
    assert [p.expires_at for p in PairingCode.select()] == [T0 + 60_000]
    # A used token stays until it expires: replaying it must still trip theft detection.
    assert sorted(t.token_hash[0] for t in RefreshToken.select()) == ["c", "d"]


def test_prune_cli_dry_run_then_prune(data_dir: Path) -> None:
    dev = seed(data_dir, {"alice": 1})["alice"][0]
    db = open_database(load_settings(data_dir, env={}))
    _publish(db, dev, "notes", 6, T0)
    db.close()
    env = {"RELAYBOX_RETENTION_MAX_EVENTS_PER_STREAM": "2"}
    dry = run(data_dir, "prune", "--dry-run", "--json", env=env)
    doc = json.loads(dry.stdout)
    assert doc["dry_run"] is True and doc["events"] == 4
    assert {(s["user"], s["stream"], s["removed"]) for s in doc["streams"]} == {
        ("alice", "notes", 4)}
    human = run(data_dir, "prune", "--dry-run", env=env)
    assert "would remove 4 events" in human.stdout
    done = run(data_dir, "prune", env=env)
    assert done.exit_code == 0 and "removed 4 events" in done.stdout
    assert run_json(data_dir, "prune")["events"] == 0
    forever = run(data_dir, "prune")
    assert "kept forever" in forever.stdout


async def test_a_device_behind_the_floor_gets_a_gap_then_the_rest(
        make_server: Callable[..., Server]) -> None:
    srv: Server = make_server()
    a, b = seed(srv.data_dir, {"gap": 2})["gap"]
    gw = await Gw.connect(srv, a)
    from tests.cli.helpers import publish

    for i in range(6):
        await publish(gw, "log", {"i": i})
    await gw.close()
    r = run(srv.data_dir, "prune", "--json",
            env={"RELAYBOX_RETENTION_MAX_EVENTS_PER_STREAM": "2"})
    report = json.loads(r.stdout)
    log = next(s for s in report["streams"] if s["stream"] == "log")
    assert (log["removed"], log["floor_seq"]) == (4, 4)
    # b never acked anything: protocol.md §3 Catch-up, gap from its cursor to floor + 1.
    gw_b = await Gw.connect(srv, b)
    got = await collect(gw_b, "log", 6)
    assert got[0] == {"type": "gap", "stream": "log", "after": 0, "next": 5}
    assert [m["seq"] for m in got[1:]] == [5, 6]
    assert [m["body"] for m in got[1:]] == [{"i": 4}, {"i": 5}]
    await gw_b.close()
