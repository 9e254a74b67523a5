"""Real processes to break: server nodes in process groups of their own, a Debian
redis-server, haproxy, a size-limited tmpfs for "disk full", PostgreSQL connections."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.support import Endpoint, Server, embedded_redis_pid, writer_pids

READY = "/api/v1/health/ready"


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rpartition(b")")[2].split()[0] != b"Z"
    except (OSError, IndexError):
        return False


async def until(pred: object, timeout: float, what: str) -> None:
    """Poll ``pred()`` (a callable returning a bool) until true; TimeoutError after
    ``timeout`` seconds naming ``what``."""
    assert callable(pred)
    try:
        async with asyncio.timeout(timeout):
            while not pred():
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}") from None


@dataclass
class Node(Server):
    """``relaybox serve`` in a process group of its own (a kill of the group takes its
    writer process with it), started and awaited without blocking the event loop."""

    name: str = "node"

    async def start_async(self, timeout: float = 90.0) -> None:
        self.log_path = self.data_dir.parent / f"{self.name}.log"
        env = {**os.environ, **self.env, "RELAYBOX_DATA_DIR": str(self.data_dir)}
        cmd = [sys.executable, "-m", "relaybox", "serve", "--port", str(self.port),
               *self.extra_args]
        with open(self.log_path, "ab") as log:
            log.write(f"=== {self.name}: start ===\n".encode())
            log.flush()
            self.proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        async with httpx.AsyncClient(timeout=2) as http:
            try:
                async with asyncio.timeout(timeout):
                    while True:
                        if self.proc.poll() is not None:
                            raise RuntimeError(f"{self.name} exited: {self.log()[-3000:]}")
                        with contextlib.suppress(httpx.HTTPError):
                            if (await http.get(self.url + READY)).status_code == 200:
                                return
                        await asyncio.sleep(0.05)
            except TimeoutError:
                raise RuntimeError(f"{self.name} did not start: {self.log()[-3000:]}") from None

    @property
    def pid(self) -> int:
        assert self.proc is not None, f"{self.name} is not running"
        return self.proc.pid

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def writer_pid(self) -> int | None:
        with contextlib.suppress(OSError):
            pids = [p for p in writer_pids(self.pid) if _alive(p)]
            return pids[0] if pids else None
        return None

    def embedded_redis_pid(self) -> int | None:
        with contextlib.suppress(OSError, ValueError, KeyError):
            pid = embedded_redis_pid(self.data_dir)
            return pid if _alive(pid) else None
        return None

    def kill_group(self) -> None:
        """SIGKILL to the server's whole process group (server and writer), and to its
        embedded Redis (a daemon in a session of its own): a crash of everything."""
        redis_pid = self.embedded_redis_pid()
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            self.proc = None
        if redis_pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(redis_pid, signal.SIGKILL)

    async def stop_async(self) -> int | None:
        """SIGTERM, the clean stop (sessions closed with 1001, queued commits flushed)."""
        return await asyncio.to_thread(self.stop)

    def cleanup(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGCONT)
        self.stop()
        self.kill_group()


class RedisServer:
    """Debian's redis-server on a TCP port of its own, to kill and start again."""

    def __init__(self, folder: Path, port: int) -> None:
        self.folder = folder
        self.port = port
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @staticmethod
    def executable() -> str | None:
        return shutil.which("redis-server") or (
            "/usr/bin/redis-server" if os.path.exists("/usr/bin/redis-server") else None)

    async def start(self) -> None:
        exe = self.executable()
        assert exe, "redis-server is not installed (apt-get install redis-server)"
        log = open(self.folder / "redis.log", "ab")
        self.proc = subprocess.Popen(
            [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--daemonize", "no", "--dir", str(self.folder)],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()

        def answers() -> bool:
            import socket
            with socket.socket() as s, contextlib.suppress(OSError):
                s.settimeout(0.5)
                s.connect(("127.0.0.1", self.port))
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
            return False

        await until(answers, 20, "redis-server")

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None


class Haproxy(Endpoint):
    """haproxy in front of the nodes; health check on GET /api/v1/health/ready."""

    def __init__(self, folder: Path, port: int, nodes: list[Node]) -> None:
        self.folder = folder
        self.port = port
        self.nodes = nodes
        self.proc: subprocess.Popen[bytes] | None = None

    def config(self) -> str:
        servers = "\n".join(f"    server {n.name} 127.0.0.1:{n.port} check" for n in self.nodes)
        return f"""\
global
    maxconn 4096

defaults
    mode http
    retries 3
    option redispatch
    timeout connect 2s
    timeout client 60s
    timeout server 60s
    timeout tunnel 1h
    timeout http-request 10s

frontend relaybox
    bind 127.0.0.1:{self.port}
    default_backend nodes

backend nodes
    balance roundrobin
    option httpchk GET {READY}
    http-check expect status 200
    default-server inter 500ms fall 2 rise 2
{servers}
"""

    async def start(self) -> None:
        exe = shutil.which("haproxy") or "/usr/sbin/haproxy"
        assert os.path.exists(exe), "haproxy is not installed (apt-get install haproxy)"
        cfg = self.folder / "haproxy.cfg"
        cfg.write_text(self.config())
        check = subprocess.run([exe, "-c", "-f", str(cfg)], capture_output=True, check=False)
        assert check.returncode == 0, check.stdout + check.stderr
        log = open(self.folder / "haproxy.log", "ab")
        self.proc = subprocess.Popen([exe, "-db", "-f", str(cfg)], stdout=log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        log.close()

        async def ready() -> bool:
            async with httpx.AsyncClient(timeout=2) as http:
                with contextlib.suppress(httpx.HTTPError):
                    return (await http.get(self.url + READY)).status_code == 200
            return False

        async with asyncio.timeout(30):
            while not await ready():
                await asyncio.sleep(0.1)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(10)
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            self.proc = None


class DiskFull:
    """A size-limited tmpfs holding the data dir; ``fill`` takes every free byte."""

    def __init__(self, mount: Path, size_mb: int) -> None:
        self.mount = mount
        self.size_mb = size_mb
        self.mounted = False
        self.filler = mount / "filler.bin"

    def try_mount(self) -> str | None:
        """Mount it; None on success, else why not (the disk-full fault is then left out)."""
        self.mount.mkdir(parents=True, exist_ok=True)
        if os.geteuid() != 0:
            return "not root: no tmpfs for disk full"
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={self.size_mb}m,mode=0700",
                            "tmpfs", str(self.mount)], capture_output=True, check=False)
        if r.returncode != 0:
            return f"mount tmpfs failed: {r.stderr.decode(errors='replace').strip()}"
        self.mounted = True
        return None

    def fill(self) -> int:
        """Write until ENOSPC; returns the bytes taken."""
        total = 0
        chunk = b"\0" * (1 << 20)
        fd = os.open(self.filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            while len(chunk) >= 512:
                try:
                    total += os.write(fd, chunk)
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    chunk = chunk[: len(chunk) // 4]
        finally:
            os.close(fd)
        return total

    def free(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.filler.unlink()

    def unmount(self) -> None:
        if self.mounted:
            subprocess.run(["umount", "-l", str(self.mount)], check=False)
            self.mounted = False
