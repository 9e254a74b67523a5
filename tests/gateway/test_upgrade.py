"""How a gateway connection is opened (relaybox/server/upgrade.py).

A complete upgrade request for the gateway is answered without Sanic's request path; the
rest of the gateway suite runs over that path. These tests cover what goes to Sanic
instead, and the connection-level duties the direct path takes over from it.
"""

from __future__ import annotations

import asyncio
import json
import time

import nacl.signing
import pytest
import websockets
from websockets.frames import Close, Frame, Opcode

from tests.gateway.helpers import close_code, hello, recv_json, users
from tests.observability.helpers import scrape, value
from tests.plugin import MakeServer
from tests.support import Server

UPGRADE = ("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
           "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
           "Sec-WebSocket-Version: {version}\r\n\r\n")


@pytest.fixture(scope="module")
def server(module_servers: MakeServer) -> Server:
    return module_servers(sanic_keep_alive_timeout=1)


async def _exchange(server: Server, request: bytes) -> tuple[bytes, bytes]:
    """Send raw bytes; (response head, response body) as the server answered them."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(request)
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        length = 0
        for line in head.decode().split("\r\n"):
            if line.lower().startswith("content-length:"):
                length = int(line.split(":", 1)[1])
        body = await asyncio.wait_for(reader.readexactly(length), 10) if length else b""
        return head, body
    finally:
        writer.close()


async def test_a_gateway_upgrade_with_a_query_string_opens_a_session(server: Server) -> None:
    (dev,) = users(server, 1)[0]
    ws = await websockets.connect(server.ws_url + "?client=test", compression=None)
    try:
        await ws.send(json.dumps(hello(dev.device_id)))
        assert (await recv_json(ws))["type"] == "challenge"
    finally:
        await ws.close()


async def test_a_plain_get_of_the_gateway_gets_sanics_426(server: Server) -> None:
    head, body = await _exchange(
        server, b"GET /api/v1/gateway HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 426 ")
    assert b"application/problem+json" in head.lower()
    assert json.loads(body)["status"] == 426


async def test_an_upgrade_the_library_refuses_gets_sanics_problem(server: Server) -> None:
    request = UPGRADE.format(path="/api/v1/gateway", version=12).encode()
    head, body = await _exchange(server, request)
    assert head.startswith(b"HTTP/1.1 400 ")
    problem = json.loads(body)
    assert "Sec-WebSocket-Version" in problem["detail"]
    assert problem["request_id"]


async def test_an_upgrade_of_another_path_is_not_a_gateway(server: Server) -> None:
    request = UPGRADE.format(path="/api/v1/gatewayx", version=13).encode()
    head, body = await _exchange(server, request)
    assert head.startswith(b"HTTP/1.1 404 ")
    assert json.loads(body)["status"] == 404


async def test_other_routes_still_work_on_the_same_port(server: Server) -> None:
    head, _ = await _exchange(
        server, b"GET /api/v1/status HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    assert b"x-request-id" in head.lower()


async def test_a_connection_that_sends_nothing_is_closed(server: Server) -> None:
    # keep_alive_timeout is 1 s on this server, as Sanic would close an idle connection.
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        assert await asyncio.wait_for(reader.read(), 20) == b""
    finally:
        writer.close()


async def test_the_server_closes_tcp_after_the_close_handshake(server: Server) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(UPGRADE.format(path="/api/v1/gateway", version=13).encode())
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert head.startswith(b"HTTP/1.1 101 ")
        close = Frame(Opcode.CLOSE, Close(1000, "").serialize())
        writer.write(close.serialize(mask=True))
        # The server answers with its close frame, then closes the connection (EOF).
        rest = await asyncio.wait_for(reader.read(), 10)
        assert rest[:1] == b"\x88"  # FIN + close
        assert int.from_bytes(rest[2:4], "big") == 1000
    finally:
        writer.close()


async def test_behind_a_proxy_the_forwarded_address_counts(servers: MakeServer) -> None:
    """With proxies configured, upgrades go through Sanic, which reads X-Forwarded-For:
    the failed-handshake limit (4429) then counts per forwarded client."""
    proxied = servers(proxies_count=1, gateway_handshake_failures_per_min=2)
    (dev,) = users(proxied, 1)[0]
    wrong = nacl.signing.SigningKey.generate()

    async def attempt(client: str) -> tuple[str | None, int | None]:
        ws = await websockets.connect(proxied.ws_url, compression=None,
                                      additional_headers={"X-Forwarded-For": client})
        try:
            # The refusal may arrive before hello is even sent.
            await ws.send(json.dumps(hello(dev.device_id)))
            first = await recv_json(ws)
        except websockets.ConnectionClosed:
            return None, ws.close_code  # refused before the challenge
        assert first["type"] == "challenge", first
        await ws.send(json.dumps({"type": "auth",
                                  "signature": _b64(wrong.sign(b"x").signature)}))
        err = await recv_json(ws)
        return err.get("code"), await close_code(ws)

    minute = int(time.time() // 60)
    for _ in range(2):  # the limit counts per minute; redo if a minute boundary passed
        assert await attempt("203.0.113.5") == ("auth_failed", 4401)
        assert await attempt("203.0.113.5") == ("auth_failed", 4401)
        refused = await attempt("203.0.113.5")
        if int(time.time() // 60) == minute:
            break
        minute = int(time.time() // 60)
    assert refused[1] == 4429
    # Another forwarded client on the same TCP peer address is not affected.
    assert await attempt("203.0.113.6") == ("auth_failed", 4401)


def _b64(data: bytes) -> str:
    from relaybox.protocol.encoding import b64url_encode

    return b64url_encode(data)


# -- the request-head deadline (limits.header_timeout_s) ----------------------------------
@pytest.fixture(scope="module")
def deadline_server(module_servers: MakeServer) -> Server:
    return module_servers(header_timeout_s=1, keep_alive_s=10)


STATUS = b"GET /api/v1/status HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


async def _answer_to_a_trickled_head(reader: asyncio.StreamReader,
                                     writer: asyncio.StreamWriter) -> bytes:
    """Send a request line, then a header a byte every 0.1 s: what the server answers
    before it closes the connection (within 8 s, else the test fails)."""
    writer.write(b"GET /api/v1/status HTTP/1.1\r\n")
    deadline = time.monotonic() + 8
    got = b""
    for byte in b"X-Slow: " + b"a" * 200:
        assert time.monotonic() < deadline, "the connection was not closed"
        try:
            writer.write(bytes([byte]))
            chunk = await asyncio.wait_for(reader.read(4096), 0.1)
        except TimeoutError:
            continue
        except ConnectionError:
            break
        if not chunk:
            break
        got += chunk
    return got


def _http_log(server: Server) -> list[str]:
    return [line for line in server.log().splitlines() if "relaybox.http:" in line]


def _timed_out_requests(server: Server) -> float:
    return value(scrape(server), "relaybox_http_requests_total", route="unmatched",
                 method="OTHER", status="408")


async def test_a_trickled_first_head_is_answered_408_once(deadline_server: Server) -> None:
    counted = _timed_out_requests(deadline_server)
    before = len(_http_log(deadline_server))
    reader, writer = await asyncio.open_connection("127.0.0.1", deadline_server.port)
    try:
        answer = await _answer_to_a_trickled_head(reader, writer)
    finally:
        writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 "), answer
    assert b"connection: close" in head.lower()
    problem = json.loads(body)
    assert (problem["status"], problem["code"]) == (408, "request_timeout")
    assert f"x-request-id: {problem['request_id']}".encode() in head.lower()
    await asyncio.sleep(0.5)  # Sanic's connection task ends after the close
    lines = _http_log(deadline_server)[before:]
    assert [line.split("relaybox.http: ")[1] for line in lines] == [
        f"- * 408 request_id={problem['request_id']}"]
    assert _timed_out_requests(deadline_server) == counted + 1  # in the request metrics


async def test_the_next_head_on_a_kept_alive_connection_has_the_deadline_too(
        deadline_server: Server) -> None:
    """From its first byte (docs/security.md Limits): the connection waited longer than
    the deadline between the two requests, and is still answered 408, then closed."""
    before = len(_http_log(deadline_server))
    reader, writer = await asyncio.open_connection("127.0.0.1", deadline_server.port)
    try:
        writer.write(STATUS)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert head.startswith(b"HTTP/1.1 200 ")
        length = next(int(line.split(b":")[1]) for line in head.lower().split(b"\r\n")
                      if line.startswith(b"content-length:"))
        await asyncio.wait_for(reader.readexactly(length), 10)
        await asyncio.sleep(1.5)  # idle past header_timeout_s: only keep_alive_s applies
        answer = await _answer_to_a_trickled_head(reader, writer)
    finally:
        writer.close()
    assert answer.startswith(b"HTTP/1.1 408 "), answer
    await asyncio.sleep(0.5)
    statuses = [line.split()[-2] for line in _http_log(deadline_server)[before:]]
    assert statuses == ["200", "408"]


async def test_a_head_split_over_reads_in_time_is_served(deadline_server: Server) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", deadline_server.port)
    try:
        writer.write(STATUS[:10])
        await asyncio.sleep(0.3)
        writer.write(STATUS[10:])
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    finally:
        writer.close()
    assert head.startswith(b"HTTP/1.1 200 ")


async def test_a_client_that_leaves_mid_head_leaves_no_access_line(
        deadline_server: Server) -> None:
    """Nothing was answered: no line (Sanic's connection task would end with a 500 that
    reaches no one)."""
    _, writer = await asyncio.open_connection("127.0.0.1", deadline_server.port)
    writer.write(b"GET /api/v1/status HTTP/1.1\r\n")
    await writer.drain()
    await asyncio.sleep(0.3)
    writer.close()
    await asyncio.sleep(0.5)
    assert not any(" 500 request_id=" in line for line in _http_log(deadline_server))
