"""Online backups: one verified tar.gz (database, config, manifest), listing, and restore."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import sqlite3
import tarfile
import tempfile
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from relaybox import __version__
from relaybox.config import CONFIG_FILE, Settings
from relaybox.errors import RelayError
from relaybox.services import pgdump

FORMAT = 1
MANIFEST = "manifest.json"
SQLITE_MEMBER = "relaybox.db"
PG_MEMBER = pgdump.MEMBER
SUFFIX = ".tar.gz"
AUTO_PREFIX = "relaybox-auto-"
_SMALL_MAX = 1 << 20  # manifest and config are small; anything bigger is not ours
_CHUNK = 1 << 20


class BackupError(RelayError):
    """An archive that cannot be made, read, trusted or restored."""

    status_code = 422
    code = "backup_invalid"
    title = "Backup failed"


@dataclass(frozen=True)
class Verified:
    """A checked archive: its manifest and, when asked for, the extracted database."""

    file: Path
    bytes: int
    sha256: str
    manifest: dict[str, Any]
    db_path: Path | None = None
    config_text: str | None = None

    @property
    def counts(self) -> dict[str, int]:
        return dict(self.manifest["counts"])

    def as_json(self) -> dict[str, Any]:
        m = self.manifest
        return {"file": str(self.file), "bytes": self.bytes, "sha256": self.sha256,
                "counts": self.counts, "server_id": m.get("server_id"),
                "migration": m.get("migration"), "database": m.get("database"),
                "created_at": m.get("created_at"), "relaybox_version": m.get("relaybox_version")}


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
            "members": {f.name: {"bytes": f.stat().st_size, "sha256": _sha256_file(f)}
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


def inspect_sqlite(conn: sqlite3.Connection) -> tuple[dict[str, int], str | None, str | None]:
    """Row counts per table, server_id and latest migration of a database."""
    tables = [r[0] for r in conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' "
        "ORDER BY name")]
    counts = {t: int(conn.execute(f'SELECT COUNT(*) FROM "{_q(t)}"').fetchone()[0])
              for t in tables}
    server_id = migration = None
    if "meta" in counts:
        row = conn.execute("SELECT value FROM meta WHERE key = 'server_id'").fetchone()
        server_id = row[0] if row else None
    if "migratehistory" in counts:
        row = conn.execute("SELECT name FROM migratehistory ORDER BY id DESC LIMIT 1").fetchone()
        migration = row[0] if row else None
    return counts, server_id, migration


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


# -- reading and verifying -------------------------------------------------------------------
@contextlib.contextmanager
def _damaged(path: Path) -> Iterator[None]:
    """Turn every way a damaged archive can fail into one clear BackupError."""
    try:
        yield
    except BackupError:
        raise
    except FileNotFoundError:
        raise BackupError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise BackupError(f"{path}: is a folder, not a backup file") from None
    except PermissionError as exc:
        raise BackupError(f"{path}: {exc.strerror}") from None
    except (tarfile.TarError, EOFError, zlib.error, OSError, ValueError, KeyError,
            TypeError) as exc:
        why = str(exc) or type(exc).__name__
        raise BackupError(f"{path} is damaged or not a relaybox backup ({why})") from None


def read_manifest(path: Path) -> dict[str, Any]:
    """The manifest of an archive, read from its first member (cheap; no verification)."""
    with _damaged(path), tarfile.open(path, "r:gz") as tar:
        first = tar.next()
        if first is None or first.name != MANIFEST or not first.isfile():
            raise BackupError(f"{path} is not a relaybox backup (no manifest)")
        return _parse_manifest(path, _read_small(tar, first))


def verify_backup(path: Path, *, work_dir: Path | None = None, keep_db: bool = False
                  ) -> Verified:
    """Check everything: members, sha256 of each, integrity_check and row counts.

    With ``keep_db`` the checked database stays in ``work_dir`` (for restore).
    """
    path = Path(path)
    with _damaged(path):
        size = path.stat().st_size
        archive_sha = _sha256_file(path)
    tmp = Path(tempfile.mkdtemp(prefix=".relaybox-verify-", dir=work_dir))
    try:
        manifest, config_text, db_path = _extract(path, tmp)
        if manifest["database"] == "sqlite":
            _check_sqlite(path, db_path, manifest)
        else:
            pgdump.check(path, db_path)
        if keep_db:
            return Verified(path, size, archive_sha, manifest, db_path, config_text)
        shutil.rmtree(tmp, ignore_errors=True)
        return Verified(path, size, archive_sha, manifest, None, config_text)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _extract(path: Path, tmp: Path) -> tuple[dict[str, Any], str | None, Path]:
    with _damaged(path), tarfile.open(path, "r:gz") as tar:
        first = tar.next()
        if first is None or first.name != MANIFEST or not first.isfile():
            raise BackupError(f"{path} is not a relaybox backup (no manifest)")
        manifest = _parse_manifest(path, _read_small(tar, first))
        expected: dict[str, dict[str, Any]] = manifest["members"]
        db_name = SQLITE_MEMBER if manifest["database"] == "sqlite" else PG_MEMBER
        if db_name not in expected:
            raise BackupError(f"{path}: the manifest lists no database")
        seen: set[str] = set()
        config_text = None
        for info in tar:
            if info is first:
                continue  # iterating a TarFile starts again from the first member
            if info.name not in expected or info.name in seen or not info.isfile():
                raise BackupError(f"{path}: unexpected member {info.name!r}")
            seen.add(info.name)
            src = tar.extractfile(info)
            assert src is not None
            out = tmp / info.name  # names come from our fixed list: no path traversal
            digest = hashlib.sha256()
            with src, open(out, "wb") as fh:
                while chunk := src.read(_CHUNK):
                    digest.update(chunk)
                    fh.write(chunk)
                fh.flush()
                os.fsync(fh.fileno())
            want = expected[info.name]
            if digest.hexdigest() != want.get("sha256") or out.stat().st_size != want.get(
                    "bytes"):
                raise BackupError(f"{path}: {info.name} does not match its checksum")
            if info.name == CONFIG_FILE:
                if info.size > _SMALL_MAX:
                    raise BackupError(f"{path}: the config file is too large")
                config_text = out.read_text(encoding="utf-8")
        missing = set(expected) - seen
        if missing:
            raise BackupError(f"{path} is incomplete (missing {', '.join(sorted(missing))})")
    return manifest, config_text, tmp / db_name


def _parse_manifest(path: Path, raw: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(raw)
    except ValueError:
        raise BackupError(f"{path}: the manifest is not valid JSON") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise BackupError(f"{path}: unknown backup format {doc.get('format')!r}"
                          if isinstance(doc, dict) else f"{path}: bad manifest")
    if doc.get("database") not in ("sqlite", "postgresql") or not isinstance(
            doc.get("members"), dict) or not isinstance(doc.get("counts"), dict):
        raise BackupError(f"{path}: the manifest is incomplete")
    return doc


def _read_small(tar: tarfile.TarFile, info: tarfile.TarInfo) -> bytes:
    if info.size > _SMALL_MAX:
        raise BackupError(f"{info.name} is too large")
    fh = tar.extractfile(info)
    assert fh is not None
    return fh.read()


def _check_sqlite(path: Path, db_path: Path, manifest: dict[str, Any]) -> None:
    try:
        conn = sqlite3.connect(db_path.resolve().as_uri() + "?mode=ro", uri=True)
        try:
            result = [r[0] for r in conn.execute("PRAGMA integrity_check")]
            if result != ["ok"]:
                raise BackupError(f"{path}: the database fails its integrity check "
                                  f"({'; '.join(map(str, result[:3]))})")
            counts, server_id, migration = inspect_sqlite(conn)
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise BackupError(f"{path}: the database cannot be read ({exc})") from None
    if counts != manifest["counts"]:
        raise BackupError(f"{path}: row counts differ from the manifest")
    if server_id != manifest.get("server_id") or migration != manifest.get("migration"):
        raise BackupError(f"{path}: server_id or migration differs from the manifest")


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


# -- small file helpers ----------------------------------------------------------------------
def make_private_dir(path: Path) -> None:
    if not path.exists():
        path.mkdir(parents=True, mode=0o700)
    elif not path.is_dir():
        raise BackupError(f"{path} exists and is not a folder")


def write_private(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _q(name: str) -> str:
    return name.replace('"', '""')
