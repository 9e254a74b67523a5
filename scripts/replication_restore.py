#!/usr/bin/env python3
"""How long ``relaybox restore --latest`` takes to rebuild a data dir holding N events
from a Litestream replica (docs/backup.md "Continuous backup").

    python scripts/replication_restore.py --events 1000000

1. A data dir is initialised and filled with N events (one user, 8 streams, 100-byte
   bodies, written straight into SQLite in large transactions: filling is not measured).
2. ``relaybox serve`` runs with replication into a folder until the replica holds the
   database (Litestream's first snapshot), then ``--tail`` more events are written in
   small transactions, so that the restore also replays changes after the snapshot.
3. The data dir is deleted and ``relaybox restore --latest --from REPLICA`` rebuilds it;
   the wall time of that command is the restore time. The restored events are counted
   and their seqs checked gap-free.

Prints the sizes and times. Needs the 'replication' extra (litestream).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def fill(data: Path, n: int) -> None:
    from relaybox.bench import seed_devices

    seed_devices(data, 1)
    conn = sqlite3.connect(data / "relaybox.db")
    try:
        user_id = conn.execute("SELECT id FROM user").fetchone()[0]
        device_id = conn.execute("SELECT id FROM device").fetchone()[0]
        streams = [f"s{i}" for i in range(8)]
        body = json.dumps({"text": "x" * 80})
        now = int(time.time() * 1000)
        seqs = dict.fromkeys(streams, 0)
        batch = 100_000
        for start in range(0, n, batch):
            rows = []
            for i in range(start, min(n, start + batch)):
                stream = streams[i % len(streams)]
                seqs[stream] += 1
                rows.append((user_id, stream, seqs[stream], device_id, str(uuid.uuid4()),
                             body, now))
            with conn:
                conn.executemany("INSERT INTO event (user_id, stream, seq, device_id, "
                                 "client_id, body, ts) VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
        with conn:
            conn.executemany("INSERT INTO stream_head (user_id, stream, head_seq, floor_seq, "
                             "key_count) VALUES (?, ?, ?, 0, 0)",
                             [(user_id, s, seqs[s]) for s in streams])
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()


def state(data: Path) -> dict[str, object]:
    try:
        doc = json.loads((data / "run" / "replication.json").read_text())
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def wait_replicated(data: Path, after: float, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        synced = state(data).get("last_sync_at")
        if isinstance(synced, int | float) and synced > after + 2.0:
            return
        if time.monotonic() > deadline:
            raise SystemExit(f"the replica did not catch up: {state(data)}")
        time.sleep(0.2)


def write_tail(data: Path, n: int) -> None:
    """``n`` more events in transactions of 100 while the server replicates (another
    writer of the file, as the CLI is): the restore replays them after the snapshot."""
    conn = sqlite3.connect(data / "relaybox.db", timeout=15)
    try:
        user_id, device_id = conn.execute("SELECT user_id, id FROM device").fetchone()
        body = json.dumps({"text": "y" * 80})
        for start in range(0, n, 100):
            rows = [(user_id, "tail", i + 1, device_id, str(uuid.uuid4()), body,
                     int(time.time() * 1000)) for i in range(start, min(n, start + 100))]
            with conn:
                conn.executemany("INSERT INTO event (user_id, stream, seq, device_id, "
                                 "client_id, body, ts) VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
                conn.execute("INSERT OR REPLACE INTO stream_head (user_id, stream, head_seq, "
                             "floor_seq, key_count) VALUES (?, 'tail', ?, 0, 0)",
                             (user_id, rows[-1][2]))
    finally:
        conn.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--tail", type=int, default=20_000)
    ap.add_argument("--dir", type=Path, default=None, help="Work folder (default: a temp one).")
    args = ap.parse_args()
    work = Path(args.dir or tempfile.mkdtemp(prefix="relaybox-repl-"))
    data, replica = work / "data", work / "replica"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    env = {**os.environ, "RELAYBOX_DATA_DIR": str(data), "RELAYBOX_REPLICATION_ENABLED": "true",
           "RELAYBOX_REPLICATION_URL": str(replica)}

    t0 = time.monotonic()
    fill(data, args.events)
    size = (data / "relaybox.db").stat().st_size
    print(f"filled {args.events} events: {size / 2**20:.0f} MiB ({time.monotonic() - t0:.1f} s)")

    port = free_port()
    log = open(work / "serve.log", "wb")
    started = time.time()
    proc = subprocess.Popen([sys.executable, "-m", "relaybox", "serve", "--port", str(port)],  # noqa: S603
                            env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_replicated(data, started, timeout=600)
        print(f"replica holds the database after {time.time() - started:.1f} s: "
              f"{sum(f.stat().st_size for f in replica.rglob('*') if f.is_file()) / 2**20:.0f}"
              " MiB in the replica")
        tail_at = time.time()
        write_tail(data, args.tail)
        wait_replicated(data, time.time(), timeout=600)
        print(f"{args.tail} more events written and replicated in "
              f"{time.time() - tail_at:.1f} s")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
        log.close()

    shutil.rmtree(data)
    t0 = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "relaybox", "restore", "--latest", "--from",  # noqa: S603
                           str(replica), "--yes", "--json"], env=env, capture_output=True,
                          text=True, check=False)
    elapsed = time.monotonic() - t0
    if done.returncode != 0:
        raise SystemExit(f"restore failed: {done.stderr}")
    report = json.loads(done.stdout)
    conn = sqlite3.connect(data / "relaybox.db")
    try:
        n = conn.execute("SELECT COUNT(*) FROM event").fetchone()[0]
        gaps = conn.execute("SELECT COUNT(*) FROM (SELECT stream, MAX(seq) - COUNT(*) AS d "
                            "FROM event GROUP BY stream) WHERE d != 0").fetchone()[0]
    finally:
        conn.close()
    print(f"restore --latest: {elapsed:.1f} s wall ({report['seconds']} s inside relaybox), "
          f"{n} events back, {gaps} streams with gaps")
    if not args.dir:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
