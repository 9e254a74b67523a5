"""``relaybox serve``: run the server (server/runner.py) and print what it reports."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import click

from relaybox.cli.common import CliError, err, settings_for
from relaybox.cli.init_cmd import show_init
from relaybox.config import Settings

if TYPE_CHECKING:
    from relaybox.services.datadir import InitResult


class ServePrinter:
    """The runner's ``Reporter`` for a terminal: set-up and the admin token on stderr,
    the ready lines on stderr too, or as log lines when the log is JSON."""

    def __init__(self, settings: Settings) -> None:
        self.json_log = settings.log_format == "json"

    def initialised(self, result: InitResult) -> None:
        show_init(result, stderr=True)

    def admin_token(self, token: str) -> None:
        err.print(f"admin token [bold yellow]{token}[/] (shown once)")

    def ready(self, lines: list[str]) -> None:
        for line in lines:
            if self.json_log:
                # A JSON log stays one JSON object per line.
                logging.getLogger("relaybox.server").info(line)
            else:
                click.echo(line, err=True)


def register(cli: click.Group) -> None:
    @cli.command("serve")
    @click.option("--host", help="Bind address (setting: host).")
    @click.option("--port", type=int, help="TCP port (setting: port).")
    @click.option("--workers", type=int, help="Server processes (setting: workers).")
    def serve_cmd(host: str | None, port: int | None, workers: int | None) -> None:
        """Run the server (initialises a missing data dir first)."""
        from relaybox.server.runner import StartError, serve

        settings = settings_for({"host": host, "port": port, "workers": workers},
                                check_writable=True)
        try:
            serve(settings, ServePrinter(settings))
        except StartError as exc:
            raise CliError(str(exc)) from None
