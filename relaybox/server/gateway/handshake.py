"""A session's handshake (protocol.md §2): the core's ``Handshake`` fed with the
connection's first messages (held until then), the device checked, the session
registered with the hub and its positions read, then `welcome`."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from relaybox.protocol.codes import CloseCode
from relaybox.protocol.delivery import DeliveryState
from relaybox.protocol.encoding import random_nonce
from relaybox.protocol.errors import ProtocolError, PublishRefused
from relaybox.protocol.handshake import UNKNOWN_DEVICE_KEY, Handshake
from relaybox.protocol.messages import error_frame, parse_message, welcome_frame
from relaybox.server.gateway.lifecycle import Closing
from relaybox.server.observability import logs
from relaybox.server.ratelimit import SharedBucket, TokenBucket
from relaybox.store import queries

if TYPE_CHECKING:
    from relaybox.server.context import ServerContext
    from relaybox.server.gateway.session import Session
    from relaybox.store.sql import Positions

log = logging.getLogger("relaybox.gateway")


class HandshakeSteps:
    """The handshake half of a gateway session (mixed into ``Session``)."""

    ctx: ServerContext
    session_id: str
    device_id: str
    user_id: str
    address: str
    state: DeliveryState
    outbox: list[str]
    registered: bool
    close_code: int | None
    close_reason: str
    bucket: TokenBucket | SharedBucket
    wake: asyncio.Event

    _early: list[str | bytes]
    _early_waiter: asyncio.Future[None] | None
    _peer_closed: asyncio.Event

    if TYPE_CHECKING:  # ``Session``'s
        def send(self, frame: str) -> None: ...

    # -- the messages that arrive before READY ----------------------------------------------
    def on_peer_closed(self) -> None:
        self._peer_closed.set()
        self._wake_early()

    def _wake_early(self) -> None:
        waiter = self._early_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _next_early(self) -> str | bytes:
        """The next message that arrived before READY (the handshake's `hello`, `auth`)."""
        while not self._early:
            if self._peer_closed.is_set():
                raise Closing(CloseCode.NORMAL, "")
            self._early_waiter = asyncio.get_running_loop().create_future()
            try:
                await self._early_waiter
            finally:
                self._early_waiter = None
        return self._early.pop(0)


    async def _handshake(self) -> None:
        ctx = self.ctx
        s = ctx.settings
        if await ctx.handshake_limited(self.address):
            if ctx.metrics is not None:
                ctx.metrics.handshake("rate_limited")
            raise Closing(CloseCode.RATE_LIMITED, "rate_limited")
        hs = Handshake(ctx.server_id, self.session_id, random_nonce())
        try:
            async with asyncio.timeout(s.gateway_handshake_timeout_s):
                # Every message comes through the connection in turn, so that one that
                # came in the same read as `hello` is handled next, not lost (§2).
                hs.receive(self._parse(await self._next_early()))
                self.send(hs.challenge())
                hs.receive(self._parse(await self._next_early()))
                # A device seen before (devicekeys.py): one Ed25519 check right here costs
                # less than the hop to a reader thread and back. Any other case, a failed
                # check included, takes that check plus the database's answer, so that a
                # failure costs the same for a cached, a known and an unknown device (§2).
                device = ctx.hub.keys.get(hs.device_id)
                valid = hs.verify(device.public_key if device is not None
                                  else UNKNOWN_DEVICE_KEY) and device is not None
                if valid:
                    source = "cache"
                else:
                    source = "database"
                    device, valid = await ctx.eventlog.read(_check_device, hs)
                    if device is not None and valid:
                        ctx.hub.keys.remember(device)
                if ctx.metrics is not None:
                    ctx.metrics.key_lookup(source)
        except TimeoutError:
            if ctx.metrics is not None:
                ctx.metrics.handshake("timeout")
            raise Closing(CloseCode.HANDSHAKE_TIMEOUT, "handshake_timeout") from None
        if device is None or not valid:
            await ctx.handshake_failed(self.address)
            if ctx.metrics is not None:
                ctx.metrics.handshake("auth_failed")
            self.outbox.append(error_frame("auth_failed", "authentication failed"))
            raise Closing(CloseCode.AUTH_FAILED, "auth_failed")
        if device.revoked_at is not None:
            await ctx.handshake_failed(self.address)  # a failed handshake too (§2 step 4)
            if ctx.metrics is not None:
                ctx.metrics.handshake("revoked")
            self.outbox.append(error_frame("revoked", "this device was revoked"))
            raise Closing(CloseCode.REVOKED, "revoked")
        hs.authenticated()
        self.device_id = self.state.device_id = device.id
        self.user_id = device.user_id
        logs.bind_session(self.session_id, self.device_id)

        session: Session = self  # type: ignore[assignment]
        old = ctx.hub.register(session)
        self.registered = True
        self.bucket = ctx.hub.bucket_for(self.device_id, s.gateway_publish_rate_per_s,
                                         s.gateway_publish_burst)
        # The rest of the handshake is bounded too (a hanging hand-over or a slow database
        # must not leave a session that never gets `welcome` nor a close), and a close
        # that came meanwhile (replaced, revoked) ends it even if an await swallowed the
        # cancellation.
        try:
            async with asyncio.timeout(s.gateway_handshake_timeout_s):
                if old is not None:
                    old.close_soon(CloseCode.SESSION_REPLACED, "session_replaced")
                    await old.finished.wait()
                self._raise_if_closing()
                if ctx.bus is not None and ctx.bus.healthy:
                    # A session of this device on another process is closed with 4409
                    # and, like a local one, wound down (acks stored) before this
                    # catch-up reads positions; and this process hears the user's events
                    # from other processes and CLI commands before then too.
                    await asyncio.gather(ctx.hub.replaced_elsewhere(session),
                                         ctx.hub.listening(self.user_id))
                self._raise_if_closing()
                # Acks of this device's earlier session may still wait in the writer's
                # queue; they must be durable before this catch-up starts (protocol.md §3
                # Delivery), so the writer reads the positions in the batch that also
                # records last_seen.
                heads, cursors, revoked = await self._touch_until_stored()
                # The first publish tokens, when the bucket is leased from Redis.
                await self.bucket.ready()
        except TimeoutError:
            if ctx.metrics is not None:
                ctx.metrics.handshake("timeout")
            raise Closing(CloseCode.HANDSHAKE_TIMEOUT, "handshake_timeout") from None
        self._raise_if_closing()
        if revoked:
            # Revoked (or removed) after the key was read, or a known key whose revoke
            # notice never reached this process: the notice may have found no session to
            # close, so the writer's answer decides.
            ctx.hub.keys.forget(self.device_id)
            await ctx.handshake_failed(self.address)
            if ctx.metrics is not None:
                ctx.metrics.handshake("revoked")
            self.outbox.append(error_frame("revoked", "this device was revoked"))
            raise Closing(CloseCode.REVOKED, "revoked")
        streams = self.state.start(heads, cursors)
        # heartbeat_s is a float setting (20 is sent as 20, 0.3 as 0.3); welcome_frame's
        # annotation says int.
        heartbeat: Any = _num(s.gateway_heartbeat_s)
        self.send(welcome_frame(self.session_id, self.user_id, self.device_id, heartbeat,
                                self.state.window, s.gateway_max_body_bytes, streams))
        self.state.ready = True
        ctx.hub.announce_online(session)
        self.wake.set()
        if ctx.metrics is not None:
            ctx.metrics.handshake("ok")
            ctx.metrics.session_opened()

    async def _touch_until_stored(self) -> Positions:
        """The writer's ``touch`` (positions read after the acks before them are stored).
        While storage fails (a full disk, the database down) it is tried again until the
        handshake's deadline, which then ends the session with 4408: the device retries
        later, as for any handshake not completed in time (protocol.md §2)."""
        delay = 0.05
        warned = False
        while True:
            try:
                return await self.ctx.eventlog.touch(self.device_id, self.user_id)
            except Exception as exc:
                if not warned:
                    log.warning("session %s: storage failing during the handshake, "
                                "retrying: %s", self.session_id, exc)
                    warned = True
            self._raise_if_closing()
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)

    def _raise_if_closing(self) -> None:
        if self.close_code is not None:
            raise Closing(self.close_code, self.close_reason)

    def _parse(self, data: Any) -> Any:
        """A handshake message: anything refused here is a protocol violation (§2), so a
        publish or ack with bad fields is `bad_request` too, not its non-fatal code."""
        if data is None:
            raise Closing(CloseCode.NORMAL, "")
        try:
            return parse_message(data,
                                 max_body_bytes=self.ctx.settings.gateway_max_body_bytes)
        except ProtocolError as exc:
            if exc.close_code is not None and not isinstance(exc, PublishRefused):
                raise
            raise ProtocolError("bad_request", "only hello and auth are allowed before "
                                "the handshake completes") from None


def _check_device(hs: Handshake) -> tuple[queries.DeviceKey | None, bool]:
    """The device's key and whether the `auth` signature verifies, in the reader pool: the
    lookup needs a thread anyway, and libsodium's check runs there without the GIL instead
    of on the event loop."""
    device = queries.device_key(hs.device_id)
    # An unknown device costs a signature check too (no enumeration by timing).
    valid = hs.verify(device.public_key if device is not None else UNKNOWN_DEVICE_KEY)
    return device, device is not None and valid


def _num(value: float) -> int | float:
    return int(value) if float(value).is_integer() else value
