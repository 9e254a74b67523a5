"""Gateway connections opened without Sanic's request path (docs/performance.md).

Once open, a gateway connection runs on relaybox's own ``GatewayConnection``
(``gateway/connection.py``) whichever way it came in, but opening one through Sanic
costs a connection task, an HTTP request object, routing, middleware and signal
dispatch, a WebSocket object with tasks of its own, and a handler task: about half of
the server's CPU time per handshake. ``GatewayProtocol`` reads a new connection's first
bytes. When they are exactly one complete WebSocket upgrade request for the gateway's
path, it answers with the `websockets` library's sans-I/O server protocol (the same
library and checks Sanic uses), hands the transport to a ``GatewayConnection`` and
starts the session at once. Everything else goes to Sanic unchanged: other routes, a
request split over several reads or followed by more bytes, an upgrade the library
refuses (Sanic then answers with its usual error), and deployments behind proxies
(``proxies_count`` > 0), where Sanic derives the client's address from forwarding
headers.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import email.utils
import logging
import re
import resource
import time
from typing import Any

import orjson
from sanic.http.constants import Stage
from sanic.log import websockets_logger
from sanic.models.server_types import ConnInfo
from sanic.server.protocols.websocket_protocol import WebSocketProtocol
from websockets.http11 import Request
from websockets.protocol import State
from websockets.server import ServerProtocol
from websockets.utils import accept_key

from relaybox.protocol.encoding import uuid7
from relaybox.server.errors import problem_body
from relaybox.server.gateway.connection import GatewayConnection

log = logging.getLogger("relaybox.gateway")

GATEWAY_PATH = "/api/v1/gateway"
_PREFIX = b"GET " + GATEWAY_PATH.encode()

# The common upgrade request, recognised without the library's generator-based parser.
# Whatever this accepts, websockets' parser and handshake checks accept too, with the
# same Sec-WebSocket-Accept (tests/gateway/test_upgrade_parse.py checks that against the
# library); anything else falls through to the library, then to Sanic.
_MAX_HEAD = 8192
_MAX_HEADERS = 64
_REQUEST_LINE = re.compile(rb"GET /api/v1/gateway(?:\?[\x21-\x7e]*)? HTTP/1\.1")
_TOKEN = rb"[-!#$%&'*+.^_`|~0-9A-Za-z]+"
_HEADER = re.compile(rb"(" + _TOKEN + rb"):[ \t]*((?:[\x21-\x7e](?:[\x20-\x7e]*[\x21-\x7e])?)?)"
                     rb"[ \t]*")
_TOKEN_RE = re.compile(_TOKEN)
_KEY_RE = re.compile(rb"[A-Za-z0-9+/]{22}==")
# Headers read below (each at most once), and headers the library checks that are left
# to it: a body (Content-Length, Transfer-Encoding) and subprotocol offers.
_READ = frozenset((b"upgrade", b"connection", b"sec-websocket-key", b"sec-websocket-version",
                   b"origin"))
_LEAVE = frozenset((b"content-length", b"transfer-encoding", b"sec-websocket-protocol"))


def fast_accept(data: bytes) -> str | None:
    """The Sec-WebSocket-Accept value if ``data`` is one plain gateway upgrade request."""
    if len(data) > _MAX_HEAD or not data.endswith(b"\r\n\r\n"):
        return None
    lines = data[:-4].split(b"\r\n")
    if len(lines) > _MAX_HEADERS + 1 or not _REQUEST_LINE.fullmatch(lines[0]):
        return None
    seen: dict[bytes, bytes] = {}
    for line in lines[1:]:
        m = _HEADER.fullmatch(line)
        if m is None:
            return None
        name = m.group(1).lower()
        if name in _LEAVE:
            return None
        if name in _READ:
            if name in seen:
                return None
            seen[name] = m.group(2)
    if seen.get(b"upgrade", b"").lower() != b"websocket":
        return None
    options = [o.strip(b" \t") for o in seen.get(b"connection", b"").split(b",")]
    if not all(_TOKEN_RE.fullmatch(o) for o in options):
        return None
    if not any(o.lower() == b"upgrade" for o in options):
        return None
    key = seen.get(b"sec-websocket-key", b"")
    if seen.get(b"sec-websocket-version") != b"13" or not _KEY_RE.fullmatch(key):
        return None
    try:
        if len(base64.b64decode(key, validate=True)) != 16:
            return None
    except binascii.Error:
        return None
    return accept_key(key.decode("ascii"))


_date_cache: tuple[int, bytes] = (0, b"")


def _http_date() -> bytes:
    """The Date header's value, formatted once per second."""
    global _date_cache
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache = (now, email.utils.formatdate(now, usegmt=True).encode("ascii"))
    return _date_cache[1]


def _switching(accept: str) -> bytes:
    return (b"HTTP/1.1 101 Switching Protocols\r\nDate: " + _http_date() +
            b"\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: " +
            accept.encode("ascii") + b"\r\n\r\n")


# The answer to a connection over a connection limit (docs/security.md Limits).
_BUSY_BODY = (b'{"type":"about:blank","title":"Service Unavailable","status":503,'
              b'"code":"too_many_connections","detail":"too many open connections"}')
_BUSY = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/problem+json\r\n"
         b"Retry-After: 5\r\nConnection: close\r\nContent-Length: " +
         str(len(_BUSY_BODY)).encode() + b"\r\n\r\n" + _BUSY_BODY)
http_log = logging.getLogger("relaybox.http")


def _timeout_answer(rid: str) -> bytes:
    """The 408 for a request head that missed its deadline, in the server's problem+json
    format, as Sanic would send it: the connection closes after it."""
    body = orjson.dumps(problem_body(408, "request_timeout",
                                     "the request head did not arrive in time", rid))
    return (b"HTTP/1.1 408 Request Timeout\r\nX-Request-ID: " + rid.encode("ascii") +
            b"\r\ncontent-length: " + str(len(body)).encode() +
            b"\r\nconnection: close\r\ncontent-type: application/problem+json\r\n\r\n" +
            body)


# Open connections of this process per TCP peer address.
_per_address: dict[str, int] = {}
# File descriptors kept free for the database, Redis, the writer and log files when
# limits.max_connections is derived from the open-file limit.
FD_RESERVE = 128


def raise_open_file_limit() -> int:
    """Raise this process's soft open-file limit to its hard limit; return the new one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = max(soft, 1 << 20)
    if soft != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


def max_connections(configured: int) -> int:
    """limits.max_connections, or the number derived from the open-file limit."""
    if configured:
        return configured
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft == resource.RLIM_INFINITY:
        soft = 1 << 20
    return max(16, soft - FD_RESERVE)


class GatewayProtocol(WebSocketProtocol):
    """Sanic's WebSocket-capable HTTP protocol with a direct path into the gateway, and
    relaybox's connection limits (docs/security.md Limits): a deadline for every request
    head (first byte included), open connections per peer address and per process."""

    __slots__ = ("_first", "_head_count", "_head_timer", "_peer", "_refused")

    def connection_made(self, transport: Any) -> None:
        # Not Sanic's connection_made yet, which starts its connection task: the first
        # bytes decide whether Sanic sees this connection at all (data_received).
        self._refused = False
        self._peer = ""
        self._head_timer: asyncio.TimerHandle | None = None
        self._head_count = 0
        try:
            transport.set_write_buffer_limits(low=16384, high=65536)
            self.transport = transport
            self.recv_buffer = bytearray()
            self._first = True
            limit = self._over_limit(transport)
            if limit is not None:
                self._refused = True
                transport.write(_BUSY)
                transport.close()
                metrics = getattr(self.app.ctx, "metrics", None)
                if metrics is not None:
                    metrics.connection_limited(limit)
                return
            if self._peer:
                _per_address[self._peer] = _per_address.get(self._peer, 0) + 1
            self.connections.add(self)
            # The direct path's (the client's address); Sanic's connection_made builds its
            # own. relaybox listens on TCP only, so no unix socket path to pass.
            self.conn_info = ConnInfo(transport)
            self._arm_head_deadline()
        except Exception:
            log.exception("connection setup failed")

    def _over_limit(self, transport: Any) -> str | None:
        settings = getattr(self.app.ctx, "settings", None)
        if settings is None:
            return None
        if len(self.connections) >= max_connections(settings.max_connections):
            return "max_connections"
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and peer and not settings.proxies_count:
            # Behind a proxy every client shares its address: the proxy limits clients.
            self._peer = str(peer[0])
            cap = settings.connections_per_address
            if cap and _per_address.get(self._peer, 0) >= cap:
                self._peer = ""
                return "per_address"
        return None

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        if self._first:
            self._first = False
            if self._open_gateway(data):
                self._cancel_head_deadline()
                return
            # Sanic's own set-up of the connection (its task, buffer and ConnInfo), then
            # these bytes as its first.
            super().connection_made(self.transport)
        else:
            http = self.http
            if (http is not None and http.stage is Stage.IDLE and not self.recv_buffer
                    and self.websocket is None):
                self._arm_head_deadline()  # the first bytes of the next request
        super().data_received(data)

    def connection_lost(self, exc: Exception | None) -> None:
        """The connection ended (for a gateway connection, its ``GatewayConnection``,
        the transport's protocol by then, passes this on)."""
        self._cancel_head_deadline()
        if self._refused:
            self.transport = None
            return
        if self._peer:
            left = _per_address.get(self._peer, 1) - 1
            if left > 0:
                _per_address[self._peer] = left
            else:
                _per_address.pop(self._peer, None)
            self._peer = ""
        super().connection_lost(exc)
        if isinstance(self.websocket, GatewayConnection):
            self.websocket = None  # the connection is over: let it go

    # -- the request head deadline (limits.header_timeout_s) ---------------------------
    def _arm_head_deadline(self) -> None:
        self._cancel_head_deadline()
        settings = getattr(self.app.ctx, "settings", None)
        timeout = settings.header_timeout_s if settings is not None else 10.0
        self._head_count += 1
        self._head_timer = self.loop.call_later(timeout, self._head_expired,
                                                self._head_count)

    def _cancel_head_deadline(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_expired(self, count: int) -> None:
        """Close the connection if the request head it started is still incomplete (a
        trickled head is not kept alive by each byte, unlike Sanic's request timeout)."""
        if count != self._head_count:
            return
        self._head_timer = None
        transport = self.transport
        if transport is None or transport.is_closing() or self.websocket is not None:
            return
        # Where Sanic is, by its public view of the connection (``HttpProtocol.http``: None
        # before its connection task has started, or once it ended).
        http = None if self._first else self.http
        if http is None:
            waiting = True
        else:
            waiting = http.stage is Stage.REQUEST or (
                http.stage is Stage.IDLE and bool(self.recv_buffer))
        if waiting:
            metrics = getattr(self.app.ctx, "metrics", None)
            if metrics is not None:
                metrics.connection_limited("header_timeout")
            if http is not None:
                # A request had begun: answered as Sanic answers a request that timed
                # out (relaybox's problem document, its access line), then closed. Sanic's
                # connection task, still reading the head, ends when the connection is
                # lost, with no answer (app.py logs none for it).
                rid = uuid7()
                transport.write(_timeout_answer(rid))
                http_log.info("- * 408 request_id=%s", rid, extra={"request_id": rid})
                if metrics is not None and metrics.registry is not None:
                    # Counted as the request it began, as every answer is (no route yet).
                    settings = self.app.ctx.settings
                    metrics.http_request("unmatched", "NONE", 408, settings.header_timeout_s)
            transport.close()

    def _open_gateway(self, data: bytes) -> bool:
        """Open a gateway session if ``data`` is exactly its upgrade request."""
        if (not data.startswith(_PREFIX) or data[len(_PREFIX):len(_PREFIX) + 1] not in b" ?"
                or not data.endswith(b"\r\n\r\n") or data.count(b"\r\n\r\n") != 1):
            return False
        config = self.app.config
        if config.PROXIES_COUNT or config.REAL_IP_HEADER or config.FORWARDED_SECRET:
            return False
        relay = getattr(self.app.ctx, "relay", None)
        if relay is None:  # not started yet
            return False
        assert self.transport is not None
        accept = fast_accept(data)
        if accept is not None:
            proto = ServerProtocol(max_size=self.websocket_max_size, logger=websockets_logger,
                                   state=State.OPEN)
            self.transport.write(_switching(accept))
        else:
            try:
                proto = ServerProtocol(max_size=self.websocket_max_size,
                                       logger=websockets_logger)
                proto.receive_data(data)
                events = proto.events_received()
                if (len(events) != 1 or not isinstance(events[0], Request)
                        or events[0].path.partition("?")[0] != GATEWAY_PATH):
                    return False
                response = proto.accept(events[0])
                if response.status_code != 101:
                    return False  # Sanic gives the same refusal, in its own format
                proto.send_response(response)
            except Exception:
                log.debug("gateway upgrade left to Sanic", exc_info=True)
                return False
            self.transport.write(b"".join(proto.data_to_send()))
        # From here on the transport's bytes, flow control and loss go to the connection;
        # Sanic still sees it as this protocol's websocket (to close it on shutdown).
        conn = GatewayConnection(self.transport, proto, float(self.websocket_timeout),
                                 owner=self)
        conn.take_over()
        self.websocket = conn  # type: ignore[assignment]
        from relaybox.server.gateway.session import Session

        address = self.conn_info.client_ip if self.conn_info is not None else ""
        conn.start(Session(relay, conn, address or "unknown"))
        return True
