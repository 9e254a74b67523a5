"""The batching writer: one batch of publishes, cursors, touches and calls in one
transaction (one fsync), whichever writer (thread or process) runs it, and the writer
process's loop that takes those batches from its socket and answers them."""

from __future__ import annotations

import collections
import logging
import socket
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import peewee as pw

from relaybox.protocol.encoding import now_ms
from relaybox.store.append import append
from relaybox.store.checkpoint import JOURNAL_SIZE_LIMIT, WalCheckpointer
from relaybox.store.codec import Item, answers, pack, split, unpack
from relaybox.store.events import Failed, PublishRequest, PublishResult, Refused, StoredEvent
from relaybox.store.quotas import OverQuota, Quotas
from relaybox.store.sql import (
    data_error,
    real_error,
    transaction,
    write_cursors,
    write_touches,
)

log = logging.getLogger("relaybox.store")

_KEYS_KEPT = 65536  # keys remembered by the writer (about 10 MiB at most)
#: Most cursor saves kept across failed batches (one per device and stream).
_RETAINED_MAX = 100_000


@dataclass(slots=True)
class BatchOutcome:
    """What one writer batch did, in the order of its items."""

    results: list[PublishResult]
    new_events: list[StoredEvent]  # stored now (never duplicates), in seq order per stream
    touches: list[tuple[Any, Exception | None]]  # (positions or None, error)
    calls: list[tuple[Any, Exception | None]]
    seconds: float
    healthy: bool


class BatchWriter:
    """Writes batches on one connection, in the thread that calls ``apply``.

    It remembers, from one batch to the next: the users over a quota, the cursor saves of
    a batch that failed, the keys it stored, and whether its last commit worked.
    """

    def __init__(self, db: pw.Database, *, batch_max: int = 1024,
                 clock: Callable[[], int] = now_ms, quotas: Quotas | None = None,
                 checkpoints: bool = True) -> None:
        self.db = db
        self.batch_max = batch_max
        self.clock = clock
        self.quotas = quotas or Quotas()  # store/quotas.py; none by default
        self.healthy = True
        # Users whose last batch passed a quota: their batches are checked publish by
        # publish at once, rather than written, found over and written again.
        self._over: set[str] = set()
        # Cursor saves of batches that failed (disk full, database down): acks must not
        # be dropped, so they go into the next batch (protocol.md §3 Delivery). Bounded.
        self._retained: dict[tuple[str, str], int] = {}
        # Keys this writer stored (user_id, stream, key): not looked up again for the keys
        # quota. Only committed ones, so the count of a stream's keys never misses one.
        self._keys: set[tuple[str, str, str]] = set()
        # SQLite files: checkpoints run beside the writer, never inside one of its commits.
        # ``checkpoints=False`` when Litestream replicates the file: then it alone
        # checkpoints (store/checkpoint.py explains why). Its owner starts and stops it.
        self.checkpointer: WalCheckpointer | None = None
        if checkpoints and isinstance(db, pw.SqliteDatabase) \
                and db.database not in ("", ":memory:") \
                and not str(db.database).startswith("file::memory:"):
            self.checkpointer = WalCheckpointer(db.database)

    def close(self) -> None:
        if not self.db.is_closed():
            self.db.close()

    def apply(self, pubs: list[PublishRequest], cursors: dict[tuple[str, str], int],
              touches: list[tuple[str, str | None]], calls: list[Callable[[], Any]]
              ) -> BatchOutcome:
        """Write one batch in one transaction (one fsync): publishes, cursors, touches and
        calls, each call in a savepoint of its own so that it fails alone. Never raises."""
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
                with transaction(self.db):
                    if isolate:
                        results, new_events = self._publishes_alone(pubs, careful)
                        self._cursors_alone(cursors)
                        touch_results = self._touches_alone(touches)
                    else:
                        results, new_events = append(
                            self.db, pubs, self.clock(), assume_new=assume_new,
                            quotas=self.quotas, careful=careful, seen_keys=self._keys)
                        write_cursors(self.db, cursors)
                        touch_results = write_touches(self.db, touches, self.clock())
                    call_results = [self._run_call(fn) for fn in calls]
                error = None
                self.healthy = True
                if self.checkpointer is not None:
                    self.checkpointer.committed()
                break
            except Exception as exc:
                exc = real_error(exc)
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
        return BatchOutcome(results, new_events, touch_results, call_results,
                            time.perf_counter() - started, self.healthy)

    def write_items(self, items: list[Item]) -> tuple[list[Any], float, bool]:
        """One batch of items (store/codec.py), written and answered as the writer process
        answers it (tests/store/crashing_writer.py wraps this)."""
        b = split(items)
        return answers(items, self.apply(b.pubs, b.cursors, b.touches, b.calls))

    def _run_call(self, fn: Callable[[], Any]) -> tuple[Any, Exception | None]:
        try:
            with self.db.atomic():  # a savepoint inside the batch's transaction
                return fn(), None
        except (pw.OperationalError, pw.InterfaceError):
            raise  # the connection itself failed: the whole batch is retried
        except Exception as exc:
            return None, exc

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

    # -- one item at a time, in savepoints (after the database refused a value) ---------
    def _publishes_alone(self, reqs: list[PublishRequest], careful: bool = False
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

    def _cursors_alone(self, cursors: dict[tuple[str, str], int]) -> None:
        """Cursors in a savepoint; if the database refuses one, each in a savepoint of
        its own, and the refused ones are dropped (an ack is only a position)."""
        if len(cursors) > 1:
            try:
                with self.db.atomic():
                    write_cursors(self.db, cursors)
                return
            except Exception as exc:
                if not data_error(exc):
                    raise
        for k, seq in cursors.items():
            try:
                with self.db.atomic():
                    write_cursors(self.db, {k: seq})
            except Exception as exc:
                if not data_error(exc):
                    raise
                log.warning("cursor %r refused by the database: %s", k, exc)

    def _touches_alone(self, touches: list[tuple[str, str | None]]
                       ) -> list[tuple[Any, Exception | None]]:
        out: list[tuple[Any, Exception | None]] = []
        for touch in touches:
            try:
                with self.db.atomic():
                    out += write_touches(self.db, [touch], self.clock())
            except Exception as exc:
                if not data_error(exc):
                    raise
                log.warning("touch of %s refused by the database: %s", touch[0], exc)
                out.append((None, exc))
        return out


def serve_socket(sock: socket.socket, writer: BatchWriter, buf: bytearray) -> None:
    """The writer process's loop: answer batches until the socket closes. ``buf`` holds
    bytes already read from it. Its caller owns ``writer`` (its checkpointer, its close)."""
    queued: collections.deque[Item] = collections.deque()
    for items in unpack(buf):
        queued.extend(items)
    gone = False
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
            for items in unpack(buf):
                queued.extend(items)
            if not queued:
                continue
        batch = [queued.popleft() for _ in range(min(len(queued), writer.batch_max))]
        answer = pack(writer.write_items(batch))
        if not gone:
            try:
                sock.sendall(answer)
            except OSError:
                # The server died: still commit what it sent, then stop (architecture.md,
                # "What happens on a crash").
                gone = True
