"""``relaybox client pair | send | tail | devices``: the reference device on the command line."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click
from rich.console import Console
from rich.table import Table

from relaybox.cli.common import CliError, emit_json
from relaybox.cli.safe import cell, json_text, markup, visible
from relaybox.protocol.encoding import check_name, is_valid_stream, uuid7

if TYPE_CHECKING:
    from relaybox.client import Event, Gap, Identity

# The SDK (websockets, httpx) is imported by the commands only, so that every other
# relaybox command starts fast. Same as relaybox.client.DEFAULT_IDENTITY_PATH.
DEFAULT_IDENTITY = "~/.config/relaybox/identity.json"
T = TypeVar("T")
PAIR_HINT = "pair this device first: relaybox client pair CODE --server URL --name NAME"


def _run(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine; SDK failures become one-line ``error:`` messages (exit 1)."""
    from relaybox.client import ClientError

    try:
        return asyncio.run(coro)
    except ClientError as exc:
        raise CliError(str(exc)) from None


class _StderrHandler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        # Notices quote what the server sent (close reasons, errors): shown inert.
        click.echo(visible(self.format(record)), err=True)


def _log_to_stderr(level: int) -> None:
    """SDK notices (reconnects, warnings) as plain lines on stderr; stdout stays data."""
    log = logging.getLogger("relaybox.client")
    for h in [h for h in log.handlers if isinstance(h, _StderrHandler)]:
        log.removeHandler(h)
    log.addHandler(_StderrHandler())
    log.setLevel(level)
    log.propagate = False


def _load(path: Path) -> Identity:
    from relaybox.client import Identity, IdentityError

    try:
        return Identity.load(path)
    except IdentityError as exc:
        missing = not path.expanduser().exists()
        raise CliError(f"{exc}; {PAIR_HINT}" if missing else str(exc)) from None


def identity_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--identity", "identity_path", type=click.Path(path_type=Path, dir_okay=False),
        envvar="RELAYBOX_IDENTITY", default=DEFAULT_IDENTITY, show_default=True,
        help="The device identity file (env RELAYBOX_IDENTITY).")(fn)


def json_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")(fn)


# -- pair ---------------------------------------------------------------------------------
async def _pair(server: str, code: str, name: str, path: Path) -> Identity:
    from relaybox.client import pair

    identity = await pair(server, code, name)
    return identity.save(path)


def _check_writable(path: Path, force: bool) -> None:
    # Checked before claiming: a claimed code whose key cannot be saved is lost.
    if path.exists() and not force:
        raise CliError(f"{path} already exists: this machine is already paired "
                       "(use --force to replace it, or --identity for another file)")
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not _writable(parent):
        raise CliError(f"cannot write the identity file {path}: {parent} is not writable")


def _writable(directory: Path) -> bool:
    import os

    return os.access(directory, os.W_OK | os.X_OK)


# -- send ---------------------------------------------------------------------------------
async def _send(identity: Identity, stream: str, body: Any, key: str | None,
                base_seq: int | None, ack_wait: float) -> dict[str, Any]:
    from relaybox.client import Client

    event_id = uuid7()
    async with Client(identity) as client:
        try:
            async with asyncio.timeout(ack_wait):
                seq = await client.publish(stream, body, key=key, base_seq=base_seq, id=event_id)
        except TimeoutError:
            why = f" ({client.last_error})" if client.last_error else ""
            raise CliError(f"no ack from {identity.server} within {ack_wait:g} s{why}; "
                           f"the event may still be stored (id {event_id})") from None
    return {"id": event_id, "stream": stream, "seq": seq}


def _body(arg: str, body_as: str) -> Any:
    """The event body: ``{"text": …}`` for text (the convention the web app shows and
    copies), or the JSON value given."""
    if arg == "-":
        data: bytes = sys.stdin.buffer.read()
        try:
            arg = data.decode("utf-8")
        except UnicodeDecodeError:
            raise CliError("standard input is not UTF-8 text") from None
        if body_as == "auto":
            body_as = "text"  # a clipboard holding JSON text is still text
    if body_as == "text":
        return {"text": arg}
    try:
        return json.loads(arg)
    except ValueError as exc:
        if body_as == "json":
            raise CliError(f"BODY is not valid JSON: {exc}") from None
    return {"text": arg}


# -- tail ---------------------------------------------------------------------------------
class _Names:
    """Device names of the user, for ``tail``: fetched once (REST), again when an unknown
    sender or a ``sys.devices`` notice shows the list changed."""

    def __init__(self, identity: Identity) -> None:
        self.identity = identity
        self.names: dict[str, str] = {}
        self._fresh = False

    async def refresh(self) -> None:
        from relaybox.client import ClientError, RestClient

        try:
            async with RestClient(self.identity) as api:
                devices = await api.devices()
        except ClientError:
            return  # names are a nicety: the short id stays
        self.names = {str(d.get("device_id")): str(d.get("name")) for d in devices}
        self._fresh = True

    async def name(self, item: Event) -> str:
        device = item.from_device
        if device is None:
            return "server"
        if item.stream == "sys.devices":
            self._fresh = False
        if device not in self.names and not self._fresh:
            await self.refresh()
        return self.names.get(device) or device[-8:]


def _show(console: Console, item: Event | Gap, sender_name: str = "") -> None:
    """One event as a line. Every field came over the wire from other devices, so each
    goes through ``markup`` (security.md "Terminal output and names")."""
    from relaybox.client import Gap

    if isinstance(item, Gap):
        console.print(f"[yellow]{markup(item.stream)}: events "
                      f"{markup(item.after + 1)}..{markup(item.next - 1)} "
                      "were removed by retention before this device received them[/]")
        return
    sender = markup(sender_name or (item.from_device or "server")[-8:])
    key = f" [dim]key[/]={markup(item.key)}" if item.key is not None else ""
    body = markup(json_text(item.body))
    console.print(f"[dim]{markup(item.ts)}[/] [bold cyan]{markup(item.stream)}[/]"
                  f"#{markup(item.seq)} [magenta]{sender}[/]{key} {body}", soft_wrap=True)


async def _tail(identity: Identity, streams: tuple[str, ...], as_json: bool,
                count: int | None, keep_state: bool) -> None:
    from relaybox.client import Client, Event

    console = Console(highlight=False)
    names = _Names(identity)
    state = identity.state_path if keep_state else None
    async with Client(identity, state_file=state) as client:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            # Stop after the event in hand: it was printed, so it is acked on close.
            loop.add_signal_handler(sig, client.stop)
        try:
            seen = 0
            async for item in client.events(streams or None):
                if as_json:
                    sys.stdout.write(json_text(item.to_json()) + "\n")
                    sys.stdout.flush()
                else:
                    _show(console, item,
                          await names.name(item) if isinstance(item, Event) else "")
                if isinstance(item, Event):
                    seen += 1
                    if count is not None and seen >= count:
                        break
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)


# -- devices ------------------------------------------------------------------------------
async def _devices(identity: Identity) -> list[dict[str, Any]]:
    from relaybox.client import RestClient

    async with RestClient(identity) as api:
        return await api.devices()


def _devices_table(devices: list[dict[str, Any]], me: str) -> Table:
    table = Table(title="devices")
    for col in ("name", "device_id", "online", "last seen", "revoked"):
        table.add_column(col)
    for d in devices:
        # The server's answer, names of other devices included: cells are Text.
        name = cell(d.get("name"))
        if d.get("device_id") == me:
            name += cell(" (this device)", "bold")
        table.add_row(name, cell(d.get("device_id")),
                      "[green]yes[/]" if d.get("online") else "no",
                      cell(d.get("last_seen_at") or "-"),
                      "[red]yes[/]" if d.get("revoked") else "no")
    return table


def register(cli: click.Group) -> None:
    @cli.group("client")
    def client_group() -> None:
        """Act as a device: pair, publish, follow events, list devices.

        The identity file (default ~/.config/relaybox/identity.json, or
        --identity / RELAYBOX_IDENTITY) holds this device's private key.
        """

    @client_group.command("pair")
    @click.argument("code")
    @click.option("--server", required=True, help="The server's URL, e.g. https://relay.example")
    @click.option("--name", required=True, help="A name for this device, e.g. laptop.")
    @click.option("--force", is_flag=True, help="Replace an existing identity file.")
    @identity_option
    @json_option
    def pair_cmd(code: str, server: str, name: str, force: bool, identity_path: Path,
                 as_json: bool) -> None:
        """Claim a pairing code and save this device's identity (mode 0600)."""
        try:
            check_name(name)  # the server's rule (api.md Devices), before the code is used
        except ValueError as exc:
            raise CliError(f"--name: {exc}") from None
        path = identity_path.expanduser()
        _check_writable(path, force)
        ident = _run(_pair(server, code, name, path))
        doc = {"device_id": ident.device_id, "user_id": ident.user_id,
               "server_id": ident.server_id, "server": ident.server, "name": ident.name,
               "identity": str(path)}
        if as_json:
            emit_json(doc)
            return
        Console(highlight=False).print(
            f"paired [bold]{markup(name)}[/] as device {markup(ident.device_id)} with "
            f"{markup(ident.server)}\nidentity saved to {markup(path)} "
            "(keep it private: it holds the device key)")

    @client_group.command("send")
    @click.argument("stream")
    @click.argument("body_arg", metavar="BODY")
    @click.option("--as", "body_as", type=click.Choice(["auto", "text", "json"]),
                  default="auto", show_default=True,
                  help="text: send {\"text\": BODY}; json: BODY is JSON; auto: JSON if BODY "
                       "parses as JSON, else text. BODY '-' reads standard input (as text "
                       "unless --as json).")
    @click.option("--key", help="Event key (compare-and-set is per key).")
    @click.option("--base-seq", type=click.IntRange(min=0),
                  help="Store only if the key (or stream) is still at this seq.")
    @click.option("--timeout", type=click.FloatRange(min=0.1), default=30.0, show_default=True,
                  help="Seconds to wait for the server's ack.")
    @identity_option
    @json_option
    def send_cmd(stream: str, body_arg: str, body_as: str, key: str | None,
                 base_seq: int | None, timeout: float, identity_path: Path,
                 as_json: bool) -> None:
        """Publish one event and print its seq once the server stored it.

        BODY is text or JSON (see --as); '-' reads it from standard input, so
        'pbpaste | relaybox client send clipboard -' sends the clipboard.
        """
        body = _body(body_arg, body_as)
        ident = _load(identity_path)
        _log_to_stderr(logging.WARNING)
        doc = _run(_send(ident, stream, body, key, base_seq, timeout))
        if as_json:
            emit_json(doc)
        else:
            click.echo(visible(doc["seq"]))

    @client_group.command("tail")
    @click.argument("streams", nargs=-1, metavar="[STREAM]...")
    @click.option("--count", type=click.IntRange(min=1),
                  help="Exit after this many events (default: run until interrupted).")
    @click.option("--no-state", is_flag=True,
                  help="Do not keep positions next to the identity file.")
    @identity_option
    @json_option
    def tail_cmd(streams: tuple[str, ...], count: int | None, no_state: bool,
                 identity_path: Path, as_json: bool) -> None:
        """Print events as they arrive (all streams, or only STREAMs), acking them.

        Reconnects with backoff. Events already printed by an earlier run are
        not printed again (positions are kept next to the identity file).
        With --json, one JSON object per line.
        """
        bad = [s for s in streams if not is_valid_stream(s)]
        if bad:
            raise CliError(f"not a valid stream name: {bad[0]!r}")
        ident = _load(identity_path)
        _log_to_stderr(logging.INFO)
        _run(_tail(ident, streams, as_json, count, not no_state))

    @client_group.command("devices")
    @identity_option
    @json_option
    def devices_cmd(identity_path: Path, as_json: bool) -> None:
        """List the devices of this device's user."""
        ident = _load(identity_path)
        devices = _run(_devices(ident))
        if as_json:
            emit_json(devices)
        else:
            Console().print(_devices_table(devices, ident.device_id))
