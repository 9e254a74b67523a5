"""``relaybox init``: create the data dir, config, database and admin token."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from relaybox.cli.common import CliError, emit_json, err, open_db, out, settings_for
from relaybox.config import Settings, render_config_file


@dataclass
class InitResult:
    data_dir: str
    server_id: str
    admin_token: str | None
    config: str
    created: bool


def initialise(settings: Settings, *, force: bool = False) -> InitResult:
    """Create (or, with ``force``, recreate) a data dir; safe to call on an existing one."""
    from relaybox.services import identity
    from relaybox.store import migrate

    d = settings.data_dir
    db_path = settings.sqlite_path
    if force:
        from relaybox.bus import live_servers

        if live_servers(settings.run_dir):
            raise CliError(f"a server is running on {d}; stop it before 'init --force'")
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
    db = open_db(settings, must_exist=False)
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


def register(cli: click.Group) -> None:
    @cli.command("init")
    @click.option("--force", is_flag=True, help="Start over: delete the database and secrets.")
    @click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
    def init(force: bool, as_json: bool) -> None:
        """Create the data dir: config file, database, server id, admin token."""
        settings = settings_for(check_writable=True)
        from relaybox.services import identity
        from relaybox.store.db import open_database

        if settings.sqlite_path is not None and settings.sqlite_path.exists() and not force:
            db = open_database(settings)
            try:
                done = identity.is_initialised(db)
            finally:
                db.close()
            if done:
                raise CliError(f"{settings.data_dir} is already initialised "
                               "(use --force to start over; this deletes all data)")
        res = initialise(settings, force=force)
        if as_json:
            emit_json({"data_dir": res.data_dir, "server_id": res.server_id,
                       "admin_token": res.admin_token, "config": res.config})
            return
        show_init(res)


def show_init(res: InitResult, *, stderr: bool = False) -> None:
    console = err if stderr else out
    console.print(f"[green]Initialised[/] {res.data_dir}")
    console.print(f"  server id   {res.server_id}")
    console.print(f"  config      {res.config}")
    if res.admin_token:
        console.print(f"  admin token [bold yellow]{res.admin_token}[/]")
        console.print("  [dim]Shown once; store it safely. Rotate with "
                      "'relaybox admin-token --rotate'.[/]")


def result_json(res: InitResult) -> dict[str, Any]:
    return {"data_dir": res.data_dir, "server_id": res.server_id,
            "admin_token": res.admin_token, "config": res.config}
