"""``relaybox device list | revoke | unrevoke`` (revocation reaches running servers at once)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click
from rich.table import Table

from relaybox.cli.common import (
    emit_json,
    open_db,
    out,
    print_table,
    relay_errors,
    settings_for,
    tell_servers,
)
from relaybox.cli.safe import cell, markup

if TYPE_CHECKING:
    from relaybox.services.devices import DeviceInfo
    from relaybox.services.notify import Change


def _change_device(device_id: str,
                   change_fn: Callable[[Any, str], tuple[DeviceInfo, Change]]
                   ) -> dict[str, Any]:
    """Apply a revoke/unrevoke (the service owns the transaction), tell running servers,
    describe the result."""
    settings = settings_for()
    db = open_db(settings)
    try:
        info, change = change_fn(db, device_id)
    finally:
        db.close()
    doc = _doc(info)
    doc["server_notified"] = tell_servers(settings, change)
    return doc


def _short(ts: str) -> str:
    """``2026-11-25T18:24:06.420Z`` → ``2026-11-25 18:24`` (UTC) for tables."""
    return ts[:16].replace("T", " ")


def _doc(d: DeviceInfo) -> dict[str, Any]:
    doc = d.as_json()
    doc.pop("online", None)  # the CLI reads the database; presence lives in the server
    doc["user"] = d.user_name
    return doc


def _who(doc: dict[str, Any]) -> str:
    """``NAME (ID) of USER`` as markup, the user data in it inert."""
    return f"{markup(doc['name'])} ({markup(doc['device_id'])}) of {markup(doc['user'])}"


def register(cli: click.Group) -> None:
    @cli.group("device")
    def device() -> None:
        """List, revoke and unrevoke devices."""

    @device.command("list")
    @click.option("--user", "user_ref", metavar="USER", help="Only this user's devices.")
    @click.option("--revoked", is_flag=True, help="Only revoked devices.")
    @click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
    @relay_errors
    def list_cmd(user_ref: str | None, revoked: bool, as_json: bool) -> None:
        """List devices (all users unless --user)."""
        from relaybox.services.devices import devices_of
        from relaybox.services.users import user_info

        settings = settings_for()
        db = open_db(settings)
        try:
            user_id = user_info(user_ref).user_id if user_ref is not None else None
            found = devices_of(user_id, True if revoked else None, user_names=True)
        finally:
            db.close()
        docs = [_doc(d) for d in found]
        if as_json:
            emit_json(docs)
            return
        if not docs:
            out.print("no devices" + (" revoked" if revoked else ""))
            return
        table = Table("device id", "user", "name", "created", "last seen", "state")
        table.columns[0].no_wrap = True
        for d in docs:
            # Names and reasons are user data: cells are Text, never markup (security.md
            # "Terminal output and names").
            state = cell("active", "green")
            if d["revoked"]:
                reason = f": {d['revoked_reason']}" if d["revoked_reason"] else ""
                state = cell("revoked", "red") + cell(f" {_short(d['revoked_at'])}{reason}")
            table.add_row(cell(d["device_id"]), cell(d["user"] or "?"), cell(d["name"]),
                          _short(d["created_at"]),
                          _short(d["last_seen_at"]) if d["last_seen_at"] else "never", state)
        print_table(table)

    @device.command("revoke")
    @click.argument("device_id")
    @click.option("--reason", help="Why (kept with the device, shown in lists).")
    @click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
    @relay_errors
    def revoke(device_id: str, reason: str | None, as_json: bool) -> None:
        """Revoke a device; a live session closes.

        Its tokens stop working at once and running servers close its session.
        """
        from relaybox.services.devices import revoke as revoke_device

        doc = _change_device(device_id, lambda db, d: revoke_device(db, d, reason))
        if as_json:
            emit_json(doc)
            return
        out.print(f"[green]Revoked[/] {_who(doc)}")

    @device.command("unrevoke")
    @click.argument("device_id")
    @click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
    @relay_errors
    def unrevoke(device_id: str, as_json: bool) -> None:
        """Let a revoked device connect again.

        Its old refresh tokens stay revoked: it signs in afresh.
        """
        from relaybox.services.devices import unrevoke as unrevoke_device

        doc = _change_device(device_id, unrevoke_device)
        if as_json:
            emit_json(doc)
            return
        out.print(f"[green]Unrevoked[/] {_who(doc)}")
