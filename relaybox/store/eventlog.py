"""The event log: one writer thread that group-commits publishes and cursors."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import peewee as pw

from relaybox.protocol.encoding import now_ms
from relaybox.store.append import (
    KEY_HEAD_SQL,
    Positions,
    append,
    append_now,
    data_error,
    executemany,
    positions,
)
from relaybox.store.checkpoint import JOURNAL_SIZE_LIMIT, WalCheckpointer
from relaybox.store.db import is_postgres
from relaybox.store.events import (
    Accepted,
    Conflicted,
    Failed,
    PublishRequest,
    PublishResult,
    Refused,
    StoredEvent,
)
from relaybox.store.quotas import OverQuota, Quotas

__all__ = [  # the event types and the append functions are used from here too
    "KEY_HEAD_SQL", "Accepted", "BatchOutcome", "BatchStats", "Conflicted", "EventLog",
    "Failed", "Positions", "PublishRequest", "PublishResult", "Refused", "StoredEvent",
    "append", "append_now", "data_error", "positions",
]

log = logging.getLogger("relaybox.store")


_STOP = object()
_KEYS_KEPT = 65536  # keys remembered by the writer (about 10 MiB at most)


@dataclass(slots=True)
class _Cursor:
    device_id: str
    stream: str
    seq: int


@dataclass(slots=True)
class _Call:
    fn: Callable[[], Any]


@dataclass(slots=True)
class _Touch:
    device_id: str
    user_id: str | None  # set: read the user's positions after the batch's cursors
    fut: asyncio.Future[Any]


@dataclass(slots=True)
class BatchOutcome:
    """What one writer batch did, in the order of its items."""

    results: list[PublishResult]
    new_events: list[StoredEvent]  # stored now (never duplicates), in seq order per stream
    touches: list[tuple[Any, Exception | None]]  # (positions or None, error)
    calls: list[tuple[Any, Exception | None]]
    seconds: float
    healthy: bool


@dataclass(slots=True)
class BatchStats:
    batches: int = 0
    events: int = 0
    last_size: int = 0
    last_seconds: float = 0.0

    def record(self, size: int, stored: int, seconds: float) -> None:
        """A batch of ``size`` publishes, ``stored`` of them new, took ``seconds``."""
        self.batches += 1
        self.events += stored
        self.last_size = size
        self.last_seconds = seconds


#: Most cursor saves kept across failed batches (one per device and stream).
_RETAINED_MAX = 100_000


def _connection_lost(exc: Exception) -> bool:
    """Did the database drop the connection (as opposed to refusing the statement)?"""
    text = str(exc).lower()
    return isinstance(exc, pw.InterfaceError) or any(m in text for m in (
        "server closed the connection", "connection already closed",
        "terminating connection", "connection not open", "could not receive data",
        "ssl connection has been closed", "no connection to the server"))


def _real_error(exc: Exception) -> Exception:
    """The error that failed a transaction. When SQLite has already rolled back by itself
    (a full disk, an I/O error), the ROLLBACK that follows fails too ("no transaction is
    active") and would hide the cause: report the cause."""
    seen: Exception = exc
    for _ in range(8):  # the driver's error, the ORM's around it, and so on
        if "no transaction is active" not in str(seen):
            return seen
        cause = seen.__context__
        if not isinstance(cause, Exception) or cause is seen:
            break
        seen = cause
    return exc


class EventLog:
    """Single writer thread; publishes from every session share one transaction per batch.

    Results are handed back to the event loop with one ``call_soon_threadsafe`` per batch;
    ``on_committed`` receives the newly stored events (never duplicates) in seq order.
    """

    def __init__(
        self,
        db: pw.Database,
        *,
        batch_max: int = 1024,
        read_threads: int = 4,
        on_committed: Callable[[list[StoredEvent]], None] | None = None,
        on_batch: Callable[[int, float], None] | None = None,
        clock: Callable[[], int] = now_ms,
        quotas: Quotas | None = None,
        checkpoints: bool = True,
    ) -> None:
        self.db = db
        self.quotas = quotas or Quotas()  # store/quotas.py; none by default
        # Users whose last batch passed a quota: their batches are checked publish by
        # publish at once, rather than written, found over and written again.
        self._over: set[str] = set()
        # Cursor saves of batches that failed (disk full, database down): acks must not
        # be dropped, so they go into the next batch (protocol.md §3 Delivery). Bounded.
        self._retained: dict[tuple[str, str], int] = {}
        # Keys this writer stored (user_id, stream, key): not looked up again for the keys
        # quota. Only committed ones, so the count of a stream's keys never misses one.
        self._keys: set[tuple[str, str, str]] = set()
        self.batch_max = batch_max
        self.on_committed = on_committed
        self.on_batch = on_batch
        self.clock = clock
        self.stats = BatchStats()
        self._q: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.readers = ThreadPoolExecutor(read_threads, thread_name_prefix="relaybox-read")
        self._pg = is_postgres(db)
        self._p = "%s" if self._pg else "?"
        self.healthy = True
        # SQLite files: checkpoints run beside the writer, never inside one of its commits.
        # ``checkpoints=False`` when Litestream replicates the file: then it alone
        # checkpoints (store/checkpoint.py explains why).
        self.checkpointer: WalCheckpointer | None = None
        if checkpoints and isinstance(db, pw.SqliteDatabase) \
                and db.database not in ("", ":memory:") \
                and not str(db.database).startswith("file::memory:"):
            self.checkpointer = WalCheckpointer(db.database)

    # -- lifecycle -------------------------------------------------------------
    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        if self.checkpointer is not None:
            self.checkpointer.start()
        self._thread = threading.Thread(target=self._run, name="relaybox-writer", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Commit everything queued, then stop the writer (blocking)."""
        if self._thread is not None:
            self._q.put(_STOP)
            self._thread.join(timeout=30)
            self._thread = None
        if self.checkpointer is not None:
            self.checkpointer.stop()
        self.readers.shutdown(wait=True)

    # -- API (event loop side) -------------------------------------------------
    def publish(self, req: PublishRequest) -> asyncio.Future[PublishResult]:
        assert self._loop is not None
        fut: asyncio.Future[PublishResult] = self._loop.create_future()

        def resolve(res: PublishResult) -> None:
            if not fut.done():
                fut.set_result(res)

        self.publish_cb(req, resolve)
        return fut

    def publish_cb(self, req: PublishRequest, callback: Callable[[PublishResult], None]) -> None:
        """Like ``publish`` without a future: ``callback(result)`` runs on the loop after
        the commit (the gateway's hot path)."""
        self._q.put((req, callback))

    def save_cursor(self, device_id: str, stream: str, seq: int) -> None:
        """Record an ack; committed with the next batch (cursors are batched)."""
        self._q.put(_Cursor(device_id, stream, seq))

    def touch(self, device_id: str, user_id: str | None = None) -> asyncio.Future[Any]:
        """Record that ``device_id`` was seen now, in the next batch.

        The future resolves after that batch committed, so everything queued before (an
        earlier session's acks) is durable by then. With ``user_id``, it resolves to the
        user's stream heads and the device's cursors as of that commit (``Positions``).
        """
        assert self._loop is not None
        fut: asyncio.Future[Any] = self._loop.create_future()
        self._q.put(_Touch(device_id, user_id, fut))
        return fut

    async def ready(self) -> None:
        """Wait until the writer can write (the thread needs no wait)."""

    def probe(self) -> asyncio.Future[Any]:
        """A future that resolves after an (empty) write round trip through the writer."""
        return self.call(lambda: None)

    def call(self, fn: Callable[[], Any]) -> asyncio.Future[Any]:
        """Run ``fn`` in the writer thread after everything queued before it is committed."""
        assert self._loop is not None
        fut: asyncio.Future[Any] = self._loop.create_future()
        self._q.put((_Call(fn), fut))
        return fut

    async def read(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run a blocking read in the reader pool."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.readers, self._read, fn, args)

    def _read(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> Any:
        """One read, in a reader thread. A connection the database dropped (a restart, an
        administrator's pg_terminate_backend, a failover) is replaced and the read tried
        once more: a read changes nothing, so it is safe to repeat."""
        try:
            return fn(*args)
        except (pw.OperationalError, pw.InterfaceError) as exc:
            if not _connection_lost(exc):
                raise
            with contextlib.suppress(Exception):
                self.db.close()  # this thread's connection
            return fn(*args)

    # -- writer thread -----------------------------------------------------------
    def _run(self) -> None:
        stop = False
        while not stop:
            items = [self._q.get()]
            try:
                while len(items) < self.batch_max:
                    items.append(self._q.get_nowait())
            except queue.Empty:
                pass
            if any(it is _STOP for it in items):
                stop = True
                items = [it for it in items if it is not _STOP]
            if items:
                self._process(items)
        if not self.db.is_closed():
            self.db.close()

    def _process(self, items: list[Any]) -> None:
        pubs: list[tuple[PublishRequest, Callable[[PublishResult], None]]] = []
        calls: list[tuple[_Call, asyncio.Future[Any]]] = []
        cursors: dict[tuple[str, str], int] = {}
        touches: list[_Touch] = []
        for it in items:
            if isinstance(it, _Cursor):
                k = (it.device_id, it.stream)
                if it.seq > cursors.get(k, -1):
                    cursors[k] = it.seq
            elif isinstance(it, _Touch):
                touches.append(it)
            elif isinstance(it[0], _Call):
                calls.append(it)
            else:
                pubs.append(it)
        out = self.apply([p[0] for p in pubs], cursors,
                         [(t.device_id, t.user_id) for t in touches],
                         [c[0].fn for c in calls])
        call_results = [(t.fut, v, e) for t, (v, e) in zip(touches, out.touches, strict=True)]
        call_results += [(c[1], v, e) for c, (v, e) in zip(calls, out.calls, strict=True)]
        assert self._loop is not None
        if self._loop.is_closed():
            return
        pub_callbacks = [p[1] for p in pubs]
        try:
            self._loop.call_soon_threadsafe(self._deliver, pub_callbacks, out.results,
                                            out.new_events, call_results, len(pubs),
                                            out.seconds)
        except RuntimeError:  # loop closed during shutdown
            pass

    def apply(self, pubs: list[PublishRequest], cursors: dict[tuple[str, str], int],
              touches: list[tuple[str, str | None]], calls: list[Callable[[], Any]]
              ) -> BatchOutcome:
        """Write one batch in one transaction (one fsync): publishes, cursors, touches and
        calls, each call in a savepoint of its own so that it fails alone. Runs in the
        writer (thread or process); never raises."""
        if self._retained:
            for k, seq in self._retained.items():
                if seq > cursors.get(k, -1):
                    cursors[k] = seq
            self._retained = {}
        results: list[PublishResult] = []
        new_events: list[StoredEvent] = []
        touch_results: list[tuple[Any, Exception | None]] = []
        call_results: list[tuple[Any, Exception | None]] = []
        started = time.perf_counter()
        # Publishes are first written as new: the unique (id, device) index refuses one
        # that repeats a stored event (a retry after a lost ack), and only then is the
        # batch redone with the duplicate query (one statement fewer per batch).
        assume_new = True
        # When the database refuses a value (data_error), the batch is written again with
        # each publish, cursor and touch in a savepoint, so that only the item at fault
        # fails and everything else commits.
        isolate = False
        # Over a quota (store/quotas.py), the batch is written again checking each publish.
        careful = bool(self._over) and any(r.user_id in self._over for r in pubs)
        attempt = 0
        error: Exception | None = None
        while attempt < 3:
            attempt += 1
            try:
                self._ensure_connection()
                if self.checkpointer is not None and self.checkpointer.restart_wanted:
                    self.checkpointer.restart(self.db)
                with self._transaction():
                    if isolate:
                        results, new_events = self._write_publishes_alone(pubs, careful)
                        self._write_cursors_alone(cursors)
                        touch_results = self._write_touches_alone(touches)
                    else:
                        results, new_events = self._write_publishes(pubs, assume_new,
                                                                    careful)
                        self._write_cursors(cursors)
                        touch_results = self._write_touches(touches)
                    call_results = [self._run_call(fn) for fn in calls]
                error = None
                self.healthy = True
                if self.checkpointer is not None:
                    self.checkpointer.committed()
                break
            except Exception as exc:
                exc = _real_error(exc)
                if isinstance(exc, OverQuota) and not careful:
                    if len(self._over) > 10000:
                        self._over.clear()  # a bound; a user is added back if still over
                    self._over |= exc.users
                    careful = True  # rolled back; redo checking each publish
                    attempt -= 1
                    continue
                if assume_new and isinstance(exc, pw.IntegrityError):
                    assume_new = False  # rolled back; redo with the duplicate query
                    attempt -= 1
                    continue
                if not isolate and data_error(exc):
                    # One item's value, not the database: the connection is fine.
                    log.warning("the database refused a value; writing the batch again "
                                "item by item: %s", exc)
                    isolate = True
                    attempt -= 1
                    continue
                if isinstance(exc, pw.IntegrityError | pw.OperationalError |
                              pw.InterfaceError | sqlite3.OperationalError):
                    # A concurrent writer in another process (same id twice), a lock
                    # timeout or a lost connection: re-evaluate the whole batch; after
                    # that, report unavailable (safe to retry).
                    log.warning("commit failed (attempt %d): %s", attempt, exc)
                else:
                    log.exception("commit failed: %s", exc)
                    attempt = 3  # not worth retrying
                error = exc
            self._reset_connection()
            self.healthy = False
        if error is not None:
            results, new_events = [Failed(str(error))] * len(pubs), []
            touch_results = [(None, error)] * len(touches)
            call_results = [(None, error)] * len(calls)
            if len(cursors) <= _RETAINED_MAX:
                self._retained = cursors
        else:
            if len(self._keys) > _KEYS_KEPT:
                self._keys.clear()
            self._keys.update((e.user_id, e.stream, e.key) for e in new_events
                              if e.key is not None)
        if error is None and careful:
            # Users with no publish refused for a quota here go back to the fast path.
            still = {r.user_id for r, res in zip(pubs, results, strict=True)
                     if isinstance(res, Refused) and res.quota is not None}
            self._over -= {r.user_id for r in pubs} - still
        elapsed = time.perf_counter() - started
        if pubs:
            self.stats.record(len(pubs), len(new_events), elapsed)
        return BatchOutcome(results, new_events, touch_results, call_results, elapsed,
                            self.healthy)

    def _deliver(self, callbacks: list[Callable[[PublishResult], None]],
                 results: list[PublishResult],
                 new_events: list[StoredEvent], call_results: list[tuple[Any, Any, Any]],
                 size: int, elapsed: float) -> None:
        # Fan-out first so that the ack never reaches the publisher before relay started.
        if new_events and self.on_committed is not None:
            try:
                self.on_committed(new_events)
            except Exception:
                log.exception("fan-out failed")
        if size and self.on_batch is not None:
            self.on_batch(size, elapsed)
        for callback, res in zip(callbacks, results, strict=True):
            try:
                callback(res)
            except Exception:
                log.exception("publish callback failed")
        for fut, value, exc in call_results:
            if fut.done():
                continue
            if exc is not None:
                fut.set_exception(exc)
            else:
                fut.set_result(value)

    def _run_call(self, fn: Callable[[], Any]) -> tuple[Any, Exception | None]:
        try:
            with self.db.atomic():  # a savepoint inside the batch's transaction
                return fn(), None
        except (pw.OperationalError, pw.InterfaceError):
            raise  # the connection itself failed: the whole batch is retried
        except Exception as exc:
            return None, exc

    def _transaction(self) -> Any:
        if self._pg:
            return self.db.atomic()
        # BEGIN IMMEDIATE: take the write lock before reading heads, so that another
        # process writing the same file can never hand out the same seq.
        return self.db.atomic(lock_type="IMMEDIATE")

    def _ensure_connection(self) -> None:
        if not self.db.is_closed():
            return
        self.db.connect()
        if self.checkpointer is not None:
            # The checkpointer thread copies pages into the database file; this
            # connection only appends to the WAL.
            self.db.execute_sql("PRAGMA wal_autocheckpoint=0")
            # When this connection starts the WAL over, the file shrinks back to this.
            self.db.execute_sql(f"PRAGMA journal_size_limit={JOURNAL_SIZE_LIMIT}")

    def _reset_connection(self) -> None:
        try:
            if not self.db.is_closed():
                self.db.close()
        except Exception:  # noqa: S110 - a broken connection may refuse to close
            pass

    def _write_publishes(
        self, reqs: list[PublishRequest], assume_new: bool = False, careful: bool = False
    ) -> tuple[list[PublishResult], list[StoredEvent]]:
        return append(self.db, reqs, self.clock(), assume_new=assume_new, quotas=self.quotas,
                      careful=careful, seen_keys=self._keys)

    def _write_publishes_alone(self, reqs: list[PublishRequest], careful: bool = False
                               ) -> tuple[list[PublishResult], list[StoredEvent]]:
        """Publishes in savepoints: a part the database refuses is halved until the
        publish at fault is alone (a few savepoints per refused publish, in order)."""
        results: list[PublishResult] = []
        new_events: list[StoredEvent] = []
        ts = self.clock()
        pending = [(0, len(reqs))]
        while pending:
            lo, hi = pending.pop()
            try:
                with self.db.atomic():  # a savepoint
                    part, events = append(self.db, reqs[lo:hi], ts, quotas=self.quotas,
                                          careful=careful, seen_keys=self._keys)
            except Exception as exc:
                if not data_error(exc):
                    raise
                if hi - lo > 1:
                    mid = (lo + hi) // 2
                    pending += [(mid, hi), (lo, mid)]  # the first half first
                    continue
                log.warning("publish %s refused by the database: %s", reqs[lo].client_id, exc)
                part, events = [Refused("invalid", "storage cannot hold a value of this "
                                                   "event")], []
            results += part
            new_events += events
        return results, new_events

    def _write_cursors_alone(self, cursors: dict[tuple[str, str], int]) -> None:
        """Cursors in a savepoint; if the database refuses one, each in a savepoint of
        its own, and the refused ones are dropped (an ack is only a position)."""
        if len(cursors) > 1:
            try:
                with self.db.atomic():
                    self._write_cursors(cursors)
                return
            except Exception as exc:
                if not data_error(exc):
                    raise
        for k, seq in cursors.items():
            try:
                with self.db.atomic():
                    self._write_cursors({k: seq})
            except Exception as exc:
                if not data_error(exc):
                    raise
                log.warning("cursor %r refused by the database: %s", k, exc)

    def _write_touches_alone(self, touches: list[tuple[str, str | None]]
                             ) -> list[tuple[Any, Exception | None]]:
        out: list[tuple[Any, Exception | None]] = []
        for touch in touches:
            try:
                with self.db.atomic():
                    out += self._write_touches([touch])
            except Exception as exc:
                if not data_error(exc):
                    raise
                log.warning("touch of %s refused by the database: %s", touch[0], exc)
                out.append((None, exc))
        return out

    def _write_touches(self, touches: list[tuple[str, str | None]]
                       ) -> list[tuple[Any, Exception | None]]:
        if not touches:
            return []
        p = self._p
        now = self.clock()
        executemany(self.db, f"UPDATE device SET last_seen_at = {p} WHERE id = {p}",
                    [(now, d) for d in sorted({device_id for device_id, _ in touches})])
        return [(positions(self.db, user_id, device_id) if user_id else None, None)
                for device_id, user_id in touches]

    def _write_cursors(self, cursors: dict[tuple[str, str], int]) -> None:
        if not cursors:
            return
        p = self._p
        executemany(
            self.db,
            f'INSERT INTO "cursor" (device_id, stream, acked_seq) VALUES ({p}, {p}, {p}) '
            "ON CONFLICT (device_id, stream) DO UPDATE SET acked_seq = "
            'CASE WHEN excluded.acked_seq > "cursor".acked_seq THEN excluded.acked_seq '
            'ELSE "cursor".acked_seq END',
            # Rows in one order for every writer (no deadlock between nodes' writers).
            [(d, s, q) for (d, s), q in sorted(cursors.items())])


