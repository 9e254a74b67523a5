"""Continuous replication: ``relaybox serve`` runs Litestream beside the server, restarts
it when it dies, and records how far the replica lags (docs/backup.md "Continuous backup").

One Litestream per database: two copying one WAL into one replica would corrupt it
(Litestream's docs, "Multiple applications replicating into location"). Every serve
process on a data dir runs a ``Replicator``; the one holding ``run/replication.lock``
runs Litestream, the others wait for the lock and take over if that process goes.

The state file ``run/replication.json`` is what ``relaybox status`` and the metric
``relaybox_replication_lag_seconds`` read: any process, any worker, no socket needed.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import json
import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from relaybox.config import Settings
from relaybox.services import litestream

log = logging.getLogger("relaybox.replication")

STATE_FILE = "replication.json"
LOCK_FILE = "replication.lock"
#: First and longest wait before starting Litestream again after it exited.
BACKOFF_MIN_S = 0.5
BACKOFF_MAX_S = 30.0
#: A run this long resets the wait to BACKOFF_MIN_S.
HEALTHY_RUN_S = 60.0
#: How often the lag is read from Litestream.
POLL_S = 1.0
#: A state file not rewritten for this long belongs to a supervisor that is gone.
STALE_S = 10.0

_LEVELS = {"DEBUG": logging.DEBUG, "INFO": logging.INFO, "WARN": logging.WARNING,
           "WARNING": logging.WARNING, "ERROR": logging.ERROR}


def _death_signal() -> Callable[[], None] | None:
    """For the child, before exec: SIGTERM when the thread that started it ends (Linux's
    PR_SET_PDEATHSIG), so no Litestream outlives a killed server and meets the next
    one's. The C function is looked up here, in the parent: the child only calls it."""
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    return lambda: prctl(1, int(signal.SIGTERM))


class Replicator:
    """Supervises one Litestream process for ``settings``' database."""

    def __init__(self, settings: Settings, *, clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.clock = clock
        self.state_path = settings.run_dir / STATE_FILE
        self.proc: subprocess.Popen[bytes] | None = None
        self.restarts = 0
        self.state = "starting"
        self.since = clock()
        self.last_sync: float | None = None
        self.last_error = ""
        self._stop = threading.Event()
        self._lock_fd: int | None = None
        self._threads: list[threading.Thread] = []
        self._mu = threading.Lock()

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        """Check that Litestream exists (raises ReplicationError), then supervise it."""
        litestream.executable(self.settings)
        self.settings.run_dir.mkdir(parents=True, exist_ok=True)
        for target, name in ((self._supervise, "relaybox-litestream"),
                             (self._poll, "relaybox-replication-lag")):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self, timeout: float = litestream.SHUTDOWN_SYNC_S + 5) -> None:
        """Stop Litestream after its last upload (call once the server stopped writing)."""
        self._stop.set()
        with self._mu:
            proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # Litestream syncs the rest, then exits
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("litestream did not stop within %.0f s; killed", timeout)
                proc.kill()
                proc.wait()
        for t in self._threads:
            t.join(timeout)
        self._threads.clear()
        if self._lock_fd is not None:
            self._set_state("stopped")
            os.close(self._lock_fd)
            self._lock_fd = None

    # -- the supervising thread --------------------------------------------------------------
    def _supervise(self) -> None:
        if not self._take_lock():
            return
        backoff = BACKOFF_MIN_S
        config = litestream.write_config(self.settings)
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                cmd = litestream.replicate_command(self.settings, config)
                proc = subprocess.Popen(  # noqa: S603 - our own config and executable
                    cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE, preexec_fn=_death_signal(),
                    # Its own session: a Ctrl-C meant for the server must not stop it
                    # before the server's last commits (systemd: KillMode=mixed).
                    start_new_session=True)
            except Exception as exc:  # a missing or broken executable: keep trying
                self.last_error = str(exc)
                log.error("cannot start litestream: %s", exc)
                proc = None
            if proc is not None:
                with self._mu:
                    self.proc = proc
                self._set_state("running")
                log.info("replicating %s to %s (litestream pid %d)",
                         self.settings.sqlite_path,
                         litestream.shown_url(self.settings.replication_url), proc.pid)
                assert proc.stderr is not None
                self._forward(proc.stderr)
                code = proc.wait()
                if self._stop.is_set():
                    break
                self.last_error = f"litestream exited with status {code}"
            if time.monotonic() - started >= HEALTHY_RUN_S:
                backoff = BACKOFF_MIN_S
            self.restarts += 1
            self._set_state("restarting")
            log.error("%s; starting it again in %.1f s (the WAL is not checkpointed "
                      "meanwhile)", self.last_error, backoff)
            if self._stop.wait(backoff):
                break
            backoff = min(backoff * 2, BACKOFF_MAX_S)

    def _take_lock(self) -> bool:
        """Wait (politely) for the data dir's replication lock; False when stopped first."""
        path = self.settings.run_dir / LOCK_FILE
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        waiting_logged = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if not waiting_logged:
                    log.info("another relaybox process on this data dir runs litestream")
                    waiting_logged = True
                if self._stop.wait(1.0):
                    os.close(fd)
                    return False
                continue
            self._lock_fd = fd
            return True

    def _forward(self, stream: IO[bytes]) -> None:
        """Litestream's log lines (JSON) into relaybox's log, until it exits."""
        for raw in iter(stream.readline, b""):
            line = raw.decode("utf-8", "replace").strip()
            if not line:
                continue
            try:
                rec = json.loads(line)
            except ValueError:
                rec = None
            if not isinstance(rec, dict):
                log.warning("litestream: %s", line)
                continue
            level = _LEVELS.get(str(rec.pop("level", "INFO")).upper(), logging.INFO)
            rec.pop("time", None)
            msg = str(rec.pop("msg", ""))
            extra = " ".join(f"{k}={v}" for k, v in rec.items())
            if level >= logging.ERROR:
                self.last_error = msg
            log.log(level, "litestream: %s%s", msg, f" ({extra})" if extra else "")

    # -- the lag ----------------------------------------------------------------------------
    def _poll(self) -> None:
        sock = litestream.socket_path(self.settings)
        while not self._stop.wait(POLL_S):
            if self._lock_fd is None:
                continue
            with self._mu:
                running = self.proc is not None and self.proc.poll() is None
            if running and sock.exists():
                try:
                    synced = litestream.last_sync_at(sock)
                except Exception as exc:  # starting or stopping: the next poll
                    log.debug("litestream socket: %s", exc)
                else:
                    if synced is not None:
                        self.last_sync = synced
            self._write_state()

    def _set_state(self, state: str) -> None:
        self.state = state
        self._write_state()

    def _write_state(self) -> None:
        doc = {"pid": os.getpid(), "litestream_pid": self.proc.pid if self.proc else None,
               "state": self.state, "replica": litestream.shown_url(
                   self.settings.replication_url),
               "since": self.since, "last_sync_at": self.last_sync,
               "restarts": self.restarts, "last_error": self.last_error,
               "updated_at": self.clock()}
        tmp = self.state_path.with_name(f".{STATE_FILE}.{os.getpid()}")
        with contextlib.suppress(OSError):
            tmp.write_text(json.dumps(doc), encoding="utf-8")
            os.replace(tmp, self.state_path)


def status(settings: Settings, now: float | None = None) -> dict[str, Any] | None:
    """Replication as the running server last recorded it, with ``lag_s``: seconds since
    the replica last held everything Litestream had read from the WAL (since replication
    started, before its first sync). None when replication is off."""
    if not settings.replication_enabled:
        return None
    now = time.time() if now is None else now
    doc: dict[str, Any] = {"state": "not running", "replica":
                           litestream.shown_url(settings.replication_url), "lag_s": None}
    try:
        saved = json.loads((settings.run_dir / STATE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return doc
    if not isinstance(saved, dict):
        return doc
    doc.update(saved)
    ref = saved.get("last_sync_at") or saved.get("since")
    if saved.get("state") == "stopped":
        doc["lag_s"] = None
    elif isinstance(ref, int | float):
        doc["lag_s"] = round(max(0.0, now - ref), 3)
    updated = saved.get("updated_at")
    if saved.get("state") != "stopped" and (
            not isinstance(updated, int | float) or now - updated > STALE_S):
        doc["state"] = "not running"  # its server died without saying so
    return doc


def lag_seconds(settings: Settings, now: float | None = None) -> float | None:
    """The replication lag for the metric; None when there is nothing to report."""
    doc = status(settings, now)
    if doc is None:
        return None
    lag = doc.get("lag_s")
    return float(lag) if isinstance(lag, int | float) else None


def wal_bytes(path: Path | None) -> int | None:
    if path is None:
        return None
    try:
        return path.with_name(path.name + "-wal").stat().st_size
    except OSError:
        return None
