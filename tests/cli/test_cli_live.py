"""CLI commands against a real running server: status, revocation, user removal, backup."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import stat
import tarfile
import time
from pathlib import Path

import psutil

from relaybox.protocol.codes import CloseCode
from tests.cli.helpers import assert_error, publish, run, run_json
from tests.support import Gw, Server, free_port, seed


def test_status_shows_the_running_server(live: Server) -> None:
    doc = run_json(live.data_dir, "status")
    assert doc["status"] == "ok" and doc["url"] == live.url
    assert doc["database"] == "ok" and doc["redis"] == "ok"
    human = run(live.data_dir, "status")
    assert human.exit_code == 0
    assert doc["server_id"] in human.stdout and "uptime" in human.stdout


def test_status_without_a_server_is_a_one_line_error(data_dir: Path) -> None:
    r = run(data_dir, "status", env={"RELAYBOX_PORT": str(free_port())})
    assert_error(r, "no relaybox server answered")


async def test_revoke_closes_the_live_session_within_a_second(live: Server) -> None:
    dev = seed(live.data_dir, {"rev": 1})["rev"][0]
    gw = await Gw.connect(live, dev)
    assert gw.welcome["type"] == "welcome"
    doc = await asyncio.to_thread(run_json, live.data_dir, "device", "revoke", dev.device_id,
                                  "--reason", "stolen")
    assert doc["server_notified"] is True
    # protocol.md §6: the live session is closed with 4403 within 1 second.
    assert await gw.closed_code(timeout=1.0) == CloseCode.REVOKED
    again = await Gw.connect(live, dev)
    assert (again.welcome["type"], again.welcome["code"]) == ("error", "revoked")
    await again.close()


async def test_user_remove_closes_every_session_of_the_user(live: Server) -> None:
    keys = seed(live.data_dir, {"gone": 2, "stays": 1})
    gws = [await Gw.connect(live, k) for k in keys["gone"]]
    other = await Gw.connect(live, keys["stays"][0])
    doc = await asyncio.to_thread(run_json, live.data_dir, "user", "remove", "gone", "--yes")
    assert doc["server_notified"] is True
    for gw in gws:
        assert await gw.closed_code(timeout=5) == CloseCode.REVOKED
    # Another user's session carries on.
    assert await publish(other, "notes", {"still": "here"}) == 1
    await other.close()


async def test_backup_while_publishing_is_one_consistent_snapshot(live: Server,
                                                                   tmp_path: Path) -> None:
    dev = seed(live.data_dir, {"busy": 1})["busy"][0]
    gw = await Gw.connect(live, dev)
    stop = asyncio.Event()
    published: list[int] = []

    async def writer() -> None:
        while not stop.is_set():
            published.append(await publish(gw, "notes", {"n": len(published)}))

    task = asyncio.create_task(writer())
    while len(published) < 20:
        await asyncio.sleep(0.01)
    out = tmp_path / "while-serving.tar.gz"
    doc = await asyncio.to_thread(run_json, live.data_dir, "backup", "--output", str(out))
    stop.set()
    await task
    await gw.close()

    assert doc["file"] == str(out) and doc["bytes"] == out.stat().st_size
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    with tarfile.open(out) as tar:
        assert tar.getnames() == ["manifest.json", "relaybox.db", "relaybox.toml"]
        manifest = json.load(tar.extractfile("manifest.json"))  # type: ignore[arg-type]
        tar.extract("relaybox.db", tmp_path, filter="data")
    assert manifest["counts"] == doc["counts"]
    assert set(manifest["members"]) == {"relaybox.db", "relaybox.toml"}
    db = sqlite3.connect(tmp_path / "relaybox.db")
    try:  # every stream's head agrees with its events: one snapshot, not a torn copy
        for user_id, stream, head, floor in db.execute(
                "SELECT user_id, stream, head_seq, floor_seq FROM stream_head"):
            seqs = [r[0] for r in db.execute(
                "SELECT seq FROM event WHERE user_id = ? AND stream = ? ORDER BY seq",
                (user_id, stream))]
            assert seqs == list(range(floor + 1, head + 1))
        busy = db.execute("SELECT head_seq FROM stream_head WHERE user_id = ? AND "
                          "stream = 'notes'", (dev.user_id,)).fetchone()[0]
    finally:
        db.close()
    assert 20 <= busy <= len(published)
    assert run_json(live.data_dir, "backup", "verify", str(out))["ok"] is True


def test_restore_is_refused_while_the_server_runs(live: Server, data_dir: Path,
                                                  tmp_path: Path) -> None:
    other = run_json(data_dir, "backup", "--output", str(tmp_path / "other.tar.gz"))
    before = run_json(live.data_dir, "status")["server_id"]
    r = run(live.data_dir, "restore", other["file"], "--yes")
    assert_error(r, "server is running", "stop it")
    assert run_json(live.data_dir, "status")["server_id"] == before
    assert not list(live.data_dir.glob(".relaybox*"))


def test_the_cli_uses_the_servers_redis_and_starts_none(live: Server) -> None:
    info = [json.loads(p.read_text()) for p in (live.data_dir / "run").glob("server-*.json")]
    assert len(info) == 1 and info[0]["pid"] == live.proc.pid  # type: ignore[union-attr]
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    dev = seed(live.data_dir, {"quiet": 1})["quiet"][0]
    run_json(live.data_dir, "device", "revoke", dev.device_id)
    new = [p for p in psutil.Process().children(recursive=True) if p.pid not in before]
    assert new == []
    assert os.path.exists(info[0]["redis_socket"])


def test_backup_files_are_private_and_listed(live: Server) -> None:
    first = run_json(live.data_dir, "backup")
    path = Path(first["file"])
    assert path.parent == live.data_dir / "backups"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    listed = run_json(live.data_dir, "backup", "list")
    assert str(path) in [d["file"] for d in listed]
    entry = next(d for d in listed if d["file"] == str(path))
    assert entry["problem"] is None and entry["scheduled"] is False
    assert entry["server_id"] == run_json(live.data_dir, "status")["server_id"]
    assert time.time() - entry["created_at"] < 600
