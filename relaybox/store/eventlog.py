"""The event log: one writer thread that group-commits publishes and cursors."""

from __future__ import annotations

import asyncio
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import peewee as pw

from relaybox.protocol.encoding import format_ts, now_ms
from relaybox.protocol.frames import event_frame
from relaybox.store.checkpoint import JOURNAL_SIZE_LIMIT, WalCheckpointer
from relaybox.store.db import is_postgres, write_transaction
from relaybox.store.intake import publish_problem

log = logging.getLogger("relaybox.store")


@dataclass(slots=True)
class StoredEvent:
    """An event as committed; ``frame`` is its gateway `event` message, built once."""

    user_id: str
    stream: str
    seq: int
    id: str
    device_id: str | None
    key: str | None
    ts: int
    body: str
    _ts_text: str | None = field(default=None, repr=False)
    _frame: str | None = field(default=None, repr=False)

    @property
    def ts_text(self) -> str:
        """``ts`` as RFC 3339 (shared by every event of a commit batch)."""
        if self._ts_text is None:
            self._ts_text = format_ts(self.ts)
        return self._ts_text

    @property
    def frame(self) -> str:
        if self._frame is None:
            self._frame = event_frame(self.stream, self.seq, self.id, self.device_id, self.key,
                                      self.ts_text, self.body)
        return self._frame

    def as_json(self) -> dict[str, Any]:
        import orjson

        return {"type": "event", "stream": self.stream, "seq": self.seq, "id": self.id,
                "from": self.device_id, "key": self.key, "ts": self.ts_text,
                "body": orjson.loads(self.body) if self.body else None}


@dataclass(slots=True)
class PublishRequest:
    user_id: str
    device_id: str | None  # None: a server-made event (sys.* streams)
    client_id: str
    stream: str
    body: str
    key: str | None = None
    base_seq: int | None = None


@dataclass(slots=True, frozen=True)
class Accepted:
    event: StoredEvent
    duplicate: bool


@dataclass(slots=True, frozen=True)
class Conflicted:
    stream: str
    head_seq: int


@dataclass(slots=True, frozen=True)
class Refused:
    """Not stored, and never will be as sent: ``code`` is the nack code (protocol.md §3
    Publish), ``invalid`` for a value the database refuses."""

    code: str
    message: str
    quota: str | None = None


@dataclass(slots=True, frozen=True)
class Failed:
    """Not stored because storage failed; safe to retry with the same id."""

    reason: str


PublishResult = Accepted | Conflicted | Refused | Failed
_STOP = object()
# INSERT … RETURNING needs SQLite 3.35 (PostgreSQL has it); older SQLite takes the general path.
_HAS_RETURNING = sqlite3.sqlite_version_info >= (3, 35, 0)
_ROWS_PER_INSERT = 100  # 800 parameters: under SQLite's oldest limit of 999
# peewee's own: driver exceptions become pw.IntegrityError, pw.OperationalError…
_EXCEPTION_WRAPPER = pw.__exception_wrapper__  # type: ignore[attr-defined]
#: The newest seq of a key in a stream (compare-and-set by key), through the partial
#: index of keyed events: "key = ?" implies "key IS NOT NULL" for both databases.
KEY_HEAD_SQL = "SELECT MAX(seq) FROM event WHERE user_id = {p} AND stream = {p} AND key = {p}"


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


#: {stream: (head_seq, floor_seq)} of a user, {stream: acked_seq} of a device, and whether
#: the device is revoked (or gone) as of the same transaction.
Positions = tuple[dict[str, tuple[int, int]], dict[str, int], bool]


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
    ) -> None:
        self.db = db
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
        self.checkpointer: WalCheckpointer | None = None
        if isinstance(db, pw.SqliteDatabase) and db.database not in ("", ":memory:") \
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
        return await loop.run_in_executor(self.readers, fn, *args)

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
                        results, new_events = self._write_publishes_alone(pubs)
                        self._write_cursors_alone(cursors)
                        touch_results = self._write_touches_alone(touches)
                    else:
                        results, new_events = self._write_publishes(pubs, assume_new)
                        self._write_cursors(cursors)
                        touch_results = self._write_touches(touches)
                    call_results = [self._run_call(fn) for fn in calls]
                error = None
                self.healthy = True
                if self.checkpointer is not None:
                    self.checkpointer.committed()
                break
            except Exception as exc:
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
                              pw.InterfaceError):
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
        self, reqs: list[PublishRequest], assume_new: bool = False
    ) -> tuple[list[PublishResult], list[StoredEvent]]:
        return append(self.db, reqs, self.clock(), assume_new=assume_new)

    def _write_publishes_alone(self, reqs: list[PublishRequest]
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
                    part, events = append(self.db, reqs[lo:hi], ts)
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
                    [(now, d) for d in {device_id for device_id, _ in touches}])
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
            [(d, s, q) for (d, s), q in cursors.items()])


def executemany(db: pw.Database, sql: str, rows: list[Any]) -> None:
    """``cursor.executemany`` with the driver's errors turned into peewee's (as
    ``execute_sql`` does), so that every failure of a batch is classified alike."""
    with _EXCEPTION_WRAPPER:
        db.cursor().executemany(sql, rows)


def data_error(exc: BaseException) -> bool:
    """Whether the database (or its driver) refused a value: the fault of one item of a
    batch, not of the database. A lock timeout, a lost connection or a database that is
    down raise OperationalError or InterfaceError instead, and a unique violation is
    another writer storing the same (device, id) at the same time: those fail (or
    re-evaluate) the whole batch."""
    # The drivers refuse some values before sending them: text that is not UTF-8 (both),
    # a NUL (psycopg2), an integer beyond 64 bits (sqlite3). Any other ValueError is
    # taken for a fault of the writer, not of one item.
    if isinstance(exc, UnicodeError | OverflowError):
        return True
    if type(exc) is ValueError and "NUL" in str(exc):
        return True
    orig = getattr(exc, "orig", exc)  # peewee keeps the driver's exception
    pgcode = getattr(orig, "pgcode", None)
    if pgcode is not None:
        # SQLSTATE classes 22 (data exception: too long for varchar(n), out of range…),
        # 23 (integrity; 23505 is the unique violation) and 54 (program limit exceeded:
        # an index row too large) are the value's fault; 08, 40, 53, 55, 57… are not.
        return pgcode[:2] in ("22", "54") or (pgcode[:2] == "23" and pgcode != "23505")
    if isinstance(exc, pw.DataError):
        return True  # SQLite: string or blob too big
    if isinstance(exc, pw.IntegrityError):
        return "UNIQUE constraint failed" not in str(orig)
    return False


def append(db: pw.Database, reqs: list[PublishRequest], ts: int, *,
           assume_new: bool = False) -> tuple[list[PublishResult], list[StoredEvent]]:
    """Store publishes inside the caller's write transaction (one ``ts`` per batch).

    Assigns seq per (user, stream) without gaps, deduplicates by (device, id) and applies
    compare-and-set. On SQLite the transaction must hold the write lock (BEGIN IMMEDIATE);
    on PostgreSQL the heads are locked here with SELECT … FOR UPDATE.

    ``assume_new``: skip the query for stored duplicates (duplicates within ``reqs`` are
    still found) when there is no compare-and-set; a publish that repeats a stored event
    then makes the insert raise ``IntegrityError`` and the caller, after rolling back,
    calls again without it.
    """
    if not reqs:
        return [], []
    problems = [publish_problem(r) for r in reqs]
    if any(problems):
        # Refused before the batch is written (store/intake.py): the rest goes on.
        ok = [r for r, problem in zip(reqs, problems, strict=True) if problem is None]
        stored, events = append(db, ok, ts, assume_new=assume_new)
        it = iter(stored)
        return [next(it) if problem is None else Refused("invalid", problem)
                for problem in problems], events
    pg = is_postgres(db)
    p = "%s" if pg else "?"
    ts_text = format_ts(ts)  # formatted once per batch
    plain = _HAS_RETURNING and all(r.base_seq is None for r in reqs)
    if assume_new and plain:
        return _append_plain(db, p, reqs, ts, ts_text, {})

    # Deduplicate by (device, id): one query per batch (protocol.md §3 Publish).
    ids = list({r.client_id for r in reqs if r.device_id is not None})
    known: dict[tuple[str, str], StoredEvent] = {}
    for chunk_start in range(0, len(ids), 500):
        chunk = ids[chunk_start:chunk_start + 500]
        sql = ("SELECT user_id, stream, seq, client_id, device_id, key, ts, body FROM event "
               f"WHERE client_id IN ({','.join([p] * len(chunk))})")
        for row in db.execute_sql(sql, chunk).fetchall():
            ev = StoredEvent(row[0], row[1], row[2], row[3], row[4], row[5], row[6], row[7])
            if ev.device_id is not None:
                known[(ev.device_id, ev.id)] = ev

    if plain:
        return _append_plain(db, p, reqs, ts, ts_text, known)
    return _append_general(db, p, pg, reqs, ts, ts_text, known)


def _append_plain(db: pw.Database, p: str, reqs: list[PublishRequest], ts: int, ts_text: str,
                  known: dict[tuple[str, str], StoredEvent]
                  ) -> tuple[list[PublishResult], list[StoredEvent]]:
    """No compare-and-set in the batch: each stream's seqs come from one upsert of its head
    (… RETURNING head_seq, which also locks the row on PostgreSQL) and the events go in with
    one multi-row INSERT: a handful of statements per batch, whatever its size."""
    first: dict[tuple[str, str], int] = {}  # (device, id) -> index of its first publish
    counts: dict[tuple[str, str], int] = {}
    fresh: list[int] = []
    for i, r in enumerate(reqs):
        if r.device_id is not None:
            k = (r.device_id, r.client_id)
            if k in known or k in first:
                continue  # a duplicate of a stored event or of an earlier one in this batch
            first[k] = i
        fresh.append(i)
        hk = (r.user_id, r.stream)
        counts[hk] = counts.get(hk, 0) + 1
    next_seq: dict[tuple[str, str], int] = {}
    for (user_id, stream), n in counts.items():
        (head,) = db.execute_sql(
            f"INSERT INTO stream_head (user_id, stream, head_seq, floor_seq) "
            f"VALUES ({p}, {p}, {p}, 0) ON CONFLICT (user_id, stream) DO UPDATE SET "
            "head_seq = stream_head.head_seq + excluded.head_seq RETURNING head_seq",
            (user_id, stream, n)).fetchone()
        next_seq[(user_id, stream)] = int(head) - n + 1
    events: dict[int, StoredEvent] = {}
    rows: list[Any] = []
    for i in fresh:
        r = reqs[i]
        hk = (r.user_id, r.stream)
        seq = next_seq[hk]
        next_seq[hk] = seq + 1
        events[i] = StoredEvent(r.user_id, r.stream, seq, r.client_id, r.device_id, r.key, ts,
                                r.body, ts_text)
        rows.extend((r.user_id, r.stream, seq, r.device_id, r.client_id, r.key, r.body, ts))
    values = f"({p}, {p}, {p}, {p}, {p}, {p}, {p}, {p})"
    for start in range(0, len(fresh), _ROWS_PER_INSERT):
        n = min(_ROWS_PER_INSERT, len(fresh) - start)
        db.execute_sql(
            "INSERT INTO event (user_id, stream, seq, device_id, client_id, key, body, ts) "
            f"VALUES {', '.join([values] * n)}", rows[start * 8:(start + n) * 8])
    results: list[PublishResult] = []
    for i, r in enumerate(reqs):
        ev = events.get(i)
        if ev is not None:
            results.append(Accepted(ev, duplicate=False))
        else:
            assert r.device_id is not None
            k = (r.device_id, r.client_id)
            prior = known.get(k) or events[first[k]]
            results.append(Accepted(prior, duplicate=True))
    return results, [events[i] for i in fresh]


def _append_general(db: pw.Database, p: str, pg: bool, reqs: list[PublishRequest], ts: int,
                    ts_text: str, known: dict[tuple[str, str], StoredEvent]
                    ) -> tuple[list[PublishResult], list[StoredEvent]]:
    """Any batch (compare-and-set included): heads read under lock, checked one by one."""
    results: list[PublishResult | None] = [None] * len(reqs)
    # Lock and read the heads of every stream this batch touches.
    pairs = list({(r.user_id, r.stream) for r in reqs})
    heads: dict[tuple[str, str], int] = {}
    conflict_clause = "ON CONFLICT (user_id, stream) DO NOTHING"
    executemany(db, f"INSERT INTO stream_head (user_id, stream, head_seq, floor_seq) "
                f"VALUES ({p}, {p}, 0, 0) {conflict_clause}", pairs)
    lock = " FOR UPDATE" if pg else ""
    for chunk_start in range(0, len(pairs), 400):
        pair_chunk = pairs[chunk_start:chunk_start + 400]
        where = " OR ".join([f"(user_id = {p} AND stream = {p})"] * len(pair_chunk))
        flat = [v for pair in pair_chunk for v in pair]
        for u, s, h in db.execute_sql(
                f"SELECT user_id, stream, head_seq FROM stream_head WHERE {where}{lock}",
                flat).fetchall():
            heads[(u, s)] = h

    key_heads: dict[tuple[str, str, str], int] = {}
    rows: list[tuple[Any, ...]] = []
    new_events: list[StoredEvent] = []
    for i, r in enumerate(reqs):
        if r.device_id is not None:
            prior = known.get((r.device_id, r.client_id))
            if prior is not None:
                results[i] = Accepted(prior, duplicate=True)
                continue
        hk = (r.user_id, r.stream)
        head = heads[hk]
        if r.base_seq is not None:
            # Compare-and-set (protocol.md §3 Conflicts).
            if r.key is None:
                current = head
            else:
                kk = (r.user_id, r.stream, r.key)
                if kk not in key_heads:
                    row = db.execute_sql(KEY_HEAD_SQL.format(p=p),
                                         (r.user_id, r.stream, r.key)).fetchone()
                    key_heads[kk] = int(row[0]) if row and row[0] is not None else 0
                current = key_heads[kk]
            if current > r.base_seq:
                results[i] = Conflicted(r.stream, current)
                continue
        seq = head + 1
        heads[hk] = seq
        if r.key is not None:
            key_heads[(r.user_id, r.stream, r.key)] = seq
        ev = StoredEvent(r.user_id, r.stream, seq, r.client_id, r.device_id, r.key, ts, r.body,
                         ts_text)
        rows.append((r.user_id, r.stream, seq, r.device_id, r.client_id, r.key, r.body, ts))
        new_events.append(ev)
        results[i] = Accepted(ev, duplicate=False)
        if r.device_id is not None:
            known[(r.device_id, r.client_id)] = ev  # a repeat inside this same batch

    if rows:
        executemany(db, "INSERT INTO event (user_id, stream, seq, device_id, client_id, "
                    f"key, body, ts) VALUES ({p}, {p}, {p}, {p}, {p}, {p}, {p}, {p})", rows)
        touched = {(e.user_id, e.stream) for e in new_events}
        executemany(db, f"UPDATE stream_head SET head_seq = {p} "
                    f"WHERE user_id = {p} AND stream = {p}",
                    [(heads[k], k[0], k[1]) for k in touched])
    return [r for r in results if r is not None], new_events


def positions(db: pw.Database, user_id: str, device_id: str) -> Positions:
    """A user's stream heads (streams with events), a device's cursors, and whether the
    device was revoked or removed meanwhile."""
    p = "%s" if is_postgres(db) else "?"
    # One statement (each one hands the GIL back and forth with the event loop).
    rows = db.execute_sql(
        f"SELECT 'd', NULL, revoked_at, NULL FROM device WHERE id = {p} "
        f"UNION ALL SELECT 'h', stream, head_seq, floor_seq FROM stream_head "
        f"WHERE user_id = {p} AND head_seq > 0 "
        f'UNION ALL SELECT \'c\', stream, acked_seq, NULL FROM "cursor" WHERE device_id = {p}',
        (device_id, user_id, device_id)).fetchall()
    heads: dict[str, tuple[int, int]] = {}
    cursors: dict[str, int] = {}
    revoked = True  # also when the device row is gone
    for kind, stream, value, floor in rows:
        if kind == "h":
            heads[stream] = (value, floor)
        elif kind == "c":
            cursors[stream] = value
        else:
            revoked = value is not None
    return heads, cursors, revoked


def append_now(db: pw.Database, reqs: list[PublishRequest],
               clock: Callable[[], int] = now_ms) -> list[PublishResult]:
    """Store publishes in a transaction of their own (CLI and jobs; not the hot path)."""
    with write_transaction(db):
        results, _ = append(db, reqs, clock())
    return results
