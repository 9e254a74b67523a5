"""WAL checkpoints off the writer thread (SQLite only).

SQLite normally checkpoints the WAL inside whichever commit pushes it past 1,000 pages,
so every few hundred events one publish waits several milliseconds for pages to be
copied into the database file. relaybox turns that off on the writer's connection and
runs passive checkpoints here instead, on a connection of its own: a passive checkpoint
never blocks the writer.

SQLite restarts the WAL from its beginning only when a write transaction starts while
everything in the WAL has been copied. Under steady writes that never happens by itself:
the writer commits again while each checkpoint runs, so some frames are always left, and
the WAL grew by ~47 MB/s at 2,000 events/s (unbounded on disk, and every fsync also had
to record the file's growth). So once a checkpoint leaves a WAL of ``restart_frames`` or
more behind, it asks the writer (``restart_wanted``) to copy the few frames committed
meanwhile itself, before its next transaction: that one starts on a fully copied WAL and
SQLite writes from the WAL's beginning again. The writer's share is small (what was
committed during one checkpoint) and comes at most once per checkpoint.

With ``replication.enabled`` none of this runs: Litestream copies each commit out of the
WAL and must see every frame before the WAL starts over, so it alone checkpoints. It
holds a read transaction between its own checkpoints (no other checkpoint can copy frames
it has not read), and for each checkpoint it takes the write lock, reads the WAL to its
end, checkpoints and starts the WAL over. A checkpoint of ours while Litestream is down
or restarting could copy frames it never read and let the writer start the WAL over:
Litestream's check on restart compares only the last frame it read, so those commits
could be missing from the replica without a fresh snapshot. So while replicating, no
relaybox connection checkpoints (``wal_autocheckpoint=0`` on every connection, no
checkpointer), and the WAL grows while Litestream is down until it is back.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from pathlib import Path

import peewee as pw

log = logging.getLogger("relaybox.store")

#: How often the checkpointer looks for committed pages to copy (seconds). Each checkpoint
#: ends with an fsync of the database file, which delays the writer's own WAL fsyncs
#: meanwhile; with random event ids every event dirties a different index page, so
#: frequent checkpoints write (and sync) nearly every event's pages again; rare ones
#: are big and slow the writer for longer at a time. Measured on a database holding
#: 50,000 events at 2,000 events/s, p99 publish→delivery latency in runs without a disk
#: stall: 5.5-6.1 ms every 0.2 s (with the writer thread), median 2.8 ms every 1 s, 2.1-2.7
#: every 2 s, 1.7-2.8 every 3 s, and 2.0-4.6 every 6 s (docs/performance.md).
CHECKPOINT_INTERVAL_S = 2.0
#: After a WAL restart, the file is truncated back to this size (bytes).
JOURNAL_SIZE_LIMIT = 64 * 1024 * 1024
#: A WAL of this many frames (1 GiB of 4 KiB pages) or more is restarted by the writer.
#: Each restart holds the writer up for ~20 ms (its own checkpoint), so it is kept for
#: WALs that would otherwise fill the disk: at 2,000 events/s the WAL grows ~47 MB/s,
#: and with a 64 or 256 MiB threshold every 10 s latency run had 18-23 ms stalls (p99
#: 2.6-5.2 ms against 2.0-2.5 ms without restarts). Small WALs start over by themselves
#: whenever writes pause for as long as a checkpoint takes.
RESTART_FRAMES = 262144


class WalCheckpointer:
    """A daemon thread running ``PRAGMA wal_checkpoint(PASSIVE)`` after new commits."""

    def __init__(self, path: str | Path, interval_s: float = CHECKPOINT_INTERVAL_S,
                 restart_frames: int = RESTART_FRAMES) -> None:
        self.path = str(path)
        self.interval_s = interval_s
        self.restart_frames = restart_frames
        self.restart_wanted = False  # read and cleared by the writer
        self.restarts = 0  # catch-up checkpoints the writer ran
        self.checkpoints = 0
        self.requested = 0  # commits announced by the writer
        self.served = 0  # the value of ``requested`` when the last checkpoint began
        self.last: tuple[int, int, int] = (0, 0, 0)
        self._ran = threading.Condition()
        self._dirty = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="relaybox-checkpoint",
                                        daemon=True)
        self._thread.start()

    def restart(self, db: pw.Database) -> None:
        """In the writer, between transactions, when ``restart_wanted``: copy what was
        committed during the last checkpoint, so that the next transaction starts the
        WAL over. Never fails the batch: if it cannot, the next checkpoint asks again."""
        self.restart_wanted = False
        try:
            db.execute_sql("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            self.restarts += 1
        except pw.DatabaseError as exc:
            log.debug("WAL restart checkpoint skipped: %s", exc)

    def committed(self) -> None:
        """Tell the checkpointer that the writer committed (cheap; the writer thread)."""
        self.requested += 1
        if not self._dirty.is_set():
            self._dirty.set()

    def stop(self) -> None:
        self._stop.set()
        self._dirty.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None

    def checkpoint(self, conn: sqlite3.Connection) -> tuple[int, int, int]:
        """One passive checkpoint: (busy, frames in the WAL, frames copied)."""
        seen = self.requested
        busy, frames, copied = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        if frames >= self.restart_frames and copied == frames:
            self.restart_wanted = True
        with self._ran:
            self.checkpoints += 1
            self.served = seen
            self.last = (int(busy), int(frames), int(copied))
            self._ran.notify_all()
        return self.last

    def wait_caught_up(self, timeout_s: float = 10.0) -> tuple[int, int, int] | None:
        """Wait until a checkpoint ran after the latest commit; its result, or None."""
        with self._ran:
            target = self.requested
            if not self._ran.wait_for(lambda: self.served >= target, timeout_s):
                return None
            return self.last

    def _run(self) -> None:
        conn: sqlite3.Connection | None = None
        try:
            conn = sqlite3.connect(self.path, timeout=15, isolation_level=None,
                                   check_same_thread=False)
            conn.execute(f"PRAGMA journal_size_limit={JOURNAL_SIZE_LIMIT}")
            while not self._stop.is_set():
                self._dirty.wait()
                if self._stop.is_set():
                    break
                self._dirty.clear()
                try:
                    self.checkpoint(conn)
                except sqlite3.Error as exc:  # e.g. the file is being restored
                    log.warning("WAL checkpoint failed: %s", exc)
                # Batch the next checkpoint with whatever commits arrive meanwhile.
                self._stop.wait(self.interval_s)
        except sqlite3.Error as exc:
            log.warning("WAL checkpointer stopped: %s", exc)
        finally:
            if conn is not None:
                conn.close()
