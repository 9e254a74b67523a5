"""``relaybox prune``, ``relaybox status`` and ``relaybox admin-token --rotate``."""

from __future__ import annotations

import math
from typing import Any

import click
from rich.table import Table

from relaybox.cli.common import (
    CliError,
    emit_json,
    err,
    open_db,
    out,
    print_table,
    relay_errors,
    server_urls,
    settings_for,
)
from relaybox.cli.safe import cell, visible


def _duration(seconds: float) -> str:
    s = int(seconds)
    days, s = divmod(s, 86400)
    hours, s = divmod(s, 3600)
    minutes, s = divmod(s, 60)
    parts = [f"{days}d"] if days else []
    if days or hours:
        parts.append(f"{hours}h")
    if days or hours or minutes:
        parts.append(f"{minutes}m")
    parts.append(f"{s}s")
    return " ".join(parts)


def _replication_line(doc: dict[str, Any]) -> Any:
    """``running, lag 0.8 s → file:///mnt/replica`` (red when not running or > 10 s)."""
    from rich.text import Text

    lag = doc.get("lag_s")
    state = str(doc.get("state", "?"))
    parts = [state]
    if isinstance(lag, int | float) and math.isfinite(lag):
        parts.append(f"lag {lag:.1f} s")
    if doc.get("restarts"):
        parts.append(f"{doc['restarts']} restarts")
    ok = state == "running" and isinstance(lag, int | float) and lag <= 10
    text = Text(", ".join(parts), style="green" if ok else "red")
    text.append(f" → {visible(doc.get('replica', '?'))}", style="default")
    return text


def ask_status(urls: list[str], timeout: float = 3.0) -> tuple[str, int, dict[str, Any]]:
    """(url, HTTP status, body) from the first server that answers /api/v1/status."""
    import httpx

    problems = []
    for url in urls:
        try:
            r = httpx.get(f"{url}/api/v1/status", timeout=timeout)
            body = r.json()
        except (httpx.HTTPError, ValueError) as exc:
            problems.append(f"{url}: {type(exc).__name__}")
            continue
        if isinstance(body, dict) and r.status_code in (200, 503):
            return url, r.status_code, body
        problems.append(f"{url}: HTTP {r.status_code}")
    raise CliError("no relaybox server answered (" + "; ".join(problems) + ")")


def register(cli: click.Group) -> None:
    @cli.command("status")
    @click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
    @relay_errors
    def status(as_json: bool) -> None:
        """Ask the running server how it is.

        Asks GET /api/v1/status at the URL the server recorded in the data dir,
        else at public_url, else at host:port.
        """
        from relaybox.services.replication import status as replication_status

        settings = settings_for()
        url, code, body = ask_status(server_urls(settings))
        # This machine's replication, from the data dir (docs/backup.md).
        replicated = replication_status(settings)
        if as_json:
            emit_json({"url": url, **body,
                       **({"replication": replicated} if replicated is not None else {})})
        else:
            # Whatever answered at the URL wrote the body: every value is shown as Text
            # (security.md "Terminal output and names").
            ok = body.get("status") == "ok"
            table = Table(show_header=False, box=None)
            table.add_row("server", cell(url))
            table.add_row("status", cell(body.get("status"), "green" if ok else "red"))
            for key in ("version", "server_id"):
                table.add_row(key.replace("_", " "), cell(body.get(key, "?")))
            uptime = body.get("uptime_s")
            if isinstance(uptime, int | float) and math.isfinite(uptime):
                table.add_row("uptime", _duration(body["uptime_s"]))
            for key in ("database", "redis"):
                value = str(body.get(key, "?"))
                table.add_row(key, cell(value, "green" if value == "ok" else "red"))
            table.add_row("connections", cell(body.get("connections", "?")))
            if replicated is not None:
                table.add_row("replication", _replication_line(replicated))
            print_table(table)
        if code != 200:
            parts = body.get("failing")
            failing = (", ".join(map(visible, parts)) if isinstance(parts, list) and parts
                       else visible(body.get("status")))
            raise CliError(f"the server at {url} is not ready ({failing})")

    @cli.command("admin-token")
    @click.option("--rotate", is_flag=True, help="Make a new admin token; the old one stops.")
    @click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
    @relay_errors
    def admin_token(rotate: bool, as_json: bool) -> None:
        """Make a new admin token; the old one stops.

        Only a hash of the token is stored, so it cannot be shown again.
        """
        from relaybox.services.identity import new_admin_token

        if not rotate:
            raise click.UsageError("the admin token is stored only as a hash and cannot be "
                                   "shown; use --rotate to make a new one")
        settings = settings_for()
        db = open_db(settings)
        try:
            token = new_admin_token(db)
        finally:
            db.close()
        if as_json:
            emit_json({"admin_token": token})
            return
        out.print(f"new admin token [bold yellow]{token}[/]")
        out.print("[dim]Shown once; the previous token no longer works.[/]")

    @cli.command("prune")
    @click.option("--dry-run", is_flag=True, help="Only report what would be deleted.")
    @click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
    @relay_errors
    def prune(dry_run: bool, as_json: bool) -> None:
        """Apply the retention policy now.

        Settings: retention.days, retention.max_events_per_stream. Expired pairing
        codes and refresh tokens go too.
        """
        from relaybox.protocol.encoding import now_ms
        from relaybox.services import retention

        settings = settings_for()
        db = open_db(settings)
        try:
            if not as_json and not dry_run:
                with err.status("pruning…"):
                    report = retention.prune(db, settings, now_ms())
            else:
                report = retention.prune(db, settings, now_ms(), dry_run=dry_run)
            names = retention.user_names()
        finally:
            db.close()
        if as_json:
            emit_json(report.as_json(names))
            return
        verb = "would remove" if dry_run else "removed"
        if settings.retention_days == 0 and settings.retention_max_events_per_stream == 0:
            out.print("[dim]events are kept forever (retention.days and "
                      "retention.max_events_per_stream are 0)[/]")
        if report.streams:
            table = Table("user", "stream", verb, "first kept seq")
            for s in report.streams:
                table.add_row(cell(names.get(s.user_id, s.user_id)), cell(s.stream),
                              str(s.removed), str(s.floor_seq + 1))
            print_table(table)
        out.print(f"{verb} {report.events} events, {report.pairing_codes} expired pairing "
                  f"codes, {report.refresh_tokens} expired refresh tokens")
