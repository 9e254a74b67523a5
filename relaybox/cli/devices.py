"""``relaybox device list | revoke | unrevoke`` (revocation reaches running servers at once)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click
from rich.table import Table

from relaybox.cli.common import (
    emit_json,
    err,
    open_db,
    out,
    print_table,
    relay_errors,
    settings_for,
)
from relaybox.cli.safe import cell, markup
from relaybox.config import Settings
from relaybox.store.db import write_transaction
from relaybox.store.eventlog import StoredEvent


def announce(settings: Settings, events: list[StoredEvent],
             controls: list[dict[str, Any]]) -> bool:
    """Tell running servers through Redis; False when none could be told.

    Never starts a Redis of its own: with the embedded one, the URL comes from a live
    server's record (bus.redis_url_for), and no live server means nobody to tell.
    """
    from relaybox.bus import BUS_ERRORS, SyncBus, redis_url_for
    from relaybox.services.fanout import announce_sync

    url = redis_url_for(settings.redis_url, settings.run_dir)
    if url is None:
        return False
    bus = SyncBus(url)
    try:
        announce_sync(bus, events, controls)
        return True
    except BUS_ERRORS as exc:
        err.print(f"[yellow]warning:[/] the change is saved, but running servers could not "
                  f"be told ({markup(exc)}); live sessions notice on their next connect")
        return False
    finally:
        bus.close()


def _change_device(device_id: str, change_fn: Callable[[Any, Any], Any]) -> dict[str, Any]:
    """Apply a revoke/unrevoke in one transaction, tell running servers, describe the result."""
    from relaybox.services.devices import require_device

    settings = settings_for()
    db = open_db(settings)
    try:
        d = require_device(device_id)
        with write_transaction(db):
            change = change_fn(db, d)
        d = require_device(d.id)
        doc = _doc(d, d.user.name)
    finally:
        db.close()
    doc["server_notified"] = announce(settings, change.events, change.controls)
    return doc


def _short(ts: str) -> str:
    """``2026-11-25T18:24:06.420Z`` → ``2026-11-25 18:24`` (UTC) for tables."""
    return ts[:16].replace("T", " ")


def _doc(d: Any, user_name: str | None) -> dict[str, Any]:
    from relaybox.services.devices import device_json

    doc = device_json(d)
    doc.pop("online", None)  # the CLI reads the database; presence lives in the server
    doc["user"] = user_name
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
        from relaybox.services.devices import list_devices
        from relaybox.services.users import find_user
        from relaybox.store.models import User

        settings = settings_for()
        db = open_db(settings)
        try:
            user_id = find_user(user_ref).id if user_ref is not None else None
            names = {u.id: u.name for u in User.select(User.id, User.name)}
            found: list[Any] = list_devices(user_id, True if revoked else None)
            docs = [_doc(d, names.get(d.user_id)) for d in found]
        finally:
            db.close()
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
        from relaybox.services.devices import revoke_device

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
        from relaybox.services.devices import unrevoke_device

        doc = _change_device(device_id, unrevoke_device)
        if as_json:
            emit_json(doc)
            return
        out.print(f"[green]Unrevoked[/] {_who(doc)}")
