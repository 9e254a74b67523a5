"""``relaybox user add | list | remove``."""

from __future__ import annotations

from typing import Any

import click
from rich.table import Table

from relaybox.cli.common import (
    CliError,
    emit_json,
    open_db,
    out,
    print_table,
    relay_errors,
    settings_for,
)
from relaybox.cli.safe import cell, markup
from relaybox.protocol.encoding import format_ts
from relaybox.store.db import write_transaction


def register(cli: click.Group) -> None:
    @cli.group("user")
    def user() -> None:
        """Add, list and remove users."""

    @user.command("add")
    @click.argument("name")
    @click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
    @relay_errors
    def add(name: str, as_json: bool) -> None:
        """Create a user.

        Then pair a first device with 'relaybox pair NAME'.
        """
        from relaybox.services.users import add_user

        settings = settings_for()
        db = open_db(settings)
        try:
            with write_transaction(db):
                u = add_user(db, name)
        finally:
            db.close()
        if as_json:
            emit_json({"user_id": u.id, "name": u.name, "created_at": format_ts(u.created_at)})
            return
        out.print(f"[green]Added user[/] {markup(u.name)} ({u.id})")
        out.print(f"  pair a device: relaybox pair {markup(u.name)}")

    @user.command("list")
    @click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
    @relay_errors
    def list_cmd(as_json: bool) -> None:
        """List users with their device counts."""
        import peewee as pw

        from relaybox.store.models import Device, User

        settings = settings_for()
        db = open_db(settings)
        try:
            total = pw.fn.COUNT(Device.id)
            active = Device.id.is_null(False) & Device.revoked_at.is_null()
            live = pw.fn.SUM(pw.Case(None, [(active, 1)], 0))
            query: Any = (User.select(User.id, User.name, User.created_at,
                                      total.alias("devices"), live.alias("active"))
                          .join(Device, pw.JOIN.LEFT_OUTER, on=(Device.user == User.id))
                          .group_by(User.id, User.name, User.created_at)
                          .order_by(User.created_at))
            rows: list[dict[str, Any]] = list(query.dicts())
        finally:
            db.close()
        docs = [{"user_id": r["id"], "name": r["name"], "created_at": format_ts(r["created_at"]),
                 "devices": int(r["devices"] or 0), "active_devices": int(r["active"] or 0)}
                for r in rows]
        if as_json:
            emit_json(docs)
            return
        if not docs:
            out.print("no users yet: add one with 'relaybox user add NAME'")
            return
        table = Table("name", "user id", "devices", "created")
        table.columns[1].no_wrap = True
        for d in docs:
            revoked = d["devices"] - d["active_devices"]
            count = f"{d['active_devices']}" + (f" (+{revoked} revoked)" if revoked else "")
            # Names stored before the name rule may hold anything (security.md
            # "Terminal output and names"): cells are Text, never markup.
            table.add_row(cell(d["name"]), cell(d["user_id"]), count,
                          d["created_at"][:16].replace("T", " "))
        print_table(table)

    @user.command("remove")
    @click.argument("name")
    @click.option("--yes", is_flag=True, help="Confirm: this deletes the user's data.")
    @click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
    @relay_errors
    def remove(name: str, yes: bool, as_json: bool) -> None:
        """Delete a user and all their data.

        Their devices, events and cursors go; live sessions are closed.
        """
        from relaybox.cli.devices import announce
        from relaybox.services.users import find_user, remove_user

        settings = settings_for()
        db = open_db(settings)
        try:
            u = find_user(name)
            if not yes:
                raise CliError(f"this deletes user {u.name!r} with all their devices and "
                               "events; run again with --yes")
            with write_transaction(db):
                device_ids = remove_user(db, u)
        finally:
            db.close()
        # hub.on_control closes the sessions of these devices on every server process.
        notified = announce(settings, [], [{"kind": "user_removed", "device_ids": device_ids}])
        if as_json:
            emit_json({"user_id": u.id, "name": u.name, "removed_devices": device_ids,
                       "server_notified": notified})
            return
        out.print(f"[green]Removed user[/] {markup(u.name)} and {len(device_ids)} device(s)")
