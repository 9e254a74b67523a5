"""Gateway test helpers: a buffering protocol client, raw handshakes, database access."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import peewee as pw
import websockets

from relaybox.client.handshake import run_handshake
from relaybox.protocol.client import ClientHandshake, HandshakeRefused, SendAuth
from relaybox.protocol.encoding import random_nonce, uuid4
from tests.support import DeviceKey, Gw, Server

Frame = dict[str, Any]
_refs = itertools.count(1)


class Client:
    """A device session: frames that a wait skips are kept for later waits, never lost."""

    def __init__(self, gw: Gw, dev: DeviceKey) -> None:
        self.gw = gw
        self.dev = dev
        self.buf: list[Frame] = []

    @classmethod
    async def connect(cls, server: Server, dev: DeviceKey, **kw: Any) -> Client:
        # max_queue=None: the client never stops reading by itself (frames a test has not
        # looked at yet must not hold back pongs or close frames).
        kw.setdefault("max_queue", None)
        gw = await Gw.connect(server, dev, **kw)
        assert gw.welcome["type"] == "welcome", gw.welcome
        return cls(gw, dev)

    @property
    def welcome(self) -> Frame:
        return self.gw.welcome

    @property
    def ws(self) -> Any:
        return self.gw.ws

    async def send(self, obj: Any) -> None:
        if isinstance(obj, bytes):
            await self.ws.send(obj)  # a binary frame
        else:
            await self.gw.send(obj)

    async def expect(self, pred: Callable[[Frame], bool], timeout: float = 15) -> Frame:
        """The first frame (buffered or new) matching ``pred``; others stay buffered."""
        for i, f in enumerate(self.buf):
            if pred(f):
                return self.buf.pop(i)
        deadline = time.monotonic() + timeout
        while True:
            f = await self.gw.recv(max(0.01, deadline - time.monotonic()))
            if pred(f):
                return f
            self.buf.append(f)

    async def reply_to(self, pid: str, timeout: float = 15) -> Frame:
        """The ack or nack of the publish ``pid``."""
        return await self.expect(lambda f: f["type"] in ("ack", "nack") and f.get("id") == pid,
                                 timeout)

    async def expect_type(self, *types: str, timeout: float = 15) -> Frame:
        return await self.expect(lambda f: f["type"] in types, timeout)

    async def barrier(self, timeout: float = 15) -> list[Frame]:
        """Ping and wait for the pong: every frame the server queued before it is buffered.

        Returns (and removes from the buffer) all frames received before the pong.
        """
        ref = f"barrier-{next(_refs)}"
        await self.send({"type": "ping", "ref": ref})
        await self.expect(lambda f: f["type"] == "pong" and f["ref"] == ref, timeout)
        out, self.buf = self.buf, []
        return out

    async def publish(self, stream: str, body: Any, *, id: str | None = None,
                      **extra: Any) -> Frame:
        """Publish and return the ack or nack for it."""
        pid = id or uuid4()
        await self.send({"type": "publish", "id": pid, "stream": stream, "body": body, **extra})
        return await self.reply_to(pid)

    async def publish_many(self, stream: str, bodies: list[Any],
                           ids: list[str] | None = None) -> list[Frame]:
        """Pipeline many publishes; return their acks in the order they were sent."""
        ids = ids or [uuid4() for _ in bodies]
        pending = set(ids)
        replies: dict[str, Frame] = {}

        async def sender() -> None:
            for pid, body in zip(ids, bodies, strict=True):
                await self.send({"type": "publish", "id": pid, "stream": stream, "body": body})

        async def receiver() -> None:
            while pending:
                f = await self.expect(lambda f: f["type"] in ("ack", "nack")
                                      and f.get("id") in pending)
                pending.discard(f["id"])
                replies[f["id"]] = f

        await asyncio.gather(sender(), receiver())
        out = [replies[i] for i in ids]
        assert all(f["type"] == "ack" for f in out), [f for f in out if f["type"] != "ack"][:3]
        return out

    async def events(self, n: int, stream: str | None = None, *, ack: bool = True,
                     timeout: float = 30) -> list[Frame]:
        """Collect ``n`` events (of ``stream``, or any), acking every event when ``ack``."""
        out: list[Frame] = []
        deadline = time.monotonic() + timeout
        while len(out) < n:
            f = await self.expect(lambda f: f["type"] == "event", deadline - time.monotonic())
            if ack:
                await self.ack(f["stream"], f["seq"])
            if stream is None or f["stream"] == stream:
                out.append(f)
        return out

    async def ack(self, stream: str, seq: int) -> None:
        await self.send({"type": "ack", "stream": stream, "seq": seq})

    async def drain_catch_up(self) -> Frame:
        """Ack every catch-up event until `synced`; return the synced frame."""
        while True:
            f = await self.expect_type("event", "synced")
            if f["type"] == "synced":
                return f
            await self.ack(f["stream"], f["seq"])

    async def close(self) -> None:
        await self.gw.close()

    async def closed_code(self, timeout: float = 10) -> int | None:
        return await self.gw.closed_code(timeout)


async def raw(server: Server, source: str = "127.0.0.1") -> Any:
    """A bare WebSocket to the gateway (no handshake), from the loopback address ``source``.

    Limits count per client address: 127.0.0.2, 127.0.0.3 … are separate clients.
    """
    return await websockets.connect(server.ws_url, max_size=None, compression=None,
                                    open_timeout=10, local_addr=(source, 0))


async def recv_json(ws: Any, timeout: float = 10) -> Frame:
    data = await asyncio.wait_for(ws.recv(), timeout)
    return json.loads(data)  # type: ignore[no-any-return]


async def close_code(ws: Any, timeout: float = 10) -> int | None:
    """Read until the server closes; the close code it sent (None if it did not close)."""
    with contextlib.suppress(Exception):
        async with asyncio.timeout(timeout):
            while True:
                await ws.recv()
    return ws.close_code  # type: ignore[no-any-return]


async def connect_synced(server: Server, dev: DeviceKey) -> Client:
    """A connected client whose catch-up is done (``synced`` received)."""
    c = await Client.connect(server, dev)
    await c.drain_catch_up()
    return c


async def publish_on_both(first: Server, second: Server, n: int) -> str:
    """A device on each server publishes ``n`` events to one stream at once, while a
    reader on each server receives them live. Asserts one gap-free seq (no duplicate,
    none skipped) delivered in the same order on both; returns the user's id."""
    a, b, r1, r2 = users(first, 4)[0]
    ca, cb = await connect_synced(first, a), await connect_synced(second, b)
    readers = [await connect_synced(first, r1), await connect_synced(second, r2)]
    acks_a, acks_b, got1, got2 = await asyncio.gather(
        ca.publish_many("shared", [f"a{i}" for i in range(n)]),
        cb.publish_many("shared", [f"b{i}" for i in range(n)]),
        readers[0].events(2 * n, "shared"), readers[1].events(2 * n, "shared"))
    assert sorted(f["seq"] for f in acks_a + acks_b) == list(range(1, 2 * n + 1))
    by_seq = {f["seq"]: f["id"] for f in acks_a + acks_b}
    for got in (got1, got2):  # both servers deliver the one order
        assert [e["seq"] for e in got] == list(range(1, 2 * n + 1))
        assert all(by_seq[e["seq"]] == e["id"] for e in got)
    for c in (ca, cb, *readers):
        await c.close()
    return a.user_id


async def until_close(ws: Any, timeout: float = 10) -> tuple[list[Frame], int | None]:
    """Every text frame until the server closes, and its close code."""
    frames: list[Frame] = []
    with contextlib.suppress(Exception):
        async with asyncio.timeout(timeout):
            while True:
                data = await ws.recv()
                frames.append(json.loads(data) if isinstance(data, str) else {"binary": data})
    return frames, ws.close_code


def device_token(server: Server, dev: DeviceKey) -> str:
    """A REST access token of ``dev`` (the request writes to the database)."""
    from tests.api.helpers import signed_request

    server_id = httpx.get(server.url + "/api/v1/status", timeout=5).json()["server_id"]
    r = httpx.post(server.url + "/api/v1/auth/token", json=signed_request(server_id, dev),
                   timeout=10)
    assert r.status_code == 200, r.text
    return str(r.json()["access_token"])


async def until_registered(server: Server, token: str, device_id: str,
                           timeout: float = 10) -> None:
    """Wait until the server holds a session of ``device_id`` (its key checked, welcomed
    or not): ``online`` in the REST device list, read with a ``device_token`` of a
    device of the same user. Only reads: it works while the database is locked."""
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(base_url=server.url + "/api/v1", timeout=5,
                                 headers={"Authorization": f"Bearer {token}"}) as http:
        while True:
            r = await http.get("/devices")
            assert r.status_code == 200, r.text
            if any(d["device_id"] == device_id and d["online"] for d in r.json()):
                return
            assert time.monotonic() < deadline, f"no session of {device_id}"
            await asyncio.sleep(0.02)


def hello(device_id: str, nonce: str | None = None, protocol: int = 1) -> Frame:
    return {"type": "hello", "protocol": protocol, "device_id": device_id,
            "nonce": nonce or random_nonce()}


async def handshake_with(server: Server, device_id: str, sign: Callable[[bytes], bytes],
                         source: str = "127.0.0.1") -> tuple[Any, Frame, Frame]:
    """hello → challenge → auth signed by ``sign``; returns (ws, challenge, answer)."""
    ws = await raw(server, source)
    hs = ClientHandshake(device_id, sign, strict=True)
    try:
        answer = await run_handshake(hs, ws.send, lambda: asyncio.wait_for(ws.recv(), 10))
    except HandshakeRefused as exc:
        answer = exc.refused.frame  # auth_failed, revoked …: what the test looks at
    assert hs.challenge is not None, answer
    return ws, hs.challenge, answer


async def send_auth(ws: Any, dev: DeviceKey) -> ClientHandshake:
    """hello → challenge → auth of ``dev`` on ``ws``, without reading the answer."""
    hs = ClientHandshake(dev.device_id, dev.key, strict=True)
    await ws.send(hs.hello())
    auth = hs.receive(await recv_json(ws))
    assert isinstance(auth, SendAuth), auth
    await ws.send(auth.frame)
    return hs


def env(**settings: Any) -> dict[str, str]:
    """RELAYBOX_* environment for settings given by attribute name (gateway_window=8)."""
    from relaybox.config import SETTINGS_TABLE

    names = {row.attr: row.env for row in SETTINGS_TABLE}
    return {names.get(k, ("RELAYBOX_" + k).upper()): str(v) for k, v in settings.items()}


@contextlib.contextmanager
def database(server: Server) -> Iterator[pw.Database]:
    """The server's database, opened in the test process (models bound to it)."""
    from relaybox.config import load_settings
    from relaybox.store.db import open_database

    db = open_database(load_settings(server.data_dir, env={}))
    db.connect(reuse_if_open=True)
    try:
        yield db
    finally:
        db.close()


def announce(server: Server, change: Any) -> None:
    """Tell running servers about a change made in the test process, as the CLI does."""
    from relaybox.bus import SyncBus, redis_url_for
    from relaybox.services.notify import Notifier

    url = redis_url_for("", server.data_dir / "run")
    assert url is not None, "no server is running on this data dir"
    bus = SyncBus(url)
    try:
        Notifier(bus).notify_blocking(change)
    finally:
        bus.close()


def assert_clean_log(server: Server) -> None:
    """protocol.md §6: no server bug shows in the log (no traceback, no failed session)."""
    text = server.log()
    assert "Traceback" not in text, text[-4000:]


def users(server: Server, *counts: int) -> list[list[DeviceKey]]:
    """Fresh users (unique names) with ``counts[i]`` devices each, added while it runs."""
    import nacl.signing

    from relaybox.services.devices import add_device
    from relaybox.services.users import add_user

    out = []
    with database(server) as db:
        for n in counts:
            user = add_user(db, f"u{uuid4()[:12]}")
            keys = []
            for i in range(n):
                sk = nacl.signing.SigningKey.generate()
                dev, _ = add_device(db, user, f"{user.name}-dev{i}", bytes(sk.verify_key))
                keys.append(DeviceKey(dev.id, user.id, sk))
            out.append(keys)
    return out


def revoke(server: Server, dev: DeviceKey) -> None:
    """Revoke a device as the CLI does: on the shared database, then announce it."""
    from relaybox.services.devices import revoke_device
    from relaybox.store.models import Device

    with database(server) as db:
        change = revoke_device(db, Device.get_by_id(dev.device_id))
    announce(server, change)
