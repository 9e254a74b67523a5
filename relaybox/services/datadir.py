"""The data dir and its database: set one up, open it for a command, check it answers."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import peewee as pw

from relaybox.config import Settings, render_config_file
from relaybox.errors import Conflict, Unavailable
from relaybox.services import identity
from relaybox.store import migrate
from relaybox.store.db import open_database, ping


@dataclass(frozen=True)
class InitResult:
    data_dir: str
    server_id: str
    admin_token: str | None
    config: str
    created: bool


@dataclass(frozen=True)
class Prepared:
    """What ``prepare`` did to a database before a server starts on it."""

    applied: list[str]
    #: A new admin token when the database had none (shown once).
    admin_token: str | None
    users: int


class NotInitialised(Unavailable):
    """The data dir has no relaybox database yet (run ``relaybox init``)."""

    code = "not_initialised"


def open_store(settings: Settings, *, must_exist: bool = True) -> pw.Database:
    """Open (and bind) the database; with ``must_exist`` refuse an uninitialised data dir
    (``NotInitialised``) and a database that cannot be opened (``Unavailable``)."""
    path = settings.sqlite_path
    if must_exist and path is not None and not path.exists():
        raise NotInitialised(f"no relaybox database in {settings.data_dir} "
                             "(run 'relaybox init')")
    db = open_database(settings)
    try:
        db.connect(reuse_if_open=True)
    except pw.OperationalError as exc:
        raise Unavailable(f"cannot open the database: {exc}") from None
    if must_exist and not identity.is_initialised(db):
        db.close()
        raise NotInitialised(f"the database in {settings.data_dir} is not initialised "
                             "(run 'relaybox init')")
    return db


def is_initialised(settings: Settings) -> bool:
    """Whether the data dir's SQLite database exists and holds a server identity."""
    if settings.sqlite_path is None or not settings.sqlite_path.exists():
        return False
    db = open_database(settings)
    try:
        return identity.is_initialised(db)
    finally:
        db.close()


def database_answers(db: pw.Database) -> bool:
    """True when the database answers a trivial query (blocking)."""
    return ping(db)


def initialise(settings: Settings, *, force: bool = False) -> InitResult:
    """Create (or, with ``force``, recreate) a data dir; safe to call on an existing one."""
    d = settings.data_dir
    db_path = settings.sqlite_path
    if force:
        from relaybox.bus import live_servers

        if live_servers(settings.run_dir):
            raise Conflict(f"a server is running on {d}; stop it before 'init --force'",
                           code="server_running")
        if db_path is not None:
            for suffix in ("", "-wal", "-shm"):
                p = db_path.with_name(db_path.name + suffix)
                if p.exists():
                    p.unlink()
        if (d / "run").exists():
            shutil.rmtree(d / "run", ignore_errors=True)
    # security.md "Identities and secrets": the data dir is private to the service user.
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(d, 0o700)
    cfg = settings.config_file
    if not cfg.exists() or force:
        _write_private(cfg, render_config_file(settings))
    db = open_store(settings, must_exist=False)
    try:
        # Several nodes may set up one empty database at the same moment: one at a time.
        with migrate.exclusive(db):
            migrate.up(db)
            created = not identity.is_initialised(db)
            secrets, token = identity.initialise(db)
    finally:
        db.close()
    if db_path is not None and db_path.exists():
        os.chmod(db_path, 0o600)
    return InitResult(str(d), secrets.server_id, token, str(cfg), created)


def prepare(settings: Settings) -> Prepared:
    """Migrate the database and give it a server identity if it has none (``relaybox
    serve``). Nodes started together on one empty database do it one at a time."""
    from relaybox.services.users import list_users

    db = open_store(settings, must_exist=False)
    try:
        token = None
        with migrate.exclusive(db):
            applied = migrate.up(db)
            if not identity.is_initialised(db):
                _, token = identity.initialise(db)
        return Prepared(applied, token, len(list_users()))
    finally:
        db.close()


def migration_status(db: pw.Database) -> migrate.MigrationStatus:
    """Applied and pending migrations (``relaybox migrate status``)."""
    return migrate.status(db)


def migrate_up(db: pw.Database) -> list[str]:
    """Apply every pending migration; the names applied."""
    return migrate.up(db)


def migrate_down(db: pw.Database, steps: int) -> list[str]:
    """Roll back the last ``steps`` migrations; the names rolled back."""
    return migrate.down(db, steps)


def _write_private(path: Path, text: str) -> None:
    """Write ``path`` with mode 0600 from its first byte: it may hold a database password."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
