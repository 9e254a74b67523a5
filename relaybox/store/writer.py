"""The writer interface the event log uses, and the writer that runs in a thread.

A writer takes items (store/codec.py) with what the loop keeps for each (a ``Handler``),
commits them in batches with ``BatchWriter`` (store/batch.py), and hands each batch's
results back to the event loop with one call of ``settle``. The writer process
(store/writerproc.py) is the other implementation.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from relaybox.store.batch import BatchWriter
from relaybox.store.checkpoint import WalCheckpointer
from relaybox.store.codec import Handler, Item, split
from relaybox.store.events import PublishResult, StoredEvent

#: What a writer hands back to the loop per batch: the publishers' callbacks and their
#: results (in order), the newly stored events, (future, value, error) of touches and
#: probes, the number of publishes and the batch's seconds.
Settle = Callable[[list[Callable[[PublishResult], None]], list[PublishResult],
                   list[StoredEvent], list[tuple[Any, Any, Any]], int, float], None]


class Writer(Protocol):
    """A batching writer, as the event log (store/front.py) sees it."""

    healthy: bool  # whether its last commit worked

    def start(self, loop: asyncio.AbstractEventLoop, settle: Settle) -> None:
        """Start writing; ``settle`` is called on ``loop`` once per batch."""

    async def ready(self) -> None:
        """Wait until the writer can write."""

    def send(self, item: Item, handler: Handler) -> None:
        """Queue one item (called on the loop); it is answered in order."""

    def stop(self) -> None:
        """Commit everything sent, then stop (blocking; called from a thread)."""


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


_STOP: Any = object()


class ThreadWriter:
    """The writer in a thread of the server process (``storage.writer_process = false``,
    and the store's own tests): it takes whatever has been queued, up to ``batch_max``
    items, and commits it in one transaction."""

    def __init__(self, batch: BatchWriter) -> None:
        self.batch = batch
        self._q: queue.SimpleQueue[tuple[Item, Handler]] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._settle: Settle | None = None

    @property
    def healthy(self) -> bool:
        return self.batch.healthy

    @healthy.setter
    def healthy(self, value: bool) -> None:
        self.batch.healthy = value

    @property
    def checkpointer(self) -> WalCheckpointer | None:
        return self.batch.checkpointer

    def start(self, loop: asyncio.AbstractEventLoop, settle: Settle) -> None:
        self._loop, self._settle = loop, settle
        if self.batch.checkpointer is not None:
            self.batch.checkpointer.start()
        self._thread = threading.Thread(target=self._run, name="relaybox-writer", daemon=True)
        self._thread.start()

    async def ready(self) -> None:
        """The thread needs no wait."""

    def send(self, item: Item, handler: Handler) -> None:
        self._q.put((item, handler))

    def stop(self) -> None:
        if self._thread is not None:
            self._q.put(_STOP)
            self._thread.join(timeout=30)
            self._thread = None
        if self.batch.checkpointer is not None:
            self.batch.checkpointer.stop()

    def _run(self) -> None:
        stop = False
        batch_max = self.batch.batch_max
        while not stop:
            entries = [self._q.get()]
            try:
                while len(entries) < batch_max:
                    entries.append(self._q.get_nowait())
            except queue.Empty:
                pass
            if any(e is _STOP for e in entries):
                stop = True
                entries = [e for e in entries if e is not _STOP]
            if entries:
                self._process(entries)
        self.batch.close()

    def _process(self, entries: list[tuple[Item, Handler]]) -> None:
        b = split([item for item, _ in entries])
        out = self.batch.apply(b.pubs, b.cursors, b.touches, b.calls)
        callbacks: list[Callable[[PublishResult], None]] = []
        futures: list[tuple[Any, Any, Any]] = []
        touches, calls = iter(out.touches), iter(out.calls)
        for _, (kind, handler, _req) in entries:
            if kind == "p":
                callbacks.append(handler)
            elif kind == "t":
                futures.append((handler, *next(touches)))
            elif kind != "c":
                futures.append((handler, *next(calls)))
        loop, settle = self._loop, self._settle
        assert loop is not None and settle is not None
        if loop.is_closed():
            return
        try:
            loop.call_soon_threadsafe(settle, callbacks, out.results, out.new_events, futures,
                                      len(b.pubs), out.seconds)
        except RuntimeError:  # loop closed during shutdown
            pass
