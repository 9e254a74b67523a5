"""The event log's writer in a process of its own (how ``relaybox serve`` runs it): the
loop's end. The process's own end is store/writer_main.py.

The writer thread shares the interpreter lock with the event loop: each statement of a
commit (and the fsync) hands the lock back, and the writer then waits for whatever
Python work the loop is doing before it can go on, several times per batch. A writer
process has its own interpreter, so a commit never waits for the loop, and the loop
never waits for the writer's Python work.

``ProcessWriter`` sends the items of each loop iteration (store/codec.py) as one frame
over a socket pair; the writer process reads whatever has arrived (up to ``batch_max``
items), writes it in one transaction with the same code as the writer thread
(store/batch.py), and answers with one frame of results in item order.

The writer process stops when the socket closes (the server stopped or died): it
finishes the batch it is writing, so it never leaves a transaction half done, and
exits. If it dies, the event log reports itself unhealthy, starts a new writer process
at once and sends it, first and in their order, the items the dead one had not answered:
it may have committed some of them, and each is safe to write again (a cursor save is a
max-update, a touch only reads positions and sets last_seen, a device's publish is
deduplicated by its id). So the acks of a session closed normally are durable before
the device's next catch-up even when a writer died with them (protocol.md §3 Delivery),
and a touch never overtakes the cursor saves sent before it. An item that every one of
``MAX_ATTEMPTS`` writer processes died with is given up (a publish is nacked
``unavailable``), and so is a publish that cannot be deduplicated (a server-made one,
without a device). Only writers that die soon after they started, one after the other,
are restarted after a pause (a crash loop); the first is restarted at once.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import logging
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import astuple
from typing import Any

import peewee as pw

from relaybox.store.codec import (
    PROBE_ITEM,
    Handler,
    Item,
    WriterGone,
    pack,
    read_answers,
    unpack,
)
from relaybox.store.events import Failed, StoredEvent
from relaybox.store.front import EventLog
from relaybox.store.quotas import Quotas
from relaybox.store.writer import Settle

__all__ = ["MAX_ATTEMPTS", "QUICK_DEATH_S", "RESTART_PAUSES_S", "WRITER_MODULE",
           "ProcessEventLog", "ProcessWriter", "WriterGone", "database_spec",
           "discard_prestarted", "prestart"]

log = logging.getLogger("relaybox.store")

#: What the writer process runs: ``python -m WRITER_MODULE FD``.
WRITER_MODULE = "relaybox.store.writer_main"
READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 30.0
#: Writer processes an item may be sent to: one that all of them died with is given up
#: (it may be what kills them).
MAX_ATTEMPTS = 3
#: A writer process that dies sooner than this after it started, or before it answered
#: anything, counts towards a crash loop; one that lived longer ends it.
QUICK_DEATH_S = 1.0
#: Pauses before restarting the 2nd, 3rd… writer process of a crash loop (the 1st: none).
RESTART_PAUSES_S = (0.0, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0)

# Writer processes started ahead of their event log (``prestart``), by module.
_prestarted: dict[str, tuple[subprocess.Popen[bytes], socket.socket]] = {}


def _popen(module: str) -> tuple[subprocess.Popen[bytes], socket.socket]:
    ours, theirs = socket.socketpair()
    try:
        proc = subprocess.Popen(  # noqa: S603 - our own interpreter and module
            [sys.executable, "-m", module, str(theirs.fileno())],
            pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL)
    except BaseException:
        ours.close()
        raise
    finally:
        theirs.close()
    return proc, ours


def prestart(module: str = WRITER_MODULE) -> None:
    """Start the writer process of the event log this process will create, before it
    exists: the writer's start (an interpreter and its imports, ~0.15 s) then overlaps the
    server's own start instead of following it. It waits for its spec; the first
    ``ProcessWriter`` of ``module`` takes it."""
    if module not in _prestarted:
        _prestarted[module] = _popen(module)


def discard_prestarted() -> None:
    """End a prestarted writer process that no event log took (it exits when its socket
    closes before a spec arrives)."""
    while _prestarted:
        _, (proc, sock) = _prestarted.popitem()
        sock.close()
        try:
            proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def database_spec(db: pw.Database, settings: Any) -> dict[str, Any]:
    """What the writer process needs: the same database, the server's log settings and
    the quotas it enforces (store/quotas.py)."""
    common = {"log_format": settings.log_format, "log_level": settings.log_level,
              "quotas": astuple(Quotas.from_settings(settings))}
    if isinstance(db, pw.SqliteDatabase):
        return {"sqlite": str(db.database), "synchronous": settings.sqlite_synchronous,
                "replicated": bool(settings.replication_enabled), **common}
    return {"url": settings.database_url, **common}


class _Link(asyncio.Protocol):
    """The loop's end of the socket pair."""

    def __init__(self, owner: ProcessWriter) -> None:
        self.owner = owner
        self.buf = bytearray()
        self.transport: Any = None  # asyncio's or uvloop's (not an asyncio.Transport)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buf += data
        for msg in unpack(self.buf):
            self.owner._answer(self, msg)

    def connection_lost(self, exc: Exception | None) -> None:
        self.owner._lost(self)


class ProcessWriter:
    """The writer in a child process (SQLite files and PostgreSQL); see the module's
    docstring. ``setup(spec)``, if given, runs first in the writer process (the server
    passes its log set-up); it crosses by name, so it must be a module-level function."""

    def __init__(self, spec: dict[str, Any], *, module: str = WRITER_MODULE,
                 setup: Callable[[dict[str, Any]], None] | None = None,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.module = module  # run with ``python -m``; it calls writer_main.run
        self.spec = dict(spec)
        if setup is not None:
            self.spec["setup"] = f"{setup.__module__}:{setup.__qualname__}"
        self.healthy = True
        self.proc: subprocess.Popen[bytes] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._settle: Settle | None = None
        self._link: _Link | None = None
        self._out: list[Item] = []
        self._flush_scheduled = False
        # One entry per item sent and not answered, in order: (kind, callback or future,
        # the PublishRequest of a publish, the item, writer processes that died with it).
        self._pending: collections.deque[tuple[str, Any, Any, Item, int]] = \
            collections.deque()
        self._stopping = False
        self._was_ready = False  # a writer that never opened the database is not restarted
        self.monotonic = monotonic  # for restart pauses (tests move it)
        self.quick_deaths = 0  # writer processes in a row that died soon after starting
        self.started = 0  # writer processes started
        self._started_at = 0.0  # when the running writer process was started (clock)
        self._answered = False  # whether the running writer process answered anything
        self._respawn: asyncio.TimerHandle | None = None

    @property
    def pid(self) -> int | None:
        """The running writer process."""
        proc = self.proc
        return proc.pid if proc is not None and proc.returncode is None else None

    # -- lifecycle -------------------------------------------------------------
    def start(self, loop: asyncio.AbstractEventLoop, settle: Settle) -> None:
        self._loop, self._settle = loop, settle
        self._spawn()

    async def ready(self) -> None:
        """Wait until the writer process has opened the database; raises ``WriterGone``
        (and gives up on the writer process) if it cannot."""
        assert self._loop is not None
        fut: asyncio.Future[Any] = self._loop.create_future()
        self.send(PROBE_ITEM, ("b", fut, None))
        try:
            await asyncio.wait_for(fut, READY_TIMEOUT_S)
            self._was_ready = True
        except (TimeoutError, WriterGone):
            self._give_up()
            raise WriterGone("the writer process could not open the database; "
                             "its error is in the log above") from None

    def _give_up(self) -> None:
        self._stopping = True
        if self._respawn is not None:
            self._respawn.cancel()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def _spawn(self) -> None:
        assert self._loop is not None
        self.started += 1
        self._started_at = self.monotonic()
        self._answered = False
        taken = _prestarted.pop(self.module, None)
        if taken is not None and taken[0].poll() is not None:
            taken[1].close()
            taken = None
        if taken is not None:
            try:
                taken[1].sendall(pack(self.spec))
            except OSError:  # it died just now
                taken[1].close()
                taken = None
        if taken is None:
            taken = _popen(self.module)
            # The spec (it may hold the database password) goes over the socket as the
            # first frame, never on the command line, which every local user can read.
            taken[1].sendall(pack(self.spec))
        self.proc, ours = taken
        ours.setblocking(False)
        link = _Link(self)
        self._link = link
        self._loop.call_soon(self._connect, ours, link)

    def _connect(self, sock: socket.socket, link: _Link) -> None:
        assert self._loop is not None

        async def connect() -> None:
            assert self._loop is not None
            await self._loop.create_unix_connection(lambda: link, sock=sock)
            self._flush()
            if self._stopping:
                self._end_input(link)

        self._loop.create_task(connect())

    def stop(self) -> None:
        """Let the writer process commit what it was sent, then wait for it (blocking;
        called from a thread, not the loop)."""
        loop, proc = self._loop, self.proc
        handed: concurrent.futures.Future[Any] = concurrent.futures.Future()

        def end() -> None:
            self._stopping = True
            try:
                if self._respawn is not None:
                    # A writer died just before: its successor still commits what it left
                    # (its input ends once it is connected).
                    self._respawn.cancel()
                    self._respawn = None
                    self._spawn()
                elif self._link is not None:
                    self._end_input(self._link)
            finally:
                handed.set_result(self.proc)

        if loop is not None and not loop.is_closed() and loop.is_running():
            with contextlib.suppress(RuntimeError, concurrent.futures.TimeoutError):
                loop.call_soon_threadsafe(end)
                proc = handed.result(STOP_TIMEOUT_S)
        elif loop is not None and not loop.is_closed():
            end()  # a loop that is not running touches no link: its input ends from here
            proc = handed.result(0)
        self._stopping = True
        if proc is not None:
            try:
                proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                log.error("the writer process did not stop; killing it")
                proc.kill()
                proc.wait()

    def _end_input(self, link: _Link) -> None:
        """End of input: the writer process commits everything sent so far, answers it
        and exits, which closes the socket. (Until the socket is connected, ``connect``
        does this once it is.)"""
        if link.transport is not None and not link.transport.is_closing():
            self._flush()
            link.transport.write_eof()

    # -- items (event loop side) -------------------------------------------------
    def send(self, item: Item, handler: Handler) -> None:
        self._pending.append((*handler, item, 0))
        self._out.append(item)
        if not self._flush_scheduled:
            # Everything one loop iteration produces goes out as one frame.
            self._flush_scheduled = True
            assert self._loop is not None
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        link = self._link
        if not self._out or link is None or link.transport is None:
            return  # sent once the writer process is connected
        if link.transport.is_closing():
            return
        items, self._out = self._out, []
        link.transport.write(pack(items))

    def _answer(self, link: _Link, msg: tuple[list[Any], float, bool]) -> None:
        if link is not self._link:
            return
        answers, seconds, healthy = msg
        self.healthy = healthy
        self._answered = True
        callbacks, pubs, new_events, futures = read_answers(self._pending, answers)
        assert self._settle is not None
        self._settle(callbacks, pubs, new_events, futures, len(callbacks), seconds)

    def _lost(self, link: _Link) -> None:
        if link is not self._link:
            return
        self._link = None
        pending, self._pending = self._pending, collections.deque()
        self._out = []  # every unsent item is in ``pending`` too
        restart = not self._stopping and self._was_ready
        # Items sent and not answered: the dead writer may have committed any of them.
        # When a new writer follows, each goes to it again, in order (see the module's
        # docstring); otherwise publishes are nacked (a retry is deduplicated) and the
        # rest fail.
        callbacks, futures = [], []
        given_up = 0
        for entry in pending:
            kind, handler, req, item, attempts = entry
            if restart and attempts + 1 < MAX_ATTEMPTS and (kind != "p"
                                                            or req.device_id is not None):
                self._pending.append((kind, handler, req, item, attempts + 1))
                self._out.append(item)
                continue
            given_up += 1
            if kind == "p":
                callbacks.append(handler)
            elif kind != "c":
                futures.append((handler, None, WriterGone("the writer process stopped")))
        assert self._settle is not None
        new_events: list[StoredEvent] = []
        self._settle(callbacks, [Failed("the writer process stopped")] * len(callbacks),
                     new_events, futures, 0, 0.0)
        if not restart:
            return
        self.healthy = False
        code = self.proc.poll() if self.proc is not None else None
        if self.proc is not None and code is None:
            self.proc.kill()
        # The first writer of a crash loop is restarted at once, the next ones after a
        # growing pause; one that lived and answered ends the loop.
        quick = not self._answered or self.monotonic() - self._started_at < QUICK_DEATH_S
        self.quick_deaths = self.quick_deaths + 1 if quick else 0
        delay = RESTART_PAUSES_S[min(max(self.quick_deaths - 1, 0),
                                     len(RESTART_PAUSES_S) - 1)]
        log.error("the writer process stopped (exit code %s); starting a new one%s: "
                  "%d items go to it again, %d given up", code,
                  f" in {delay:g} s" if delay else "", len(self._pending), given_up)
        assert self._loop is not None
        if delay:
            self._respawn = self._loop.call_later(delay, self._respawned)
        else:
            self._spawn()

    def _respawned(self) -> None:
        self._respawn = None
        if not self._stopping:
            self._spawn()


class ProcessEventLog(EventLog):
    """The event log with a ``ProcessWriter``."""

    writer: ProcessWriter

    def __init__(self, db: pw.Database, spec: dict[str, Any], *, batch_max: int = 1024,
                 read_threads: int = 4,
                 on_committed: Callable[[list[Any]], None] | None = None,
                 on_batch: Callable[[int, float], None] | None = None,
                 module: str = WRITER_MODULE,
                 setup: Callable[[dict[str, Any]], None] | None = None,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        super().__init__(db, read_threads=read_threads, on_committed=on_committed,
                         on_batch=on_batch,
                         writer=ProcessWriter({**spec, "batch_max": batch_max}, module=module,
                                              setup=setup, monotonic=monotonic))
