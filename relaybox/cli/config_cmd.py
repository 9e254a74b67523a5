"""``relaybox config check`` / ``config show``."""

from __future__ import annotations

import click
from rich.table import Table

from relaybox.cli.common import emit_json, out, settings_for
from relaybox.cli.safe import cell, markup
from relaybox.config import SETTINGS_TABLE, effective


def register(cli: click.Group) -> None:
    @cli.group("config")
    def config() -> None:
        """Validate or show the effective configuration."""

    @config.command("check")
    @click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
    def check(as_json: bool) -> None:
        """Validate relaybox.toml and RELAYBOX_* variables."""
        settings = settings_for(check_writable=True)
        if as_json:
            emit_json({"ok": True, "config": str(settings.config_file)})
        else:
            out.print(f"[green]ok[/] {markup(settings.config_file)}")

    @config.command("show")
    @click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
    def show(as_json: bool) -> None:
        """Print the effective settings (secrets masked)."""
        settings = settings_for()
        values = effective(settings)
        if as_json:
            emit_json(values)
            return
        table = Table("key", "value", "env")
        for row in SETTINGS_TABLE:
            # Values come from the config file and the environment: Text, never markup.
            table.add_row(row.key, cell(values[row.key]), row.env)
        out.print(table)
