"""Hostile peers on the gateway: floods that never read, deep JSON, pipelined handshakes,
auth timing (docs/security.md Threat model, Limits)."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import struct
import time
from typing import Any

import httpx
import psutil
import pytest
import websockets

from relaybox.protocol.encoding import b64url_encode
from tests.gateway.helpers import Client, connect_synced, handshake_with, hello, users
from tests.plugin import MakeServer
from tests.support import Server

MiB = 1024 * 1024


# -- a raw WebSocket client: exact bytes, several frames in one write ------------------------
def frame(opcode: int, payload: bytes) -> bytes:
    """One masked client frame."""
    mask = os.urandom(4)
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
    elif n < 65536:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return head + mask + masked


def text(obj: Any) -> bytes:
    return frame(0x1, json.dumps(obj).encode())


def upgrade(server: Server, source: str = "127.0.0.1") -> socket.socket:
    """A socket past the WebSocket upgrade of the gateway (nothing else sent)."""
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10,
                                    source_address=(source, 0))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall((f"GET /api/v1/gateway HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
                  "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                  f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(1)
        assert chunk, "closed during the upgrade"
        head += chunk
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock


def read_frames(sock: socket.socket, timeout: float) -> tuple[list[dict[str, Any]], int | None]:
    """Server frames until it closes (text frames parsed; the close code)."""
    sock.settimeout(timeout)
    buf = b""
    frames: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        while len(buf) >= 2:
            op, n = buf[0] & 0x0F, buf[1] & 0x7F
            at = 2
            if n == 126:
                if len(buf) < 4:
                    break
                n, at = struct.unpack("!H", buf[2:4])[0], 4
            elif n == 127:
                if len(buf) < 10:
                    break
                n, at = struct.unpack("!Q", buf[2:10])[0], 10
            if len(buf) < at + n:
                break
            payload, buf = buf[at:at + n], buf[at + n:]
            if op == 0x1:
                frames.append(json.loads(payload))
            elif op == 0x8:
                return frames, struct.unpack("!H", payload[:2])[0] if payload else None
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            break
        if not chunk:
            break
        buf += chunk
    return frames, None


def rss(server: Server) -> int:
    assert server.proc is not None
    return int(psutil.Process(server.proc.pid).memory_info().rss)


def flood(sock: socket.socket, blob: bytes, most: int) -> int:
    """Write ``blob`` again and again, never reading, until the server stops reading (a
    write blocks for 3 s, or the server closed) or ``most`` bytes went out; the bytes
    sent."""
    sock.settimeout(3)
    sent = 0
    while sent < most:
        try:
            sock.sendall(blob)
        except (TimeoutError, ConnectionError):  # stalled, or closed by the server
            break
        sent += len(blob)
    return sent


def authenticate(sock: socket.socket, dev: Any) -> None:
    """The handshake of ``dev`` over a bare socket, with the protocol core."""
    from relaybox.protocol.client import ClientHandshake, SendAuth, Welcomed

    hs = ClientHandshake(dev.device_id, dev.key, strict=True)
    sock.sendall(frame(0x1, hs.hello().encode()))
    (ch,), _ = read_until(sock, 1)
    auth = hs.receive(ch)
    assert isinstance(auth, SendAuth), ch
    sock.sendall(frame(0x1, auth.frame.encode()))
    (welcome,), _ = read_until(sock, 1)
    assert isinstance(hs.receive(welcome), Welcomed), welcome


def read_until(sock: socket.socket, count: int) -> tuple[list[dict[str, Any]], bytes]:
    """Exactly ``count`` text frames (no close expected)."""
    sock.settimeout(10)
    buf = b""
    out: list[dict[str, Any]] = []
    while len(out) < count:
        chunk = sock.recv(1)
        assert chunk, "closed"
        buf += chunk
        if len(buf) >= 2:
            n, at = buf[1] & 0x7F, 2
            if n == 126 and len(buf) >= 4:
                n, at = struct.unpack("!H", buf[2:4])[0], 4
            elif n >= 126:
                continue
            if len(buf) == at + n:
                out.append(json.loads(buf[at:]))
                buf = b""
    return out, buf


# -- finding: unbounded output per connection ------------------------------------------------
def test_a_device_that_pings_and_never_reads_cannot_grow_server_memory(
        module_servers: MakeServer) -> None:
    """Finding 2 (after auth): `ping` with a 120 KB ref in a loop, never reading. The server
    stops reading at the outbox bound, so the flood stalls and memory stays flat."""
    srv = module_servers(gateway_max_outbox_bytes=262144)
    (dev,) = users(srv, 1)[0]
    sock = upgrade(srv)
    authenticate(sock, dev)
    before = rss(srv)
    ping = text({"type": "ping", "ref": "x" * 120_000})
    sent = flood(sock, ping * 8, 400 * MiB)
    grown = rss(srv) - before
    sock.close()
    assert sent < 400 * MiB, "the server never stopped reading"
    assert grown < 48 * MiB, f"server memory grew by {grown / MiB:.0f} MiB"


def test_websocket_pings_before_auth_cannot_grow_server_memory(
        module_servers: MakeServer) -> None:
    """Finding 2 (before auth): WebSocket ping frames, never reading the pongs."""
    srv = module_servers(gateway_max_outbox_bytes=262144)
    sock = upgrade(srv, "127.0.0.2")
    before = rss(srv)
    pings = b"".join(frame(0x9, b"p" * 125) for _ in range(8000))  # ~1 MiB
    sent = flood(sock, pings, 400 * MiB)
    grown = rss(srv) - before
    sock.close()
    assert sent < 400 * MiB, "the server never stopped reading"
    assert grown < 48 * MiB, f"server memory grew by {grown / MiB:.0f} MiB"


async def test_delivery_waits_for_a_slow_reader_and_loses_nothing(
        module_servers: MakeServer) -> None:
    """Past the outbox bound live delivery holds back (like a full window) and resumes
    from storage once the device reads: every event arrives, in order, no gap."""
    srv = module_servers(gateway_max_outbox_bytes=65536)
    a, b = users(srv, 2)[0]
    ca = await connect_synced(srv, a)
    # max_queue=1: b's client stops reading its socket while a publishes, so that more
    # than the socket buffers hold waits on the server's side.
    cb = await Client.connect(srv, b, max_queue=1)
    await cb.drain_catch_up()
    n = 300
    bodies = ["z" * 50_000 + str(i) for i in range(n)]
    acks = await ca.publish_many("bulk", bodies)
    assert [f["seq"] for f in acks] == list(range(1, n + 1))
    got = await cb.events(n, "bulk", timeout=60)
    assert [e["seq"] for e in got] == list(range(1, n + 1))
    assert [e["body"] for e in got] == bodies
    await ca.close()
    await cb.close()


# -- finding: deep JSON aborted the transport ---------------------------------------------------
async def test_a_ping_ref_nested_1000_deep_gets_an_error_and_the_session_lives(
        module_servers: MakeServer) -> None:
    """Finding 11: the ref cannot be echoed; a non-fatal `error`, replies still flow."""
    srv = module_servers()
    (dev,) = users(srv, 1)[0]
    c = await connect_synced(srv, dev)
    deep = "[" * 1000 + "]" * 1000
    await c.gw.send('{"type":"ping","ref":' + deep + "}")
    err = await c.gw.recv_type("error")
    assert err["code"] == "invalid"
    await c.gw.send({"type": "ping", "ref": "after"})
    assert (await c.gw.recv_type("pong"))["ref"] == "after"
    # A publish body as deep is a nack, not a lost connection.
    await c.gw.send('{"type":"publish","id":"018f0000-0000-7000-8000-000000000001",'
                    '"stream":"s","body":' + deep + "}")
    nack = await c.gw.recv_type("nack")
    assert nack["code"] == "invalid"
    await c.close()


# -- finding: a frame in the same read as hello was dropped -----------------------------------
@pytest.mark.parametrize("proxies", [0, 1], ids=["direct", "through-sanic"])
def test_a_frame_in_the_same_read_as_hello_is_handled(module_servers: MakeServer,
                                                      proxies: int) -> None:
    """Finding 13: `hello` and a second frame in one TCP write. The second frame is handled
    in turn (here: a ping where `auth` is due, a protocol violation, 4400) instead of
    lying unread until the handshake times out (4408)."""
    srv = module_servers(gateway_handshake_timeout_s=60, proxies_count=proxies)
    (dev,) = users(srv, 1)[0]
    sock = upgrade(srv, "127.0.0.4")
    sock.sendall(text(hello(dev.device_id)) + text({"type": "ping", "ref": 1}))
    frames, code = read_frames(sock, 15)
    sock.close()
    assert [f["type"] for f in frames][:1] == ["challenge"]
    assert code == 4400


@pytest.mark.parametrize("proxies", [0, 1], ids=["direct", "through-sanic"])
def test_an_auth_sent_with_hello_is_checked(module_servers: MakeServer, proxies: int) -> None:
    """Finding 13: an `auth` pipelined behind `hello` (it cannot sign the challenge it has
    not seen) is checked like any other and fails with 4401, at once."""
    srv = module_servers(gateway_handshake_timeout_s=60, proxies_count=proxies)
    (dev,) = users(srv, 1)[0]
    sock = upgrade(srv, "127.0.0.5")
    bogus = b64url_encode(dev.key.sign(b"not the challenge").signature)
    sock.sendall(text(hello(dev.device_id)) + text({"type": "auth", "signature": bogus}))
    frames, code = read_frames(sock, 15)
    sock.close()
    assert [f.get("code") for f in frames if f["type"] == "error"] == ["auth_failed"]
    assert code == 4401


# -- finding: auth timing ---------------------------------------------------------------------
def _lookups(srv: Server) -> dict[str, float]:
    text_ = httpx.get(srv.url + "/metrics", timeout=5).text
    out = {"cache": 0.0, "database": 0.0}
    for line in text_.splitlines():
        if line.startswith("relaybox_device_key_lookups_total{"):
            source = line.split('source="')[1].split('"')[0]
            out[source] = float(line.rsplit(" ", 1)[1])
    return out


async def test_a_failed_auth_does_the_same_work_for_cached_and_unknown_devices(
        module_servers: MakeServer) -> None:
    """Finding 14: a device whose key this process keeps was answered from the cache when
    its signature failed, faster than an unknown id. Every failure now takes the database
    path, whatever the device."""
    srv = module_servers()
    (dev,) = users(srv, 1)[0]
    c = await connect_synced(srv, dev)  # its key is now cached
    await c.close()
    start = _lookups(srv)
    ws, _, answer = await handshake_with(srv, dev.device_id, lambda m: b"\x01" * 64,
                                         source="127.0.0.6")
    assert answer["code"] == "auth_failed"
    await ws.close()
    after_cached = _lookups(srv)
    assert after_cached["database"] - start["database"] == 1
    assert after_cached["cache"] == start["cache"]
    unknown = "018f0000-0000-7000-8000-00000000beef"
    ws, _, answer = await handshake_with(srv, unknown, lambda m: b"\x01" * 64,
                                         source="127.0.0.7")
    assert answer["code"] == "auth_failed"
    await ws.close()
    after_unknown = _lookups(srv)
    assert after_unknown["database"] - after_cached["database"] == 1
    # The cached device still authenticates from the cache.
    c = await connect_synced(srv, dev)
    await c.close()
    assert _lookups(srv)["cache"] == after_unknown["cache"] + 1


# -- finding: connections were cheap to hold -----------------------------------------------
def _closed_within(sock: socket.socket, seconds: float, trickle: bytes = b"") -> bool:
    """True if the server closes ``sock`` within ``seconds``; meanwhile send ``trickle``
    one byte every 0.2 s (a slow-header attack) when given."""
    deadline = time.monotonic() + seconds
    i = 0
    sock.settimeout(0.2)
    while time.monotonic() < deadline:
        try:
            data = sock.recv(4096)
            if not data:
                return True
            if b"408" in data.split(b"\r\n", 1)[0]:
                return True
        except TimeoutError:
            pass
        except OSError:
            return True
        if trickle:
            try:
                sock.send(trickle[i % len(trickle):i % len(trickle) + 1])
            except OSError:
                return True
            i += 1
    return False


def test_a_silent_connection_is_closed_after_the_header_timeout(
        module_servers: MakeServer) -> None:
    """Finding 5: idle sockets stayed ~120 s."""
    srv = module_servers(header_timeout_s=1)
    sock = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
    assert _closed_within(sock, 8)
    sock.close()


def test_a_trickled_request_head_is_closed_after_the_header_timeout(
        module_servers: MakeServer) -> None:
    """Finding 5: a header trickled one byte at a time was held indefinitely (each byte
    restarted the request timeout)."""
    srv = module_servers(header_timeout_s=1)
    sock = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
    sock.sendall(b"GET /api/v1/status HTTP/1.1\r\n")
    assert _closed_within(sock, 8, trickle=b"X-Slow: aaaaaaaaaaaaaaaa\r\n")
    sock.close()


def test_an_idle_keep_alive_connection_is_closed(module_servers: MakeServer) -> None:
    """Finding 5: an HTTP connection kept alive after its request is closed after
    limits.keep_alive_s."""
    srv = module_servers(keep_alive_s=1)
    sock = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
    sock.sendall(f"GET /api/v1/status HTTP/1.1\r\nHost: 127.0.0.1:{srv.port}\r\n\r\n".encode())
    sock.settimeout(5)
    assert sock.recv(4096).startswith(b"HTTP/1.1 ")
    assert _closed_within(sock, 8)
    sock.close()


def test_connections_per_address_are_capped(module_servers: MakeServer) -> None:
    """Finding 5: no per-address cap. Past limits.connections_per_address a connection is
    answered 503 and closed; other addresses are still served, and a freed slot is
    usable again."""
    srv = module_servers(connections_per_address=4, header_timeout_s=30)
    held = [socket.create_connection(("127.0.0.1", srv.port), timeout=5,
                                     source_address=("127.0.0.8", 0)) for _ in range(4)]
    extra = socket.create_connection(("127.0.0.1", srv.port), timeout=5,
                                     source_address=("127.0.0.8", 0))
    extra.settimeout(5)
    answer = extra.recv(4096)
    extra.close()
    assert answer.startswith(b"HTTP/1.1 503"), answer
    assert b"too_many_connections" in answer
    other = httpx.get(srv.url + "/api/v1/status", timeout=5)
    assert other.status_code == 200
    held.pop().close()
    # The slot frees when the server sees the close: retry until it has.
    deadline = time.monotonic() + 10
    while True:
        again = socket.create_connection(("127.0.0.1", srv.port), timeout=5,
                                         source_address=("127.0.0.8", 0))
        again.sendall(b"GET /api/v1/status HTTP/1.1\r\nHost: x\r\n\r\n")
        again.settimeout(5)
        status = again.recv(4096).split(b"\r\n", 1)[0]
        again.close()
        if b"200" in status or time.monotonic() > deadline:
            break
    assert b"200" in status
    for s in held:
        s.close()


async def test_the_gateway_still_works_with_websockets_clients(
        module_servers: MakeServer) -> None:
    """The limits leave ordinary clients alone: a library client connects, publishes and
    receives under the default settings."""
    srv = module_servers()
    a, b = users(srv, 2)[0]
    ca = await connect_synced(srv, a)
    cb = await connect_synced(srv, b)
    await ca.publish_many("s", ["one"])
    (ev,) = await cb.events(1, "s")
    assert ev["body"] == "one"
    async with websockets.connect(srv.ws_url) as ws:
        await ws.send(json.dumps(hello(a.device_id)))
        assert json.loads(await asyncio.wait_for(ws.recv(), 10))["type"] == "challenge"
    await ca.close()
    await cb.close()


@pytest.mark.parametrize("frame_", [
    {"type": "publish", "id": "not-a-uuid", "stream": "s", "body": 1},
    {"type": "ack", "stream": "BAD", "seq": -1},
    {"type": "publish", "id": "018f0000-0000-7000-8000-000000000002", "stream": "sys.x",
     "body": 1},
], ids=["bad-publish", "bad-ack", "forbidden-publish"])
def test_a_bad_message_before_the_handshake_is_a_bad_request(module_servers: MakeServer,
                                                             frame_: dict[str, Any]) -> None:
    """Only hello and auth are allowed before READY (protocol.md §2): a publish or an ack
    with bad fields there is `bad_request` and 4400, not its non-fatal code as a reason."""
    srv = module_servers()
    sock = upgrade(srv, "127.0.0.9")
    sock.sendall(text(frame_))
    frames, code = read_frames(sock, 10)
    sock.close()
    assert [f.get("code") for f in frames] == ["bad_request"]
    assert code == 4400
