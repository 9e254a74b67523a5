"""The event log as the server holds it: publishes, cursor saves and touches go to a
batching writer (thread or process), blocking reads to a pool of reader threads.

Results come back once per batch: ``on_committed`` receives the newly stored events
(never duplicates) in seq order, and only then are the publishers' callbacks called, so
an ack never reaches a publisher before relay started (protocol.md §3 Delivery).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

import peewee as pw

from relaybox.protocol.encoding import now_ms
from relaybox.store.batch import BatchWriter
from relaybox.store.checkpoint import WalCheckpointer
from relaybox.store.codec import (
    CURSOR_HANDLER,
    PROBE_ITEM,
    call_item,
    cursor_item,
    publish_item,
    touch_item,
)
from relaybox.store.db import ReadPool
from relaybox.store.events import PublishRequest, PublishResult, StoredEvent
from relaybox.store.quotas import Quotas
from relaybox.store.sql import connection_lost
from relaybox.store.writer import BatchStats, ThreadWriter, Writer

log = logging.getLogger("relaybox.store")


class EventLogObserver(Protocol):
    """Explicit hooks for whoever watches the event log (server/observability/tracing.py)."""

    def publishing(self, req: PublishRequest) -> Callable[[PublishResult], None]:
        """A publish enters the log; the function returned is called with its result,
        right after the publisher's own callback (its ack or nack is queued)."""

    def batch(self, new_events: list[StoredEvent], size: int, seconds: float,
              fanout_start_ns: int, fanout_end_ns: int) -> None:
        """A batch of ``size`` publishes committed in ``seconds``; its new events were
        handed to fan-out between the two times (``time.time_ns``), before any result."""


class EventLog:
    """Group commit through one writer; see the module's docstring."""

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
        writer: Writer | None = None,
        observer: EventLogObserver | None = None,
    ) -> None:
        self.db = db
        self.writer: Writer = writer if writer is not None else ThreadWriter(BatchWriter(
            db, batch_max=batch_max, clock=clock, quotas=quotas, checkpoints=checkpoints))
        self.on_committed = on_committed
        self.on_batch = on_batch
        self.observer = observer
        self.stats = BatchStats()
        # Readers hand a pooled PostgreSQL connection back after each read (store/db.py).
        self.readers = ReadPool(db, read_threads)
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def healthy(self) -> bool:
        """Whether the writer's last commit worked."""
        return self.writer.healthy

    @healthy.setter
    def healthy(self, value: bool) -> None:
        self.writer.healthy = value

    @property
    def checkpointer(self) -> WalCheckpointer | None:
        """The writer thread's WAL checkpointer, if it has one."""
        return getattr(self.writer, "checkpointer", None)

    @property
    def writer_pid(self) -> int | None:
        """The running writer process, if the writer is one (for the memory metric)."""
        return getattr(self.writer, "pid", None)

    def observe(self, observer: EventLogObserver | None) -> None:
        """Call ``observer``'s hooks from now on (None: stop)."""
        self.observer = observer

    # -- lifecycle -------------------------------------------------------------
    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.writer.start(loop, self._settle)

    async def ready(self) -> None:
        """Wait until the writer can write."""
        await self.writer.ready()

    def stop(self) -> None:
        """Commit everything queued, then stop the writer (blocking)."""
        self.writer.stop()
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
        if self.observer is not None:
            callback = _observed(callback, self.observer.publishing(req))
        self.writer.send(publish_item(req), ("p", callback, req))

    def save_cursor(self, device_id: str, stream: str, seq: int) -> None:
        """Record an ack; committed with the next batch (cursors are batched)."""
        self.writer.send(cursor_item(device_id, stream, seq), CURSOR_HANDLER)

    def touch(self, device_id: str, user_id: str | None = None) -> asyncio.Future[Any]:
        """Record that ``device_id`` was seen now, in the next batch.

        The future resolves after that batch committed, so everything queued before (an
        earlier session's acks) is durable by then. With ``user_id``, it resolves to the
        user's stream heads and the device's cursors as of that commit (``Positions``).
        """
        return self._submit(touch_item(device_id, user_id), "t")

    def probe(self) -> asyncio.Future[Any]:
        """A future that resolves after an (empty) write round trip through the writer."""
        return self._submit(PROBE_ITEM, "b")

    def call(self, fn: Callable[[], Any]) -> asyncio.Future[Any]:
        """Run ``fn`` in the writer thread after everything queued before it is committed
        (a callable does not cross to a writer process: use ``probe``)."""
        if not isinstance(self.writer, ThreadWriter):
            raise TypeError("the writer process runs no callables; use probe()")
        return self._submit(call_item(fn), "b")

    def _submit(self, item: tuple[Any, ...], kind: str) -> asyncio.Future[Any]:
        assert self._loop is not None
        fut: asyncio.Future[Any] = self._loop.create_future()
        self.writer.send(item, (kind, fut, None))
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
            if not connection_lost(exc):
                raise
            with contextlib.suppress(Exception):
                self.db.close()  # this thread's connection
            return fn(*args)

    # -- results (event loop side, once per batch) ------------------------------
    def _settle(self, callbacks: list[Callable[[PublishResult], None]],
                results: list[PublishResult], new_events: list[StoredEvent],
                futures: list[tuple[Any, Any, Any]], size: int, seconds: float) -> None:
        observer = self.observer
        fanout_start = time.time_ns() if observer is not None else 0
        # Fan-out first so that the ack never reaches the publisher before relay started.
        if new_events and self.on_committed is not None:
            try:
                self.on_committed(new_events)
            except Exception:
                log.exception("fan-out failed")
        fanout_end = time.time_ns() if observer is not None else 0
        if size:
            self.stats.record(size, len(new_events), seconds)
            if self.on_batch is not None:
                self.on_batch(size, seconds)
            if observer is not None:
                observer.batch(new_events, size, seconds, fanout_start, fanout_end)
        for callback, res in zip(callbacks, results, strict=True):
            try:
                callback(res)
            except Exception:
                log.exception("publish callback failed")
        for fut, value, exc in futures:
            if fut.done():
                continue
            if exc is not None:
                fut.set_exception(exc)
            else:
                fut.set_result(value)


def _observed(callback: Callable[[PublishResult], None],
              done: Callable[[PublishResult], None]) -> Callable[[PublishResult], None]:
    def observed(result: PublishResult) -> None:
        try:
            callback(result)  # the ack or nack is queued first
        finally:
            done(result)

    return observed
