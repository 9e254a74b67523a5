"""The ``relaybox`` command line: a Click group; one module per command group."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from relaybox import __version__
from relaybox.cli.common import CliState, run_main


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--data-dir", type=click.Path(path_type=Path), envvar="RELAYBOX_DATA_DIR",
              default="relaybox-data", show_default=True, help="The relaybox data folder.")
@click.option("--debug", is_flag=True, help="Show tracebacks on errors.")
@click.version_option(__version__, prog_name="relaybox")
@click.pass_context
def cli(ctx: click.Context, data_dir: Path, debug: bool) -> None:
    """relaybox: a self-hosted relay for your own devices."""
    ctx.obj = CliState(data_dir=data_dir, debug=debug)


def _register() -> None:
    from relaybox.cli import config_cmd, init_cmd, migrate_cmd, serve_cmd

    for mod in (init_cmd, serve_cmd, migrate_cmd, config_cmd):
        mod.register(cli)
    # Command groups added by later modules register themselves here.
    import importlib

    for name in ("users", "devices", "pair", "backup", "ops", "client", "demo", "bench"):
        try:
            mod = importlib.import_module(f"relaybox.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"relaybox.cli.{name}":
                raise
            continue
        mod.register(cli)


_register()


def main(argv: list[str] | None = None) -> Any:
    return run_main(cli, argv if argv is not None else sys.argv[1:])
