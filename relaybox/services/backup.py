"""Online backups: make one verified tar.gz (database, config, manifest), list, prune."""

from __future__ import annotations

import io
import json
import os
import shutil
import sqlite3
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from relaybox import __version__
from relaybox.config import CONFIG_FILE, Settings
from relaybox.errors import RelayError
from relaybox.services import pgdump
from relaybox.services.archive import (
    AUTO_PREFIX,
    FORMAT,
    MANIFEST,
    MAX_DB_BYTES,
    MAX_MEMBERS,
    PG_MEMBER,
    SQLITE_MEMBER,
    SUFFIX,
    BackupError,
    Verified,
    fsync_dir,
    inspect_sqlite,
    make_private_dir,
    read_manifest,
    sha256_file,
    verify_backup,
    write_private,
)

# What other modules reach through ``backup`` (the archive format lives in archive.py).
__all__ = ["AUTO_PREFIX", "FORMAT", "MANIFEST", "MAX_DB_BYTES", "MAX_MEMBERS", "PG_MEMBER",
           "SQLITE_MEMBER", "SUFFIX", "BackupError", "Verified", "create_backup",
           "default_name", "dump_sqlite", "fsync_dir", "inspect_sqlite", "list_backups",
           "make_private_dir", "prune_backups", "read_manifest", "verify_backup",
           "write_private"]


# -- making a backup -----------------------------------------------------------------------
def default_name(directory: Path, now: float, *, auto: bool = False) -> Path:
    """``relaybox-20261125T033000Z.tar.gz`` (scheduled ones: ``relaybox-auto-…``), unused."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
    base = f"{AUTO_PREFIX if auto else 'relaybox-'}{stamp}"
    path, n = directory / f"{base}{SUFFIX}", 1
    while path.exists():
        path, n = directory / f"{base}-{n}{SUFFIX}", n + 1
    return path


def create_backup(settings: Settings, output: Path | None = None, *, auto: bool = False,
                  clock: Callable[[], float] = time.time) -> Verified:
    """Write a consistent backup while the server may be serving, then verify it.

    SQLite: the online backup API on a connection of our own copies one read snapshot
    (WAL readers never block the writer). PostgreSQL: pg_dump on an exported snapshot.
    """
    now = clock()
    dest = output if output is not None else default_name(settings.backups_path, now, auto=auto)
    if dest.exists():
        raise BackupError(f"{dest} exists; choose another file")
    make_private_dir(dest.parent)
    with tempfile.TemporaryDirectory(prefix=".relaybox-backup-", dir=dest.parent) as tmp:
        work = Path(tmp)
        if settings.sqlite_path is not None:
            db_file = work / SQLITE_MEMBER
            counts, server_id, migration = dump_sqlite(settings.sqlite_path, db_file)
            kind = "sqlite"
        else:
            db_file = work / PG_MEMBER
            counts, server_id, migration = pgdump.dump(settings.database_url, db_file)
            kind = "postgresql"
        files = [db_file]
        if settings.config_file.is_file():
            shutil.copyfile(settings.config_file, work / CONFIG_FILE)
            files.append(work / CONFIG_FILE)
        manifest = {
            "format": FORMAT, "relaybox_version": __version__, "created_at": round(now, 3),
            "database": kind, "server_id": server_id, "migration": migration,
            "counts": counts,
            "members": {f.name: {"bytes": f.stat().st_size, "sha256": sha256_file(f)}
                        for f in files},
        }
        _write_archive(dest, manifest, files, now)
    try:
        return verify_backup(dest, work_dir=dest.parent)
    except RelayError as exc:
        dest.unlink(missing_ok=True)
        raise BackupError(f"the new backup failed verification and was removed: {exc.detail}"
                          ) from None


def dump_sqlite(src_path: Path, dst_path: Path) -> tuple[dict[str, int], str | None, str | None]:
    if not src_path.is_file():
        raise BackupError(f"no database at {src_path} (run 'relaybox init')")
    src = sqlite3.connect(str(src_path), timeout=15)
    dst = sqlite3.connect(str(dst_path))
    try:
        # pages=-1: one step under one read transaction, so the copy is one snapshot.
        src.backup(dst, pages=-1)
        dst.execute("PRAGMA journal_mode=DELETE")  # one self-contained file in the archive
        return inspect_sqlite(dst)
    except sqlite3.Error as exc:
        raise BackupError(f"cannot copy the database {src_path}: {exc}") from None
    finally:
        src.close()
        dst.close()



def _write_archive(dest: Path, manifest: dict[str, Any], files: list[Path], now: float) -> None:
    """Write the archive to a private temporary file, fsync it, then move it into place."""
    partial = dest.with_name(f".{dest.name}.partial")
    partial.unlink(missing_ok=True)
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as raw:
            with tarfile.open(fileobj=raw, mode="w:gz", compresslevel=6) as tar:
                # The manifest goes first: listing reads only the first member.
                body = json.dumps(manifest, indent=2, sort_keys=True).encode()
                tar.addfile(_member(MANIFEST, len(body), now), io.BytesIO(body))
                for f in files:
                    with f.open("rb") as fh:
                        tar.addfile(_member(f.name, f.stat().st_size, now), fh)
            raw.flush()
            os.fsync(raw.fileno())
        os.chmod(partial, 0o600)
        os.replace(partial, dest)
        fsync_dir(dest.parent)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


def _member(name: str, size: int, now: float) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, int(now), 0o600
    return info




def list_backups(directory: Path) -> list[tuple[Path, dict[str, Any] | None, str | None]]:
    """(file, manifest or None, problem or None) of every archive in ``directory``, oldest first."""
    out: list[tuple[Path, dict[str, Any] | None, str | None]] = []
    if not directory.is_dir():
        return out
    for f in sorted(directory.glob(f"*{SUFFIX}"), key=lambda p: (p.stat().st_mtime, p.name)):
        try:
            out.append((f, read_manifest(f), None))
        except BackupError as exc:
            out.append((f, None, exc.detail))
    return out


def prune_backups(directory: Path, keep: int) -> list[Path]:
    """Delete all but the newest ``keep`` scheduled backups (manual ones are never touched)."""
    autos = sorted(directory.glob(f"{AUTO_PREFIX}*{SUFFIX}"), key=_name_order
                   ) if directory.is_dir() else []
    doomed = autos[:-keep] if keep > 0 else autos
    for f in doomed:
        f.unlink(missing_ok=True)
    return doomed


def _name_order(path: Path) -> tuple[str, int]:
    """Order by the time in the name, then by the ``-N`` added when a name was taken."""
    stem = path.name[: -len(SUFFIX)]
    base, _, n = stem.rpartition("-")
    return (base, int(n)) if n.isdigit() and base.endswith("Z") else (stem, 0)
