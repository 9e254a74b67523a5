"""``relaybox user add | list | remove``."""

from __future__ import annotations

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
    tell_servers,
)
from relaybox.cli.safe import cell, markup


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
        from relaybox.services.users import create_user

        settings = settings_for()
        db = open_db(settings)
        try:
            u = create_user(db, name)
        finally:
            db.close()
        if as_json:
            emit_json(u.as_json())
            return
        out.print(f"[green]Added user[/] {markup(u.name)} ({u.user_id})")
        out.print(f"  pair a device: relaybox pair {markup(u.name)}")

    @user.command("list")
    @click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
    @relay_errors
    def list_cmd(as_json: bool) -> None:
        """List users with their device counts."""
        from relaybox.services.users import users_with_devices

        settings = settings_for()
        db = open_db(settings)
        try:
            found = users_with_devices()
        finally:
            db.close()
        docs = [{**u.as_json(), "devices": u.devices, "active_devices": u.active_devices}
                for u in found]
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
        from relaybox.services.users import delete_user, user_info

        settings = settings_for()
        db = open_db(settings)
        try:
            u = user_info(name)
            if not yes:
                raise CliError(f"this deletes user {u.name!r} with all their devices and "
                               "events; run again with --yes")
            removed = delete_user(db, u.user_id)
        finally:
            db.close()
        notified = tell_servers(settings, removed.change)
        if as_json:
            emit_json({"user_id": u.user_id, "name": u.name,
                       "removed_devices": removed.device_ids, "server_notified": notified})
            return
        out.print(f"[green]Removed user[/] {markup(u.name)} and {len(removed.device_ids)} "
                  "device(s)")
