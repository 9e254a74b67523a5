"""Restore: verify an archive, swap the database in atomically, then migrate."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from relaybox.config import CONFIG_FILE, ConfigError, Settings, load_settings, mask_url
from relaybox.services import pgdump
from relaybox.services.archive import (
    BackupError,
    Verified,
    fsync_dir,
    make_private_dir,
    verify_backup,
    write_private,
)


@dataclass(frozen=True)
class Restored:
    """What a restore did (printed by ``relaybox restore``)."""

    file: Path
    server_id: str
    counts: dict[str, int]
    migrations_applied: list[str]
    database: str
    config: str  # "restored", "kept" or "none"

    def as_json(self) -> dict[str, Any]:
        return {"file": str(self.file), "server_id": self.server_id, "counts": self.counts,
                "migrations_applied": self.migrations_applied, "database": self.database,
                "config": self.config}


def restore_backup(settings: Settings, path: Path,
                   is_serving: Callable[[], bool] = lambda: False) -> Restored:
    """Verify, then replace the database atomically, then apply pending migrations.

    Nothing in the data dir changes unless the archive passed every check. The caller
    refuses while a server uses the data dir; ``is_serving`` is asked again just before
    the swap.
    """
    data_dir = settings.data_dir
    created = not data_dir.exists()
    make_private_dir(data_dir)
    try:
        return _restore(settings, path, is_serving)
    except BaseException:
        if created:  # a refused restore onto a new data dir leaves nothing behind
            shutil.rmtree(data_dir, ignore_errors=True)
        raise


def _restore(settings: Settings, path: Path, is_serving: Callable[[], bool]) -> Restored:
    from relaybox.store import migrate

    data_dir = settings.data_dir
    checked = verify_backup(path, work_dir=data_dir, keep_db=True)
    assert checked.db_path is not None
    work = checked.db_path.parent
    try:
        target, config_state = _target_settings(settings, checked)
        known = {p.stem for p in migrate.MIGRATIONS_DIR.glob("[0-9]*.py")}
        mig = checked.manifest.get("migration")
        if mig and mig not in known:
            raise BackupError(f"{path} comes from a newer relaybox (migration {mig!r} is "
                              "unknown here); upgrade relaybox first")
        kind = checked.manifest["database"]
        if kind == "sqlite" and target.sqlite_path is None:
            raise BackupError("this is a SQLite backup but database_url points to PostgreSQL")
        if kind == "postgresql" and target.sqlite_path is not None:
            raise BackupError("this is a PostgreSQL backup; set database_url first")
        if target.sqlite_path is not None:
            _check_replaceable(target.sqlite_path)
        if is_serving():
            raise BackupError(f"a server is running on {data_dir}; stop it first")
        if target.sqlite_path is not None:
            _swap_sqlite(checked.db_path, target.sqlite_path)
        else:
            pgdump.restore(target.database_url, checked.db_path)
        if config_state == "restored" and checked.config_text is not None:
            write_private(target.config_file, checked.config_text)
        applied, server_id = _after_restore(target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return Restored(path, server_id, checked.counts, applied, kind, config_state)


def _target_settings(settings: Settings, checked: Verified) -> tuple[Settings, str]:
    """The settings to restore with: the data dir's own config, else the archived one."""
    if settings.config_file.exists():
        return settings, "kept"
    if checked.config_text is None:
        return settings, "none"
    assert checked.db_path is not None
    probe = checked.db_path.parent / "config"
    probe.mkdir()
    (probe / CONFIG_FILE).write_text(checked.config_text, encoding="utf-8")
    try:
        archived = load_settings(probe)
    except ConfigError as exc:
        raise BackupError(f"the archived relaybox.toml is not valid: {exc.problems[0]}"
                          ) from None
    target = dataclasses.replace(archived, data_dir=settings.data_dir)
    _check_archived_database(settings, target)
    return target, "restored"


def _check_archived_database(settings: Settings, target: Settings) -> None:
    """The archive may not choose where a database is written (backup.md "Restoring").

    Its config decides only when it names the same database as this machine's settings
    (default or environment), or a SQLite file inside the data dir.
    """
    if target.database_url == settings.database_url:
        return
    where = target.sqlite_path
    if where is not None and where.resolve().is_relative_to(settings.data_dir.resolve()):
        return
    shown = str(where) if where is not None else mask_url(target.database_url)
    raise BackupError(f"the archived relaybox.toml puts the database at {shown}, outside "
                      f"{settings.data_dir}; write {settings.config_file} (or set "
                      "RELAYBOX_DATABASE_URL) first")


def _check_replaceable(target: Path) -> None:
    """A restore replaces a SQLite database or nothing: never some other file."""
    if not target.exists() and not target.is_symlink():
        return
    head = b"?"
    if target.is_file():
        with open(target, "rb") as fh:
            head = fh.read(16)
    if head not in (b"", b"SQLite format 3\x00"):
        raise BackupError(f"{target} exists and is not a SQLite database; not replacing it")


def _swap_sqlite(new_db: Path, target: Path) -> None:
    """Replace ``target`` by ``new_db`` so that a crash leaves either the old or the new one."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staged = target.with_name(f".{target.name}.restore")
    shutil.move(str(new_db), staged)  # same file system as the target: os.replace is atomic
    os.chmod(staged, 0o600)
    with open(staged, "rb") as fh:
        os.fsync(fh.fileno())
    if target.exists():
        # Fold the old WAL into the old file first: deleting a non-empty WAL would lose
        # data if we crashed before the swap; an old WAL next to the new file would corrupt it.
        with contextlib.suppress(sqlite3.Error):
            conn = sqlite3.connect(str(target), timeout=15)
            try:
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            finally:
                conn.close()
    for suffix in ("-wal", "-shm", "-journal"):
        target.with_name(target.name + suffix).unlink(missing_ok=True)
    # Litestream's record of the old file's WAL (docs/backup.md "Continuous backup"):
    # with it gone, it takes a fresh snapshot of the new file.
    shutil.rmtree(target.with_name(f".{target.name}-litestream"), ignore_errors=True)
    os.replace(staged, target)
    fsync_dir(target.parent)


def _after_restore(settings: Settings) -> tuple[list[str], str]:
    from relaybox.services import identity
    from relaybox.store import migrate
    from relaybox.store.db import open_database

    db = open_database(settings)
    try:
        db.connect(reuse_if_open=True)
        applied = migrate.up(db)
        if settings.sqlite_path is not None:
            ok = db.execute_sql("PRAGMA quick_check").fetchone()[0]
            if ok != "ok":
                raise BackupError(f"the restored database fails its check: {ok}")
        server_id = identity.load_secrets().server_id
    finally:
        db.close()
    return applied, server_id
