"""protocol.md §3 Delivery: an event that was acked to its publisher survives a power cut.

A kill keeps the page cache, so it cannot show that an acked event was on disk. Here
``relaybox serve`` and its writer process run under an LD_PRELOAD shim
(tests/store/powercut.c, built with the system C compiler) that copies each database
file aside at every successful fsync/fdatasync, before the call returns. The power cut
stops every process of the server at once, kills them, and puts those copies in place
of the files: every write that was not synced is gone. Then every acked event must be
there, at its seq, in a database that passes its integrity check, and a server must start
on it. The same cut with ``sqlite_synchronous = "normal"`` (no sync at each commit) must
lose acked events: that shows the cut drops what was not synced.
"""

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
from pathlib import Path

import pytest

from relaybox.protocol.encoding import uuid4
from tests.gateway.helpers import Client, assert_clean_log, env
from tests.support import DeviceKey, Server, free_port, seed, writer_pids

pytestmark = pytest.mark.asyncio(loop_scope="function")

SHIM_SOURCE = Path(__file__).with_name("powercut.c")
ACKS_BEFORE_CUT = 400
IN_FLIGHT = 64


def build_shim(out: Path) -> Path:
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("no C compiler: CI must run the power-loss test")
        pytest.skip("no C compiler (gcc) to build the power-cut shim")
    lib = out / "powercut.so"
    subprocess.run([cc, "-shared", "-fPIC", "-O2", "-Wall", "-Werror", "-o", str(lib),
                    str(SHIM_SOURCE), "-ldl", "-lpthread"], check=True)
    return lib


def power_cut(server: Server) -> None:
    """Every process of the server stops at the same instant (none syncs anything
    after it) and dies; then the disk holds only what was synced."""
    assert server.proc is not None
    pids = [server.proc.pid, *writer_pids(server.proc.pid)]
    for pid in pids:  # the server first: it cannot start another writer process
        os.kill(pid, signal.SIGSTOP)
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    server.kill()  # reaps the server, kills its embedded Redis
    for copy in server.data_dir.glob("relaybox.db*.synced"):
        os.replace(copy, copy.with_suffix(""))
    for leftover in [*server.data_dir.glob("relaybox.db*.tmp"),
                     *server.data_dir.glob("relaybox.db-shm")]:
        leftover.unlink()


async def publish_until_cut(server: Server, pub: DeviceKey, sub: DeviceKey
                            ) -> dict[str, int]:
    """The publisher keeps ``IN_FLIGHT`` publishes going while the other device receives
    and acks; the power is cut as the ``ACKS_BEFORE_CUT``th ack arrives. Returns the acks
    received (id → seq)."""
    cp, cs = await Client.connect(server, pub), await Client.connect(server, sub)
    await cs.drain_catch_up()
    acked: dict[str, int] = {}
    slots = asyncio.Semaphore(IN_FLIGHT)
    cut = asyncio.Event()

    async def publish() -> None:
        for i in range(10 * ACKS_BEFORE_CUT):
            await slots.acquire()
            if cut.is_set():
                return
            await cp.send({"type": "publish", "id": uuid4(), "stream": "s", "body": i})

    async def read_acks() -> None:
        while len(acked) < ACKS_BEFORE_CUT:
            f = await cp.expect_type("ack", "nack")
            assert f["type"] == "ack", f
            acked[f["id"]] = f["seq"]
            slots.release()
        power_cut(server)
        cut.set()
        slots.release()

    async def receive() -> None:  # cursor saves go to the writer beside the publishes
        with contextlib.suppress(Exception):
            while not cut.is_set():
                f = await cs.expect_type("event")
                await cs.ack(f["stream"], f["seq"])

    receiver = asyncio.create_task(receive())
    await asyncio.gather(publish(), read_acks())
    receiver.cancel()
    with contextlib.suppress(BaseException):
        await receiver
    return acked


def stored_events(db_path: Path) -> tuple[str, dict[str, int]]:
    con = sqlite3.connect(db_path)
    try:
        (check,) = con.execute("PRAGMA integrity_check").fetchone()
        rows = con.execute("SELECT client_id, seq FROM event WHERE stream = 's' "
                           "ORDER BY seq").fetchall()
    finally:
        con.close()
    assert [seq for _, seq in rows] == list(range(1, len(rows) + 1))  # no gap
    return str(check), dict(rows)


@pytest.mark.parametrize("synchronous", ["full", "normal"])
async def test_acked_events_survive_a_power_cut(tmp_path: Path, synchronous: str) -> None:
    shim = build_shim(tmp_path)
    data_dir = tmp_path / "data"
    pub, sub = seed(data_dir, {"u": 2})["u"]
    os.sync()  # what the test wrote before the server starts is on disk
    settings = env(gateway_publish_rate_per_s=0, sqlite_synchronous=synchronous)
    server = Server(data_dir, free_port(), {
        **settings, "LD_PRELOAD": str(shim),
        "POWERCUT_PREFIX": str(data_dir / "relaybox.db")})
    server.start()
    acked = await publish_until_cut(server, pub, sub)
    assert len(acked) == ACKS_BEFORE_CUT
    assert_clean_log(server)

    check, stored = stored_events(data_dir / "relaybox.db")
    assert check == "ok"
    lost = {pid: seq for pid, seq in acked.items() if stored.get(pid) != seq}
    if synchronous == "normal":
        # Commits are not synced: the cut must take acked events with it.
        assert lost, "the power cut dropped no acked event: it drops nothing unsynced"
        return
    assert lost == {}
    # A server starts on what the disk held, and the stream goes on after it.
    again = Server(data_dir, free_port(), settings)
    again.start()
    try:
        c = await Client.connect(again, pub)
        (ack,) = await c.publish_many("s", ["after"])
        assert ack["seq"] == len(stored) + 1
        await c.close()
        assert_clean_log(again)
    finally:
        again.stop()
        again.kill()


async def test_the_shim_keeps_only_what_was_synced(tmp_path: Path) -> None:
    """The shim alone, on SQLite: a commit made without a sync is gone after the cut."""
    shim = build_shim(tmp_path)
    db = tmp_path / "db.sqlite"
    script = (
        "import os, sqlite3\n"
        f"c = sqlite3.connect({str(db)!r}, isolation_level=None)\n"
        "c.execute('PRAGMA journal_mode=wal'); c.execute('PRAGMA synchronous=full')\n"
        "c.execute('CREATE TABLE t (x)'); c.execute('INSERT INTO t VALUES (1)')\n"
        "c.execute('PRAGMA synchronous=off'); c.execute('INSERT INTO t VALUES (2)')\n"
        "print(json.dumps([r[0] for r in c.execute('SELECT x FROM t')]), flush=True)\n"
        "os._exit(0)\n")
    out = subprocess.run(
        [sys.executable, "-c", "import json\n" + script],
        env={**os.environ, "LD_PRELOAD": str(shim), "POWERCUT_PREFIX": str(db)},
        check=True, capture_output=True, text=True).stdout
    assert json.loads(out) == [1, 2]  # before the cut, both rows
    for copy in tmp_path.glob("db.sqlite*.synced"):
        os.replace(copy, copy.with_suffix(""))
    Path(f"{db}-shm").unlink()
    con = sqlite3.connect(db)
    try:
        assert [r[0] for r in con.execute("SELECT x FROM t")] == [1]
    finally:
        con.close()
