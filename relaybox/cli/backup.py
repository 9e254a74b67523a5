"""``relaybox backup [--output FILE]``, ``backup list``, ``backup verify FILE``, ``restore``
(an archive, or a point in time from the continuous replica)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import click
from rich.table import Table

from relaybox.cli.common import (
    CliError,
    emit_json,
    err,
    out,
    print_table,
    relay_errors,
    settings_for,
)
from relaybox.cli.safe import cell, markup


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


def _when(ts: Any) -> str:
    if not isinstance(ts, int | float):
        return "?"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def _show_counts(counts: dict[str, int]) -> None:
    table = Table("table", "rows")
    for name, n in counts.items():
        table.add_row(cell(name), cell(n))
    print_table(table)


def register(cli: click.Group) -> None:
    @cli.group("backup", invoke_without_command=True)
    @click.option("--output", "-o", type=click.Path(path_type=Path, dir_okay=False),
                  help="Archive to write (default: <backups dir>/relaybox-<time>.tar.gz).")
    @click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
    @click.pass_context
    @relay_errors
    def backup(ctx: click.Context, output: Path | None, as_json: bool) -> None:
        """Make a verified backup (server may run).

        One compressed archive: the database (with the server secrets), the config
        file and a manifest. It is checked after writing.
        """
        if ctx.invoked_subcommand is not None:
            return
        from relaybox.services.backup import create_backup

        settings = settings_for()
        if as_json:
            made = create_backup(settings, output)
            emit_json({"file": str(made.file), "bytes": made.bytes, "sha256": made.sha256,
                       "counts": made.counts})
            return
        with err.status("backing up and verifying…"):
            made = create_backup(settings, output)
        out.print(f"[green]Backup written and verified[/] {markup(made.file)}", soft_wrap=True)
        out.print(f"  {_size(made.bytes)}, sha256 {made.sha256}", soft_wrap=True)
        _show_counts(made.counts)

    @backup.command("list")
    @click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
    @relay_errors
    def list_cmd(as_json: bool) -> None:
        """List the backups in the backups folder.

        The folder is <data dir>/backups unless backup.dir is set.
        """
        from relaybox.services.backup import list_backups

        settings = settings_for()
        rows = list_backups(settings.backups_path)
        docs: list[dict[str, Any]] = []
        for f, manifest, problem in rows:
            m = manifest or {}
            docs.append({"file": str(f), "bytes": f.stat().st_size,
                         "created_at": m.get("created_at"), "server_id": m.get("server_id"),
                         "migration": m.get("migration"), "counts": m.get("counts"),
                         "scheduled": f.name.startswith("relaybox-auto-"), "problem": problem})
        if as_json:
            emit_json(docs)
            return
        if not docs:
            out.print(f"no backups in {markup(settings.backups_path)}")
            return
        table = Table("file", "created", "size", "events", "kind")
        for d in docs:
            events = str((d["counts"] or {}).get("event", "?"))
            kind = "scheduled" if d["scheduled"] else "manual"
            if d["problem"]:
                kind = "[red]unreadable[/]"
            table.add_row(cell(Path(d["file"]).name), cell(_when(d["created_at"])),
                          _size(d["bytes"]), cell(events), kind)
        print_table(table)
        out.print(f"[dim]{markup(settings.backups_path)}[/]", soft_wrap=True)

    @backup.command("verify")
    @click.argument("file", type=click.Path(path_type=Path))
    @click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
    @relay_errors
    def verify(file: Path, as_json: bool) -> None:
        """Check an archive completely.

        Checksums of every member, database integrity check, row counts.
        """
        from relaybox.services.backup import verify_backup

        if as_json:
            emit_json({"ok": True, **verify_backup(file).as_json()})
            return
        with err.status("verifying…"):
            checked = verify_backup(file)
        m = checked.manifest
        # The manifest is the archive's own text: shown inert (security.md Terminal output).
        out.print(f"[green]ok[/] {markup(file)}", soft_wrap=True)
        out.print(f"  made {markup(_when(m.get('created_at')))} by relaybox "
                  f"{markup(m.get('relaybox_version'))}, server {markup(m.get('server_id'))}, "
                  f"migration {markup(m.get('migration'))}", soft_wrap=True)
        _show_counts(checked.counts)

    @cli.command("restore")
    @click.argument("file", type=click.Path(path_type=Path), required=False)
    @click.option("--at", "at", metavar="TIME",
                  help="Rebuild the database as it was at TIME from the continuous replica "
                       "(ISO 8601, e.g. 2026-11-25T03:30:00Z; no zone = local time).")
    @click.option("--latest", is_flag=True,
                  help="Rebuild the database at the latest point the replica holds.")
    @click.option("--from", "from_url", metavar="URL",
                  help="The replica to read (default: the setting replication.url).")
    @click.option("--yes", is_flag=True, help="Confirm: this replaces the database.")
    @click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
    @relay_errors
    def restore(file: Path | None, at: str | None, latest: bool, from_url: str | None,
                yes: bool, as_json: bool) -> None:
        """Restore a backup, or a point in time, into the data dir.

        FILE: an archive made by 'relaybox backup', verified first. --at TIME or
        --latest: the database rebuilt from the continuous replica (replication.url,
        or --from). The server must be stopped. The database is replaced atomically,
        then pending migrations are applied.
        """
        from relaybox.bus import live_servers

        if sum((file is not None, at is not None, latest)) != 1:
            raise click.UsageError("give one of FILE, --at TIME or --latest")
        if from_url and file is not None:
            raise click.UsageError("--from goes with --at or --latest")
        settings = settings_for(check_writable=True)

        def serving() -> bool:
            return bool(live_servers(settings.run_dir))

        if serving():
            raise CliError(f"a server is running on {settings.data_dir}; stop it before "
                           "restoring")
        if file is None:
            _restore_point(settings, at, from_url or "", yes, as_json, serving)
            return
        from relaybox.services.restore import restore_backup

        if not yes:
            raise CliError(f"this replaces the database of {settings.data_dir} with {file}; "
                           "run again with --yes")
        if as_json:
            emit_json(restore_backup(settings, file, serving).as_json())
            return
        with err.status("verifying and restoring…"):
            done = restore_backup(settings, file, serving)
        out.print(f"[green]Restored[/] {markup(file)} into {markup(settings.data_dir)}",
                  soft_wrap=True)
        out.print(f"  server id {markup(done.server_id)}")
        if done.migrations_applied:
            out.print(f"  applied migrations: {markup(', '.join(done.migrations_applied))}")
        if done.config == "restored":
            out.print("  relaybox.toml restored from the backup")
        elif done.config == "kept":
            out.print("  [dim]the existing relaybox.toml was kept[/]")
        _show_counts(done.counts)


def _restore_point(settings: Any, at: str | None, url: str, yes: bool, as_json: bool,
                   serving: Any) -> None:
    """``restore --at TIME`` / ``--latest``: from the continuous replica (docs/backup.md)."""
    from relaybox.services import litestream
    from relaybox.services.pitr import POSTGRES_POINT, parse_time, restore_point

    when = parse_time(at) if at is not None else None
    if settings.sqlite_path is None:
        raise CliError(POSTGRES_POINT)
    source = url or settings.replication_url
    if not source:
        raise CliError("no replica to restore from: set replication.url or pass --from URL")
    if not yes:
        moment = "the latest point" if when is None else f"its state at {_when(when)}"
        raise CliError(f"this replaces the database of {settings.data_dir} with {moment} "
                       f"from {litestream.shown_url(source)}; run again with --yes")
    if as_json:
        emit_json(restore_point(settings, when, url=url, is_serving=serving).as_json())
        return
    with err.status("rebuilding from the replica…"):
        done = restore_point(settings, when, url=url, is_serving=serving)
    out.print(f"[green]Restored[/] {markup(done.replica)} into {markup(settings.data_dir)}",
              soft_wrap=True)
    point = _when(done.point_at) if done.point_at is not None else "?"
    out.print(f"  point: transaction {markup(done.txid)}, replicated {markup(point)} "
              f"({done.seconds:.1f} s)")
    out.print(f"  server id {markup(done.server_id)}")
    if done.migrations_applied:
        out.print(f"  applied migrations: {markup(', '.join(done.migrations_applied))}")
    _show_counts(done.counts)
