"""``relaybox migrate status|up|down``."""

from __future__ import annotations

import click
from rich.table import Table

from relaybox.cli.common import emit_json, open_db, out, settings_for
from relaybox.cli.safe import cell, markup


def register(cli: click.Group) -> None:
    @cli.command("migrate")
    @click.argument("action", type=click.Choice(["status", "up", "down"]), default="status")
    @click.option("--steps", type=click.IntRange(min=1), default=1, show_default=True,
                  help="With down: how many migrations to roll back.")
    @click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
    def migrate_cmd(action: str, steps: int, as_json: bool) -> None:
        """Show, apply or roll back database migrations."""
        from relaybox.services import datadir

        settings = settings_for()
        db = open_db(settings, must_exist=False)
        try:
            if action == "status":
                st = datadir.migration_status(db)
                if as_json:
                    emit_json({"applied": st.applied, "pending": st.pending})
                    return
                table = Table("migration", "state")
                for name in st.applied:
                    table.add_row(cell(name), "[green]applied[/]")
                for name in st.pending:
                    table.add_row(cell(name), "[yellow]pending[/]")
                out.print(table)
                return
            names = (datadir.migrate_up(db) if action == "up"
                     else datadir.migrate_down(db, steps))
            if as_json:
                emit_json({"action": action, "migrations": names})
            elif names:
                verb = "applied" if action == "up" else "rolled back"
                for name in names:
                    out.print(f"{verb} {markup(name)}")
            else:
                out.print("nothing to do")
        finally:
            db.close()
