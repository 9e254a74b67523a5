"""Point-in-time recovery of relaybox's PostgreSQL database with pgBackRest (docs/backup.md,
"PostgreSQL: WAL archiving with pgBackRest"), for real.

The test runs a PostgreSQL cluster of its own (initdb in a temporary folder, run as the
``postgres`` user) that archives its WAL with pgBackRest, takes a full backup, serves a
real ``relaybox serve`` from it, publishes N events, notes PostgreSQL's clock, publishes M
more, then loses the cluster's data directory and restores it to the noted moment:
exactly the N events are back, and devices authenticate and publish on.

Needs Debian's ``postgresql`` (initdb, pg_ctl) and ``pgbackrest`` packages (.ci/run
installs both); without them the test fails in CI and is skipped elsewhere. Nothing is
installed at test time.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from relaybox.protocol.encoding import uuid4
from tests.gateway.helpers import Client
from tests.support import DeviceKey, Server, free_port, seed

pytestmark = pytest.mark.postgres

PGBACKREST = "/usr/bin/pgbackrest"
STANZA = "relaybox"
N, M = 200, 100  # events before the target time, and after it


def _pg_bin_or_skip() -> Path:
    """The newest /usr/lib/postgresql/*/bin holding initdb; fails in CI, skips elsewhere."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: [int(x) for x in Path(p).parts[-3].split(".") if x.isdigit()])
    missing = [what for what, ok in (("initdb (Debian's postgresql)", bool(found)),
                                     (PGBACKREST, os.access(PGBACKREST, os.X_OK)),
                                     ("the postgres user", _has_postgres_user()))
               if not ok]
    if missing:
        why = f"missing {', '.join(missing)} (apt install postgresql pgbackrest)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{why}: CI must run the PostgreSQL PITR test")
        pytest.skip(why)
    if os.geteuid() != 0:
        pytest.skip("runs PostgreSQL as the postgres user: needs root (as in CI)")
    return Path(found[-1]).parent


def _has_postgres_user() -> bool:
    import pwd

    try:
        pwd.getpwnam("postgres")
    except KeyError:
        return False
    return True


@dataclass
class Cluster:
    """A throwaway PostgreSQL cluster archiving its WAL with pgBackRest, all under ``root``
    (owned by postgres)."""

    root: Path
    bin: Path
    port: int

    @property
    def pgdata(self) -> Path:
        return self.root / "pg"

    @property
    def sockets(self) -> Path:
        return self.root / "sock"

    @property
    def conf(self) -> Path:
        return self.root / "pgbackrest.conf"

    def as_postgres(self, *args: str, timeout: float = 60) -> str:
        """Run a command as the postgres user (tests run as root); its stdout."""
        res = subprocess.run(["runuser", "-u", "postgres", "--", *args], cwd=self.root,
                             capture_output=True, text=True, timeout=timeout, check=False)
        assert res.returncode == 0, f"{' '.join(args)}: rc {res.returncode}\n" \
                                    f"{res.stdout}\n{res.stderr}\n{self.server_log()}"
        return res.stdout

    def pgbackrest(self, *args: str, timeout: float = 60) -> str:
        return self.as_postgres(PGBACKREST, f"--config={self.conf}", f"--stanza={STANZA}",
                                *args, timeout=timeout)

    def server_log(self) -> str:
        log = self.root / "postgresql.log"
        with contextlib.suppress(OSError):
            return log.read_text(errors="replace")[-4000:]
        return ""

    def create(self) -> None:
        for sub in ("sock", "repo", "lock", "log"):
            (self.root / sub).mkdir(mode=0o700)
        self.conf.write_text(
            "[global]\n"
            f"repo1-path={self.root / 'repo'}\n"
            "repo1-retention-full=2\n"
            "compress-type=lz4\n"
            "start-fast=y\n"
            f"lock-path={self.root / 'lock'}\n"
            f"log-path={self.root / 'log'}\n"
            "log-level-console=warn\n"
            f"\n[{STANZA}]\n"
            f"pg1-path={self.pgdata}\n"
            f"pg1-port={self.port}\n"
            f"pg1-socket-path={self.sockets}\n")
        shutil.chown(self.root, "postgres", "postgres")
        for path in self.root.rglob("*"):
            shutil.chown(path, "postgres", "postgres")
        self.as_postgres(str(self.bin / "initdb"), "-D", str(self.pgdata), "-U", "postgres",
                         "--auth-local=trust", "--auth-host=scram-sha-256", "--no-sync")
        archive = (f"{PGBACKREST} --config={self.conf} --stanza={STANZA} archive-push %p")
        with open(self.pgdata / "postgresql.conf", "a") as f:
            f.write(f"\nport = {self.port}\n"
                    "listen_addresses = '127.0.0.1'\n"
                    f"unix_socket_directories = '{self.sockets}'\n"
                    "wal_level = replica\n"
                    "archive_mode = on\n"
                    f"archive_command = '{archive}'\n"
                    "archive_timeout = 10s\n"
                    "max_connections = 50\n")

    def start(self) -> None:
        self.as_postgres(str(self.bin / "pg_ctl"), "-D", str(self.pgdata), "-w", "-t", "60",
                         "-l", str(self.root / "postgresql.log"), "start", timeout=90)

    def stop(self, mode: str = "fast") -> None:
        self.as_postgres(str(self.bin / "pg_ctl"), "-D", str(self.pgdata), "-w", "-m", mode,
                         "stop", timeout=90)

    def running(self) -> bool:
        return (self.pgdata / "postmaster.pid").exists()

    def connect(self, dbname: str = "postgres") -> Any:
        """A superuser connection over the cluster's socket (local connections: trust)."""
        import psycopg2

        conn = psycopg2.connect(host=str(self.sockets), port=self.port, user="postgres",
                                dbname=dbname)
        conn.autocommit = True
        return conn

    def sql(self, query: str, dbname: str = "postgres") -> list[tuple[Any, ...]]:
        conn = self.connect(dbname)
        try:
            with conn.cursor() as cur:
                cur.execute(query)
                return list(cur.fetchall()) if cur.description else []
        finally:
            conn.close()

    def archive_now(self, timeout: float = 30) -> str:
        """Close the current WAL segment and wait until pgBackRest has archived it (polls
        pg_stat_archiver; archive_command runs in the background). Its name."""
        [(segment,)] = self.sql("SELECT pg_walfile_name(pg_switch_wal())")
        deadline = time.monotonic() + timeout
        while True:
            [(done, failed, last_failed)] = self.sql(
                "SELECT last_archived_wal, failed_count, last_failed_wal "
                "FROM pg_stat_archiver")
            if done is not None and done >= segment:
                return str(segment)
            assert time.monotonic() < deadline, \
                f"{segment} not archived: last {done}, {failed} failures ({last_failed})\n" \
                f"{self.server_log()}"
            time.sleep(0.05)

    def until_promoted(self, timeout: float = 60) -> None:
        """Until recovery has ended and the cluster takes writes."""
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(Exception):  # not accepting connections yet
                if self.sql("SELECT pg_is_in_recovery()") == [(False,)]:
                    return
            assert time.monotonic() < deadline, f"not promoted:\n{self.server_log()}"
            time.sleep(0.05)


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    bindir = _pg_bin_or_skip()
    # Not pytest's tmp_path: its parent is private to root, and the postgres user must
    # reach this folder (and a unix socket path must stay under 108 bytes).
    root = Path(tempfile.mkdtemp(prefix="relaybox-pitr-", dir="/tmp"))
    c = Cluster(root, bindir, free_port())
    try:
        yield c
    finally:
        if c.running():
            with contextlib.suppress(Exception):
                c.stop("immediate")
        shutil.rmtree(root, ignore_errors=True)


def _relaybox(data_dir: Path, *args: str) -> Any:
    res = subprocess.run([sys.executable, "-m", "relaybox", "--data-dir", str(data_dir),
                          *args, "--json"], capture_output=True, text=True, timeout=120,
                         check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    return json.loads(res.stdout)


async def _publish(server: Server, dev: DeviceKey, ids: list[str]) -> list[dict[str, Any]]:
    client = await Client.connect(server, dev)
    try:
        await client.drain_catch_up()
        return await client.publish_many("notes", [{"n": i} for i in range(len(ids))], ids)
    finally:
        await client.close()


async def _after_restore(server: Server, devs: list[DeviceKey]) -> tuple[list[int], int]:
    """A device that never read anything catches up (the seqs of "notes" it got), then
    publishes once (the seq it is given)."""
    client = await Client.connect(server, devs[1])  # the handshake: keys and server_id
    try:
        got: list[int] = []
        while True:
            f = await client.expect_type("event", "synced")
            if f["type"] == "synced":
                break
            if f["stream"] == "notes":
                got.append(f["seq"])
            await client.ack(f["stream"], f["seq"])
        ack = await client.publish("notes", {"n": "after"})
        assert ack["type"] == "ack", ack
        return got, int(ack["seq"])
    finally:
        await client.close()


def test_pgbackrest_restores_the_cluster_to_a_moment(cluster: Cluster,
                                                     tmp_path: Path) -> None:
    started = time.monotonic()
    steps: dict[str, float] = {}

    def step(name: str) -> None:
        steps[name] = time.monotonic() - started - sum(steps.values())

    # -- a cluster archiving its WAL, its stanza and a full backup ---------------------------
    cluster.create()
    cluster.start()
    step("initdb and start")
    cluster.pgbackrest("stanza-create")
    cluster.pgbackrest("check")
    cluster.pgbackrest("--type=full", "backup", timeout=120)
    info = json.loads(cluster.pgbackrest("--output=json", "info"))
    assert [b["type"] for b in info[0]["backup"]] == ["full"], info
    backup_mb = info[0]["backup"][0]["info"]["size"] / 2**20
    step("stanza-create, check, full backup")

    # -- relaybox on a database of that cluster --------------------------------------------
    cluster.sql("CREATE ROLE relaybox LOGIN PASSWORD 'relaybox-pitr'")
    cluster.sql("CREATE DATABASE relaybox OWNER relaybox")
    url = f"postgresql://relaybox:relaybox-pitr@127.0.0.1:{cluster.port}/relaybox"
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    (data / "relaybox.toml").write_text(f'database_url = "{url}"\n')
    init = _relaybox(data, "init")
    devs = seed(data, {"alice": 2})["alice"]
    env = {"RELAYBOX_GATEWAY_PUBLISH_RATE_PER_S": "0"}
    server = Server(data, free_port(), env)
    server.start()
    step("relaybox init and serve")
    try:
        before = [uuid4() for _ in range(N)]
        acks = asyncio.run(_publish(server, devs[0], before))
        assert [a["seq"] for a in acks] == list(range(1, N + 1))
        # The target: PostgreSQL's own clock, read after every one of the N commits was
        # acked and before any of the M is published; the WAL up to it is archived.
        [(target,)] = cluster.sql("SELECT now()::text")
        cluster.archive_now()
        after = [uuid4() for _ in range(M)]
        asyncio.run(_publish(server, devs[0], after))
    finally:
        server.stop()
    # Recovery must see a commit later than the target to stop there: in production
    # archive_timeout has shipped the later WAL long before anyone restores.
    cluster.archive_now()
    cluster.stop()
    step("publish, archive, stop")

    # -- the data directory is lost; a point-in-time restore into a fresh, empty one --------
    shutil.rmtree(cluster.pgdata)
    cluster.pgdata.mkdir(mode=0o700)
    shutil.chown(cluster.pgdata, "postgres", "postgres")
    step("lose the data directory")
    t0 = time.monotonic()
    cluster.pgbackrest("--type=time", f"--target={target}", "--target-action=promote",
                       "restore", timeout=120)
    t1 = time.monotonic()
    cluster.start()
    cluster.until_promoted()
    t2 = time.monotonic()
    print(f"\npgBackRest restore: {t1 - t0:.2f} s copying the backup, {t2 - t1:.2f} s "
          f"replaying WAL to {target} and promoting; {t2 - t0:.2f} s in all "
          f"(a {backup_mb:.0f} MB cluster)")
    step("restore and promote")

    # -- exactly the N events, gap-free; none of the M ------------------------------------
    rows = cluster.sql("SELECT stream, seq, client_id FROM event ORDER BY stream, seq",
                       dbname="relaybox")
    notes = [(seq, cid) for stream, seq, cid in rows if stream == "notes"]
    assert [seq for seq, _ in notes] == list(range(1, N + 1))
    assert [cid for _, cid in notes] == before
    assert not {r[2] for r in rows} & set(after)
    # Besides: the two devices' sys.devices events (seed added them), also gap-free.
    assert [(r[0], r[1]) for r in rows if r[0] != "notes"] == [("sys.devices", 1),
                                                               ("sys.devices", 2)]

    # The promoted cluster, on a new timeline, goes on archiving into the same stanza.
    assert cluster.archive_now().startswith("00000002")

    # -- relaybox on the restored database: same server, devices authenticate --------------
    migrations = _relaybox(data, "migrate", "status")
    assert migrations["applied"] and migrations["pending"] == [], migrations
    server = Server(data, free_port(), env)
    server.start()
    try:
        status = httpx.get(server.url + "/api/v1/status", timeout=5).json()
        assert status["server_id"] == init["server_id"]
        seqs, next_seq = asyncio.run(_after_restore(server, devs))
    finally:
        server.stop()
    assert seqs == list(range(1, N + 1))
    assert next_seq == N + 1
    step("check events, relaybox serves again")
    print("; ".join(f"{k}: {v:.1f} s" for k, v in steps.items()),
          f"(whole test: {time.monotonic() - started:.1f} s)")
