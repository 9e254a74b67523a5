"""Point-in-time restore: rebuild the SQLite database from the Litestream replica as it
was at a moment, or at the latest point the replica holds (docs/backup.md)."""

from __future__ import annotations

import os
import shutil
import sqlite3
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from relaybox.config import Settings
from relaybox.services import litestream
from relaybox.services.archive import BackupError, inspect_sqlite, make_private_dir
from relaybox.services.restore import _after_restore, _check_replaceable, _swap_sqlite


@dataclass(frozen=True)
class RestoredPoint:
    """What ``relaybox restore --at/--latest`` did."""

    replica: str
    requested: float | None  # None: the latest point
    point_at: float | None  # when the replica wrote the restored point
    txid: str
    server_id: str
    counts: dict[str, int]
    migrations_applied: list[str]
    seconds: float

    def as_json(self) -> dict[str, Any]:
        return {"replica": self.replica, "requested": self.requested,
                "point_at": self.point_at, "txid": self.txid, "server_id": self.server_id,
                "counts": self.counts, "migrations_applied": self.migrations_applied,
                "seconds": round(self.seconds, 3)}


def parse_time(text: str) -> float:
    """``--at``: ISO 8601 (``2026-11-25T03:30:00Z``, ``2026-11-25 04:30:00+01:00``; no
    zone = this machine's local time) or ``@`` and Unix seconds. Epoch seconds out."""
    text = text.strip()
    if text.startswith("@"):
        try:
            return float(text[1:])
        except ValueError:
            raise BackupError(f"--at {text!r}: expected @ and Unix seconds") from None
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise BackupError(f"--at {text!r}: expected a time such as 2026-11-25T03:30:00Z"
                          ) from None
    return when.timestamp()  # a naive time is local time


#: restore --at/--latest on PostgreSQL: what to do instead.
POSTGRES_POINT = ("restore --at/--latest rebuilds a SQLite database; with PostgreSQL "
                  "recover to a point with its own WAL archive (docs/backup.md)")


def restore_point(settings: Settings, at: float | None, *, url: str = "",
                  is_serving: Callable[[], bool] = lambda: False,
                  clock: Callable[[], float] = time.monotonic) -> RestoredPoint:
    """Rebuild the database from the replica (``url``, else replication.url) as it was
    at ``at`` (epoch seconds; None = the latest point), then swap it in atomically and
    apply pending migrations. The caller refuses while a server uses the data dir."""
    from relaybox.store import migrate

    started = clock()
    target = settings.sqlite_path
    if target is None:  # before the replica: PostgreSQL has no replication.url to set
        raise BackupError(POSTGRES_POINT)
    source = url or settings.replication_url
    if not source:
        raise BackupError("no replica to restore from: set replication.url or pass --from")
    _check_replaceable(target)
    data_dir = settings.data_dir
    created = not data_dir.exists()
    make_private_dir(data_dir)
    work = Path(tempfile.mkdtemp(prefix=".relaybox-restore-", dir=data_dir))
    try:
        rebuilt = work / "relaybox.db"
        point = litestream.restore(settings, source, rebuilt, at)
        counts, server_id, migration = _inspect(rebuilt)
        known = {p.stem for p in migrate.MIGRATIONS_DIR.glob("[0-9]*.py")}
        if migration not in known:
            raise BackupError(f"the replica's database comes from a newer relaybox "
                              f"(migration {migration!r} is unknown here); upgrade first")
        if is_serving():
            raise BackupError(f"a server is running on {data_dir}; stop it first")
        os.chmod(rebuilt, 0o600)
        _swap_sqlite(rebuilt, target)
        applied, server_id = _after_restore(settings)
    except BaseException:
        if created:
            shutil.rmtree(data_dir, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return RestoredPoint(litestream.shown_url(source), at, point.at, point.txid, server_id,
                         counts, applied, clock() - started)


def _inspect(path: Path) -> tuple[dict[str, int], str, str]:
    try:
        conn = sqlite3.connect(path.resolve().as_uri() + "?mode=ro", uri=True)
        try:
            counts, server_id, migration = inspect_sqlite(conn)
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise BackupError(f"the database rebuilt from the replica cannot be read ({exc})"
                          ) from None
    if server_id is None or migration is None:
        raise BackupError("the replica does not hold a relaybox database")
    # Litestream's own bookkeeping tables travel with the file; they are not ours.
    counts = {k: v for k, v in counts.items() if not k.startswith("_litestream")}
    return counts, server_id, migration
