"""The backup archive format: its manifest, reading an untrusted archive, verifying it."""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import os
import re
import shutil
import sqlite3
import stat
import tarfile
import tempfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from relaybox.config import CONFIG_FILE
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



# An archive is untrusted input (backup.md "An archive is untrusted input"): it is read as one
# stream under fixed bounds, only the members the format names are accepted, each is written
# under its fixed name into a fresh private folder, and nothing outside it is ever written.
MAX_DB_BYTES = 64 << 30  # the database member (64 GiB): far above any relay's store
MAX_MEMBERS = 3  # manifest, database, config
_HEADER_SLACK = 64 << 10  # tar headers (pax records included) per member, and the end blocks
_FREE_MARGIN = 64 << 20  # checking an archive leaves at least this much disk space free
_SHA256 = re.compile(r"[0-9a-f]{64}")


class _Bounded:
    """The decompressed stream, cut off past ``limit`` bytes: a bomb stops here, not on disk."""

    def __init__(self, path: Path, src: Callable[[int], bytes], limit: int) -> None:
        self.path, self.src, self.limit, self.used = path, src, limit, 0

    def read(self, n: int | None = -1) -> bytes:
        room = self.limit - self.used
        data = self.src(room + 1 if n is None or n < 0 else min(n, room + 1))
        self.used += len(data)
        if self.used > self.limit:
            raise BackupError(f"{self.path} holds more data than its manifest declares")
        return data


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


def _stat(path: Path) -> os.stat_result:
    """The archive's stat; a FIFO or a device would never end, so only a regular file will do."""
    with _damaged(path):
        st = path.stat()
    if stat.S_ISDIR(st.st_mode):
        raise BackupError(f"{path}: is a folder, not a backup file")
    if not stat.S_ISREG(st.st_mode):
        raise BackupError(f"{path}: not a regular file")
    return st


@contextlib.contextmanager
def _open(path: Path) -> Iterator[tuple[tarfile.TarFile, _Bounded, dict[str, Any]]]:
    """The archive as a bounded stream, just past its checked manifest (the first member)."""
    _stat(path)
    with open(path, "rb") as raw, gzip.GzipFile(fileobj=raw, mode="rb") as gz:
        stream = _Bounded(path, gz.read, _SMALL_MAX + _HEADER_SLACK)
        # Stream mode reads forward only, and every byte through ``stream``.
        with tarfile.open(fileobj=stream, mode="r|") as tar:  # type: ignore[call-overload]
            first = tar.next()
            if first is None or first.name != MANIFEST or not _is_plain(first):
                raise BackupError(f"{path} is not a relaybox backup (no manifest)")
            if first.size > _SMALL_MAX:
                raise BackupError(f"{path}: the manifest is too large")
            fh = tar.extractfile(first)
            assert fh is not None
            yield tar, stream, _parse_manifest(path, fh.read())


def _is_plain(info: tarfile.TarInfo) -> bool:
    """A regular file: no link, device, FIFO, folder or sparse member."""
    return info.type in (tarfile.REGTYPE, tarfile.AREGTYPE) and not info.issparse()


def read_manifest(path: Path) -> dict[str, Any]:
    """The manifest of an archive, read from its first member (cheap; no verification)."""
    with _damaged(path), _open(path) as (_tar, _stream, manifest):
        return manifest


def verify_backup(path: Path, *, work_dir: Path | None = None, keep_db: bool = False
                  ) -> Verified:
    """Check everything: members, sha256 of each, integrity_check, schema and row counts.

    Members are extracted into a fresh private folder in ``work_dir`` (default: the system
    temporary folder), removed afterwards; with ``keep_db`` the checked database stays
    there (for restore).
    """
    path = Path(path)
    size = _stat(path).st_size
    with _damaged(path):
        archive_sha = sha256_file(path)
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
    with _damaged(path), _open(path) as (tar, stream, manifest):
        want: dict[str, dict[str, Any]] = manifest["members"]
        total = sum(m["bytes"] for m in want.values())
        # From here on the stream may hold the declared members and their headers, no more.
        stream.limit = stream.used + _HEADER_SLACK + sum(
            _HEADER_SLACK + -(-m["bytes"] // 512) * 512 for m in want.values())
        free = shutil.disk_usage(tmp).free
        if total + _FREE_MARGIN > free:
            raise BackupError(f"{path}: checking it needs {total} bytes in {tmp.parent}, "
                              f"only {free} are free")
        seen: list[str] = []
        while (info := tar.next()) is not None:
            if info.name not in want or info.name in seen or len(seen) >= MAX_MEMBERS - 1:
                raise BackupError(f"{path}: unexpected member {info.name!r}")
            if not _is_plain(info):
                raise BackupError(f"{path}: {info.name} is not a regular file")
            if info.size != want[info.name]["bytes"]:
                raise BackupError(f"{path}: {info.name} holds {info.size} bytes, its manifest "
                                  f"says {want[info.name]['bytes']}")
            seen.append(info.name)
            # The name is one of the format's fixed names (_parse_manifest): no path in it.
            _copy_member(path, tar, info, tmp / info.name, want[info.name]["sha256"])
        missing = set(want) - set(seen)
        if missing:
            raise BackupError(f"{path} is incomplete (missing {', '.join(sorted(missing))})")
    config = tmp / CONFIG_FILE
    with _damaged(path):
        config_text = config.read_text(encoding="utf-8") if CONFIG_FILE in want else None
    return manifest, config_text, tmp / _db_member(manifest)


def _copy_member(path: Path, tar: tarfile.TarFile, info: tarfile.TarInfo, out: Path,
                 sha256: str) -> None:
    src = tar.extractfile(info)
    assert src is not None
    digest, n = hashlib.sha256(), 0
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with src, os.fdopen(fd, "wb") as fh:
        while chunk := src.read(_CHUNK):
            n += len(chunk)
            digest.update(chunk)
            fh.write(chunk)
    if n != info.size or digest.hexdigest() != sha256:
        raise BackupError(f"{path}: {info.name} does not match its checksum")


def _db_member(manifest: dict[str, Any]) -> str:
    return SQLITE_MEMBER if manifest["database"] == "sqlite" else PG_MEMBER


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
    db_name = _db_member(doc)
    if db_name not in doc["members"]:
        raise BackupError(f"{path}: the manifest lists no database")
    # The format is fixed: the database and perhaps the config, nothing else, bounded.
    for name, entry in doc["members"].items():
        if name not in (db_name, CONFIG_FILE):
            raise BackupError(f"{path}: unexpected member {name!r}")
        if not isinstance(entry, dict) or type(entry.get("bytes")) is not int or not (
                isinstance(entry.get("sha256"), str) and _SHA256.fullmatch(entry["sha256"])):
            raise BackupError(f"{path}: the manifest entry of {name} is malformed")
        limit = MAX_DB_BYTES if name == db_name else _SMALL_MAX
        if not 0 <= entry["bytes"] <= limit:
            raise BackupError(f"{path}: {name} is too large ({entry['bytes']} bytes; "
                              f"the limit is {limit})")
    return doc


def _check_sqlite(path: Path, db_path: Path, manifest: dict[str, Any]) -> None:
    try:
        conn = sqlite3.connect(db_path.resolve().as_uri() + "?mode=ro", uri=True)
        try:
            # No SQL function runs from the file's own schema (views, triggers, defaults).
            conn.execute("PRAGMA trusted_schema = OFF")
            result = [r[0] for r in conn.execute("PRAGMA integrity_check")]
            if result != ["ok"]:
                raise BackupError(f"{path}: the database fails its integrity check "
                                  f"({'; '.join(map(str, result[:3]))})")
            kinds = {r[0] for r in conn.execute("SELECT type FROM sqlite_master")}
            counts, server_id, migration = inspect_sqlite(conn)
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise BackupError(f"{path}: the database cannot be read ({exc})") from None
    # relaybox makes tables and indexes only, and always has its meta and migrations.
    if not kinds <= {"table", "index"} or server_id is None or migration is None:
        raise BackupError(f"{path}: the database is not a relaybox database")
    if counts != manifest["counts"]:
        raise BackupError(f"{path}: row counts differ from the manifest")
    if server_id != manifest.get("server_id") or migration != manifest.get("migration"):
        raise BackupError(f"{path}: server_id or migration differs from the manifest")



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


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _q(name: str) -> str:
    return name.replace('"', '""')
