"""Client fixtures: a real server per module, devices as SDK identities, a cuttable TCP proxy."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import httpx
import pytest

from relaybox.client import Client, Identity
from tests.support import DeviceKey, Server, free_port, kill_embedded_redis, seed

_names = itertools.count(1)


_server_ids: dict[Path, str] = {}


def server_id_of(server: Server) -> str:
    if server.data_dir not in _server_ids:
        doc = httpx.get(server.url + "/api/v1/status", timeout=5).json()
        _server_ids[server.data_dir] = doc["server_id"]
    return _server_ids[server.data_dir]


def identity_for(server: Server, dev: DeviceKey, *, port: int | None = None) -> Identity:
    """An SDK identity for a seeded device (``port``: reach the server through a proxy)."""
    server_id = server_id_of(server)
    return Identity(server=f"http://127.0.0.1:{port or server.port}", server_id=server_id,
                    device_id=dev.device_id, user_id=dev.user_id, private_key=bytes(dev.key))


# Users are made before the server starts: writing to its SQLite file from the test
# process while it runs can fail with "database is locked" (see the report).
_pools: dict[Path, list[tuple[str, list[DeviceKey]]]] = {}
DEVICES_PER_USER = 2


def start_server(data_dir: Path, users: int, **env: str) -> Server:
    keys = seed(data_dir, {f"u{next(_names)}": DEVICES_PER_USER for _ in range(users)})
    _pools[data_dir] = list(keys.items())
    srv = Server(data_dir, free_port(), env)
    srv.start()
    return srv


def new_devices(server: Server, n: int = 2) -> list[Identity]:
    """``n`` devices of a user no other test uses."""
    _, devs = _pools[server.data_dir].pop()
    return [identity_for(server, d) for d in devs[:n]]


def new_user(server: Server) -> str:
    """The name of a user no other test uses."""
    return _pools[server.data_dir].pop()[0]


def stop_server(srv: Server) -> None:
    # protocol.md §6: what the tests did must not show a server bug in its log.
    log = srv.log()
    srv.stop()
    srv.kill()
    kill_embedded_redis(srv.data_dir)
    assert "Traceback" not in log, log[-4000:]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One server shared by a module; every test uses users of its own."""
    srv = start_server(tmp_path_factory.mktemp("client") / "data", users=16)
    yield srv
    stop_server(srv)


@pytest.fixture
def own_server(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Server]:
    """A server for one test (it may be killed and restarted).

    Environment settings come by indirect parametrization: ``{"RELAYBOX_…": "…"}``.
    """
    env = getattr(request, "param", {})
    srv = start_server(tmp_path / "data", users=1, **env)
    yield srv
    stop_server(srv)


class Proxy:
    """A TCP relay in front of the server that a test can cut, or make drop server bytes."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self.connections = 0
        self.mute_downstream = False  # drop what the server sends (acks, events, pings)
        self._links: list[asyncio.StreamWriter] = []
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        self._links += [writer, up_writer]

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter,
                       downstream: bool) -> None:
            with contextlib.suppress(OSError, asyncio.IncompleteReadError):
                while data := await src.read(65536):
                    if downstream and self.mute_downstream:
                        continue
                    dst.write(data)
                    await dst.drain()
            dst.transport.abort()

        await asyncio.gather(pipe(reader, up_writer, False), pipe(up_reader, writer, True))

    def cut(self) -> None:
        """Drop every open connection at once (like a network failure)."""
        for w in self._links:
            w.transport.abort()
        self._links.clear()

    async def close(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()


def fast_client(identity: Identity) -> Client:
    """A client that retries quickly, for tests that break connections."""
    return Client(identity, backoff_initial=0.05, backoff_max=0.3)


@pytest.fixture
async def make_proxy() -> AsyncIterator[Callable[[int], Proxy]]:
    proxies: list[Proxy] = []

    def make(port: int) -> Proxy:
        p = Proxy(port)
        proxies.append(p)
        return p

    yield make
    for p in proxies:
        await p.close()
