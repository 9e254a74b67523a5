"""The whole story, as a new self-hoster lives it, with the real command line throughout.

init, serve, add a user, pair two devices, publish, back up while serving, stop, restore
onto a new data dir, serve again: the devices authenticate and see the same history.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tests.cli.helpers import collect, device_key, publish
from tests.support import Gw, Server, free_port, sqlite_events


def cli(data_dir: Path, *args: str) -> Any:
    """``python -m relaybox --data-dir DIR ARGS… --json`` in a subprocess → its JSON."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAYBOX_")}
    res = subprocess.run([sys.executable, "-m", "relaybox", "--data-dir", str(data_dir),
                          *args, "--json"], capture_output=True, text=True, env=env,
                         timeout=60)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def pair(data_dir: Path, server: Server, name: str, home: Path) -> Path:
    code = cli(data_dir, "pair", "alice")["code"]
    identity = home / f"{name}.json"
    doc = cli(data_dir, "client", "pair", code, "--server", server.url, "--name", name,
              "--identity", str(identity))
    assert doc["name"] == name
    return identity


def acked(data_dir: Path, device_id: str, stream: str) -> int:
    conn = sqlite3.connect(data_dir / "relaybox.db")
    try:
        row = conn.execute("SELECT acked_seq FROM cursor WHERE device_id = ? AND stream = ?",
                           (device_id, stream)).fetchone()
        return int(row[0]) if row else 0
    finally:
        conn.close()


async def test_backup_restore_story(tmp_path: Path) -> None:
    home, first, second = tmp_path / "home", tmp_path / "first", tmp_path / "second"
    init = cli(first, "init")
    assert init["admin_token"] and init["server_id"]
    srv = Server(first, free_port(), {})
    srv2: Server | None = None
    try:
        srv.start()
        cli(first, "user", "add", "alice")
        laptop = device_key(pair(first, srv, "laptop", home))
        phone = device_key(pair(first, srv, "phone", home))

        gw = await Gw.connect(srv, laptop)
        assert gw.welcome["type"] == "welcome"
        seqs = [await publish(gw, "notes", {"n": i}) for i in range(5)]
        assert seqs == [1, 2, 3, 4, 5]
        await gw.close()
        gw = await Gw.connect(srv, phone)
        got = await collect(gw, "notes", 3)  # the phone reads and acks three of five
        assert [m["seq"] for m in got] == [1, 2, 3]
        deadline = time.monotonic() + 10
        while acked(first, phone.device_id, "notes") < 3:  # acks are committed in batches
            assert time.monotonic() < deadline, "ack never committed"
            time.sleep(0.02)

        made = cli(first, "backup")  # the server is serving, the phone still connected
        assert made["counts"]["device"] == 2 and made["counts"]["event"] >= 5
        await gw.close()
        assert srv.stop() == 0
        before = sqlite_events(first)

        restored = cli(second, "restore", made["file"], "--yes")
        assert restored["server_id"] == init["server_id"]
        assert sqlite_events(second) == before

        srv2 = Server(second, free_port(), {})
        srv2.start()
        status = cli(second, "status")
        assert status["server_id"] == init["server_id"] and status["status"] == "ok"
        # Both devices authenticate with the keys they were paired with.
        gw = await Gw.connect(srv2, phone)
        assert gw.welcome["type"] == "welcome" and gw.welcome["streams"]["notes"] == 5
        rest = await collect(gw, "notes", 5)  # …and resume right after their cursor
        assert [(m["seq"], m["body"]) for m in rest] == [(4, {"n": 3}), (5, {"n": 4})]
        assert all(m["from"] == laptop.device_id for m in rest)
        await gw.close()
        gw = await Gw.connect(srv2, laptop)
        assert gw.welcome["type"] == "welcome"
        assert await publish(gw, "notes", {"n": 5}) == 6  # the history goes on
        await gw.close()
        users = cli(second, "user", "list")
        assert [(u["name"], u["devices"]) for u in users] == [("alice", 2)]
    finally:
        for s in (srv, srv2):
            if s is not None:
                s.stop()
                s.kill()
