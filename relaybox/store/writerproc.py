"""The event log's writer in a process of its own (how ``relaybox serve`` runs it).

The writer thread shares the interpreter lock with the event loop: each statement of a
commit (and the fsync) hands the lock back, and the writer then waits for whatever
Python work the loop is doing before it can go on, several times per batch. A writer
process has its own interpreter, so a commit never waits for the loop, and the loop
never waits for the writer's Python work.

``ProcessEventLog`` keeps ``EventLog``'s API. The loop sends the items of each loop
iteration as one frame over a socket pair; the writer process reads whatever has
arrived (up to ``batch_max`` items), writes it in one transaction with the same code as
the writer thread (``EventLog.apply``), and answers with one frame of results in item
order. Frames are a 4-byte length and a pickle of plain tuples (both ends are relaybox,
on a socket pair no one else holds); a stored publish is answered with just its seq and
ts, and the loop rebuilds the event from the request it kept.

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
import logging
import pickle
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import astuple
from pathlib import Path
from typing import Any

import peewee as pw

from relaybox.protocol.encoding import format_ts
from relaybox.store.eventlog import (
    Accepted,
    EventLog,
    Failed,
    PublishRequest,
    PublishResult,
    StoredEvent,
)
from relaybox.store.quotas import Quotas

log = logging.getLogger("relaybox.store")

_LEN = struct.Struct("!I")
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


# Items on the wire are plain tuples (cheap to pickle), tagged by their first element:
_PUBLISH = 0  # (tag, user_id, device_id, client_id, stream, body, key, base_seq)
_CURSOR = 1  # (tag, device_id, stream, seq)
_TOUCH = 2  # (tag, device_id, user_id or None)
_PROBE = 3  # (tag,): an empty write round trip (does writing work?)
# A publish is answered with (seq, ts) when it was stored now (the loop still has the
# rest of the event), ("dup", *stored event) when it repeats a stored one, or the
# Conflicted / Failed result itself. A batch's answer is (answers, seconds, healthy).


class WriterGone(RuntimeError):
    """The writer process stopped before answering."""


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


def prestart(module: str = "relaybox.server.writer") -> None:
    """Start the writer process of the event log this process will create, before it
    exists: the writer's start (an interpreter and its imports, ~0.15 s) then overlaps the
    server's own start instead of following it. It waits for its spec; the first
    ``ProcessEventLog`` of ``module`` takes it."""
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


def _encode(obj: Any) -> bytes:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    return _LEN.pack(len(data)) + data


def _frames(buf: bytearray, limit: int | None = None) -> list[Any]:
    """Take the complete frames (at most ``limit`` of them) out of ``buf``."""
    out: list[Any] = []
    pos = 0
    while len(buf) - pos >= 4 and (limit is None or len(out) < limit):
        (n,) = _LEN.unpack_from(buf, pos)
        if len(buf) - pos - 4 < n:
            break
        out.append(pickle.loads(buf[pos + 4:pos + 4 + n]))  # noqa: S301 - our own frames
        pos += 4 + n
    del buf[:pos]
    return out


class _Link(asyncio.Protocol):
    """The loop's end of the socket pair."""

    def __init__(self, owner: ProcessEventLog) -> None:
        self.owner = owner
        self.buf = bytearray()
        self.transport: Any = None  # asyncio's or uvloop's (not an asyncio.Transport)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buf += data
        for msg in _frames(self.buf):
            self.owner._answer(self, msg)

    def connection_lost(self, exc: Exception | None) -> None:
        self.owner._lost(self)


class ProcessEventLog(EventLog):
    """``EventLog`` with the writer in a child process (SQLite files and PostgreSQL)."""

    def __init__(self, db: pw.Database, spec: dict[str, Any], *, batch_max: int = 1024,
                 read_threads: int = 4,
                 on_committed: Callable[[list[Any]], None] | None = None,
                 on_batch: Callable[[int, float], None] | None = None,
                 module: str = "relaybox.server.writer",
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        super().__init__(db, batch_max=batch_max, read_threads=read_threads,
                         on_committed=on_committed, on_batch=on_batch)
        self.module = module  # run with ``python -m``; it calls ``run`` (below)
        self.checkpointer = None  # the writer process runs it beside its connection
        self.spec = {**spec, "batch_max": batch_max}
        self.proc: subprocess.Popen[bytes] | None = None
        self._link: _Link | None = None
        self._out: list[Any] = []
        self._flush_scheduled = False
        # One entry per item sent and not answered, in order: (kind, callback or future,
        # the PublishRequest of a publish, the item, writer processes that died with it).
        self._pending: collections.deque[tuple[str, Any, Any, tuple[Any, ...], int]] = \
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
    def writer_pid(self) -> int | None:
        """The running writer process (for the memory metric)."""
        proc = self.proc
        return proc.pid if proc is not None and proc.returncode is None else None

    # -- lifecycle -------------------------------------------------------------
    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._spawn()

    async def ready(self) -> None:
        """Wait until the writer process has opened the database; raises ``WriterGone``
        (and gives up on the writer process) if it cannot."""
        fut = self._submit((_PROBE,), "b")
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
                taken[1].sendall(_encode(self.spec))
            except OSError:  # it died just now
                taken[1].close()
                taken = None
        if taken is None:
            taken = _popen(self.module)
            # The spec (it may hold the database password) goes over the socket as the
            # first frame, never on the command line, which every local user can read.
            taken[1].sendall(_encode(self.spec))
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
            try:
                loop.call_soon_threadsafe(end)
                proc = handed.result(STOP_TIMEOUT_S)
            except (RuntimeError, concurrent.futures.TimeoutError):
                pass
        self._stopping = True
        if proc is not None:
            try:
                proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                log.error("the writer process did not stop; killing it")
                proc.kill()
                proc.wait()
        self.readers.shutdown(wait=True)

    def _end_input(self, link: _Link) -> None:
        """End of input: the writer process commits everything sent so far, answers it
        and exits, which closes the socket. (Until the socket is connected, ``connect``
        does this once it is.)"""
        if link.transport is not None and not link.transport.is_closing():
            self._flush()
            link.transport.write_eof()

    # -- API (event loop side) -------------------------------------------------
    def publish_cb(self, req: PublishRequest, callback: Callable[[PublishResult], None]) -> None:
        self._send((_PUBLISH, req.user_id, req.device_id, req.client_id, req.stream, req.body,
                    req.key, req.base_seq), ("p", callback, req))

    def save_cursor(self, device_id: str, stream: str, seq: int) -> None:
        self._send((_CURSOR, device_id, stream, seq), ("c", None, None))

    def touch(self, device_id: str, user_id: str | None = None) -> asyncio.Future[Any]:
        return self._submit((_TOUCH, device_id, user_id), "t")

    def probe(self) -> asyncio.Future[Any]:
        return self._submit((_PROBE,), "b")

    def call(self, fn: Callable[[], Any]) -> asyncio.Future[Any]:
        raise TypeError("the writer process runs no callables; use probe()")

    def _submit(self, item: tuple[Any, ...], kind: str) -> asyncio.Future[Any]:
        assert self._loop is not None
        fut: asyncio.Future[Any] = self._loop.create_future()
        self._send(item, (kind, fut, None))
        return fut

    def _send(self, item: tuple[Any, ...], handler: tuple[str, Any, Any]) -> None:
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
        link.transport.write(_encode(items))

    def _answer(self, link: _Link, msg: tuple[list[Any], float, bool]) -> None:
        if link is not self._link:
            return
        answers, seconds, healthy = msg
        self.healthy = healthy
        self._answered = True
        pubs: list[PublishResult] = []
        callbacks: list[Callable[[PublishResult], None]] = []
        new_events: list[StoredEvent] = []
        futures: list[tuple[Any, Any, Any]] = []
        last_ts, ts_text = -1, ""
        for ans in answers:
            kind, handler, req, _, _ = self._pending.popleft()
            if kind == "p":
                callbacks.append(handler)
                if type(ans) is not tuple:
                    pubs.append(ans)  # Conflicted or Failed
                elif ans[0] == "dup":
                    pubs.append(Accepted(StoredEvent(*ans[1:]), duplicate=True))
                else:
                    seq, ts = ans
                    if ts != last_ts:  # one ts per commit batch, formatted once
                        last_ts, ts_text = ts, format_ts(ts)
                    ev = StoredEvent(req.user_id, req.stream, seq, req.client_id,
                                     req.device_id, req.key, ts, req.body, ts_text)
                    new_events.append(ev)
                    pubs.append(Accepted(ev, duplicate=False))
            elif kind != "c":
                futures.append((handler, ans[0], ans[1]))
        if callbacks:
            self.stats.record(len(callbacks), len(new_events), seconds)
        self._deliver(callbacks, pubs, new_events, futures, len(callbacks), seconds)

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
        self._deliver(callbacks, [Failed("the writer process stopped")] * len(callbacks), [],
                      futures, 0, 0.0)
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


# -- the writer process ------------------------------------------------------------

def _open(spec: dict[str, Any]) -> pw.Database:
    from relaybox.store.db import make_postgres, make_sqlite

    if "sqlite" in spec:
        return make_sqlite(Path(spec["sqlite"]), spec["synchronous"],
                           replicated=bool(spec.get("replicated")))
    return make_postgres(spec["url"])


def _noop() -> None:
    return None


def serve(sock: socket.socket, spec: dict[str, Any], buf: bytearray | None = None) -> None:
    """Answer batches until the socket closes (``buf``: bytes already read from it)."""
    writer = EventLog(_open(spec), batch_max=int(spec["batch_max"]), read_threads=1,
                      quotas=Quotas(*spec.get("quotas", ())),
                      checkpoints=not spec.get("replicated"))
    writer.readers.shutdown(wait=False)
    if writer.checkpointer is not None:
        writer.checkpointer.start()
    buf = buf if buf is not None else bytearray()
    queued: collections.deque[Any] = collections.deque()
    for items in _frames(buf):
        queued.extend(items)
    gone = False
    try:
        while True:
            if not queued:
                data = sock.recv(1 << 20)
                if not data:
                    break
                buf += data
                # Whatever else has already arrived joins this batch.
                sock.setblocking(False)
                try:
                    while True:
                        more = sock.recv(1 << 20)
                        if not more:
                            break
                        buf += more
                except BlockingIOError:
                    pass
                finally:
                    sock.setblocking(True)
                for items in _frames(buf):
                    queued.extend(items)
                if not queued:
                    continue
            batch = [queued.popleft() for _ in range(min(len(queued), writer.batch_max))]
            answer = _encode(_write(writer, batch))
            if not gone:
                try:
                    sock.sendall(answer)
                except OSError:
                    gone = True  # the server died: still commit what it sent, then stop
    finally:
        if writer.checkpointer is not None:
            writer.checkpointer.stop()
        if not writer.db.is_closed():
            writer.db.close()


def _write(writer: EventLog, batch: list[tuple[Any, ...]]
           ) -> tuple[list[Any], float, bool]:
    pubs: list[PublishRequest] = []
    cursors: dict[tuple[str, str], int] = {}
    touches: list[tuple[str, str | None]] = []
    calls: list[Callable[[], Any]] = []
    for it in batch:
        tag = it[0]
        if tag == _PUBLISH:
            pubs.append(PublishRequest(*it[1:]))
        elif tag == _CURSOR:
            k = (it[1], it[2])
            if it[3] > cursors.get(k, -1):
                cursors[k] = it[3]
        elif tag == _TOUCH:
            touches.append((it[1], it[2]))
        else:
            calls.append(_noop)
    out = writer.apply(pubs, cursors, touches, calls)
    # Answers in item order; errors cross as text (the loop only reports them).
    pub_results = iter(out.results)
    touch_results = iter([_plain(r) for r in out.touches])
    call_results = iter([_plain(r) for r in out.calls])
    answers: list[Any] = []
    for it in batch:
        tag = it[0]
        if tag == _PUBLISH:
            res = next(pub_results)
            if type(res) is not Accepted:
                answers.append(res)
            elif res.duplicate:
                ev = res.event
                answers.append(("dup", ev.user_id, ev.stream, ev.seq, ev.id, ev.device_id,
                                ev.key, ev.ts, ev.body))
            else:
                answers.append((res.event.seq, res.event.ts))
        elif tag == _CURSOR:
            answers.append(None)
        elif tag == _TOUCH:
            answers.append(next(touch_results))
        else:
            answers.append(next(call_results))
    return answers, out.seconds, out.healthy


def _plain(result: tuple[Any, Exception | None]) -> tuple[Any, Exception | None]:
    value, exc = result
    return value, None if exc is None else WriterGone(str(exc))


class _NoSpec(Exception):
    """The socket closed before any byte of a spec: the writer process is not needed."""


def read_spec(sock: socket.socket) -> tuple[dict[str, Any], bytearray]:
    """The first frame on the socket (the spec), and whatever arrived after it."""
    buf = bytearray()
    while True:
        first = _frames(buf, limit=1)
        if first:
            return first[0], buf
        data = sock.recv(1 << 16)
        if not data:
            if not buf:
                raise _NoSpec
            raise ConnectionResetError("the server closed the socket during the spec")
        buf += data


def run(argv: list[str], setup: Callable[[dict[str, Any]], None] | None = None) -> int:
    """The writer process's main: ``argv`` is [program, socket fd]. The spec comes as
    the socket's first frame; ``setup(spec)`` then configures logging."""
    # The server decides when the writer stops (by closing the socket): a Ctrl-C or a
    # SIGTERM sent to the whole process group must not interrupt a commit.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    sock = socket.socket(fileno=int(argv[1]))
    try:
        spec, buf = read_spec(sock)
    except _NoSpec:
        sock.close()
        return 0  # a prestarted writer process that was not needed
    except (OSError, pickle.UnpicklingError) as exc:
        sock.close()
        print(f"error: relaybox writer process: {exc}", file=sys.stderr)
        return 1
    if setup is not None:
        setup(spec)
    started = time.monotonic()
    try:
        serve(sock, spec, buf)
    except ConnectionResetError:
        pass  # the server is gone, and so is whatever it had not sent completely
    except Exception as exc:
        log.error("the writer process stopped: %s", exc)
        return 1
    finally:
        sock.close()
    log.debug("writer process done after %.1f s", time.monotonic() - started)
    return 0
