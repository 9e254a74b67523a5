"""Shared CLI plumbing: state, settings loading, JSON output, one-line errors."""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import peewee as pw
from rich.console import Console

from relaybox.cli.safe import json_text, markup, visible
from relaybox.config import ConfigError, Settings, load_settings
from relaybox.errors import RelayError

if TYPE_CHECKING:
    from relaybox.services.notify import Change

out = Console()
err = Console(stderr=True)


@dataclass
class CliState:
    data_dir: Path
    debug: bool = False


class CliError(click.ClickException):
    """A failure reported as one line ``error: …`` with exit code 1."""

    exit_code = 1

    def show(self, file: Any = None) -> None:
        echo_error(self.message)


def echo_error(message: object) -> None:
    """``error: …`` on stderr, one line whatever the message holds (it may echo input:
    security.md "Terminal output and names")."""
    click.echo(f"error: {visible(message)}", err=True)


def state() -> CliState:
    return click.get_current_context().find_object(CliState)  # type: ignore[return-value]


def settings_for(overrides: Mapping[str, Any] | None = None, *,
                 check_writable: bool = False) -> Settings:
    st = state()
    try:
        return load_settings(st.data_dir, overrides=overrides, check_writable=check_writable)
    except ConfigError as exc:
        for line in exc.problems[:-1]:
            echo_error(line)
        raise CliError(exc.problems[-1]) from None


def emit_json(doc: Any) -> None:
    """Exactly one JSON document on stdout, ASCII only, so terminal-safe as well."""
    click.echo(json_text(doc, indent=2, default=str, ensure_ascii=True))


def open_db(settings: Settings, *, must_exist: bool = True) -> pw.Database:
    """Open (and bind) the database; with ``must_exist`` refuse an uninitialised data dir."""
    from relaybox.services.datadir import open_store

    try:
        return open_store(settings, must_exist=must_exist)
    except RelayError as exc:
        raise CliError(exc.detail) from None


def tell_servers(settings: Settings, change: Change) -> bool:
    """Tell running servers about ``change`` (services/notify.py); False when none could be
    told, with a warning when some may run but Redis refused."""
    from relaybox.services.notify import tell_running_servers

    told = tell_running_servers(settings, change)
    if told.problem is not None:
        err.print(f"[yellow]warning:[/] the change is saved, but running servers could not "
                  f"be told ({markup(told.problem)}); live sessions notice on their next "
                  "connect")
    return told.told


def run_main(group: click.Group, argv: list[str]) -> Any:
    """Run the group: expected failures become one line on stderr and exit 1."""
    debug = "--debug" in argv
    try:
        return group.main(args=argv, prog_name="relaybox", standalone_mode=False)
    except click.exceptions.Abort:
        echo_error("aborted")
        sys.exit(1)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except RelayError as exc:
        if debug:
            raise
        echo_error(exc.detail)
        sys.exit(1)
    except (pw.OperationalError, pw.InterfaceError, OSError) as exc:
        if debug:
            raise
        echo_error(exc)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:
        if debug:
            raise
        echo_error(f"{type(exc).__name__}: {exc} (run with --debug for details)")
        sys.exit(1)


def relay_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Report a RelayError from a command as one line ``error: …`` (exit 1), also under
    Click's own runner (tests), not only through ``run_main``."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except RelayError as exc:
            if state().debug:
                raise
            raise CliError(exc.detail) from None

    return wrapper


def server_urls(settings: Settings) -> list[str]:
    """Where a running server answers: the URLs its processes recorded, then base_url."""
    from relaybox.bus import live_servers

    urls = [str(s["url"]).rstrip("/") for s in live_servers(settings.run_dir) if s.get("url")]
    urls.append(settings.base_url)
    return list(dict.fromkeys(urls))


def print_table(table: Any) -> None:
    """A rich table on stdout; when piped, wide enough that nothing is cut off."""
    # Console.print caps width at the console's own (80 when piped), so use a wider one.
    (out if out.is_terminal else Console(width=200)).print(table)

