"""``relaybox init``: create the data dir, config, database and admin token."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

from relaybox.cli.common import CliError, emit_json, err, out, relay_errors, settings_for
from relaybox.config import Settings

if TYPE_CHECKING:
    from relaybox.services.datadir import InitResult


def initialise(settings: Settings, *, force: bool = False) -> InitResult:
    """Set up a data dir (services/datadir.py; imported when used: every command loads
    this module)."""
    from relaybox.services.datadir import initialise as set_up

    return set_up(settings, force=force)


def register(cli: click.Group) -> None:
    @cli.command("init")
    @click.option("--force", is_flag=True, help="Start over: delete the database and secrets.")
    @click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
    @relay_errors
    def init(force: bool, as_json: bool) -> None:
        """Create the data dir: config file, database, server id, admin token."""
        from relaybox.services.datadir import is_initialised

        settings = settings_for(check_writable=True)
        if not force and is_initialised(settings):
            raise CliError(f"{settings.data_dir} is already initialised "
                           "(use --force to start over; this deletes all data)")
        res = initialise(settings, force=force)
        if as_json:
            emit_json(result_json(res))
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
