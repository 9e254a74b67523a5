"""The per-process registry of live sessions and the fan-out of committed events."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from relaybox.bus import (
    CONTROL_CHANNEL,
    EVENTS_CHANNEL_PREFIX,
    Bus,
    decode_control,
    decode_events,
    encode_events_by_user,
    events_channel,
)
from relaybox.protocol.codes import CloseCode
from relaybox.protocol.delivery import Framed
from relaybox.protocol.messages import error_frame, presence_frame
from relaybox.server.gateway.buckets import PublishBuckets
from relaybox.server.gateway.devicekeys import DeviceKeys
from relaybox.server.gateway.interfaces import HubSession
from relaybox.server.gateway.peers import Peers
from relaybox.server.gateway.ring import Ring
from relaybox.server.ratelimit import SharedBucket, TokenBucket
from relaybox.services.devices import revoked_among
from relaybox.store.events import StoredEvent

log = logging.getLogger("relaybox.gateway")

#: Runs a blocking read in the reader pool (``EventLog.read``).
Reader = Callable[..., Awaitable[Any]]


class Hub:
    """Sessions by device and user; every committed event passes through ``fanout``."""

    def __init__(self, node_id: str, bus: Bus | None) -> None:
        self.node_id = node_id
        self._node_prefix = node_id.encode() + b" "
        self.bus = bus
        self.peers = Peers(bus, node_id, lambda: list(self.by_device))
        # Devices with a live session on another process (from presence, session and
        # node_here notices), and handshakes waiting for such a session to wind down.
        self.remote: dict[str, str] = {}
        self._handovers: dict[str, asyncio.Future[None]] = {}
        self.by_device: dict[str, HubSession] = {}
        self.winding_down: dict[str, HubSession] = {}  # ended here, acks not yet stored
        self.by_user: dict[str, set[HubSession]] = {}
        # The user's events channel, subscribed while the user has a session here: done
        # once Redis confirmed it (every event committed elsewhere from then on arrives).
        self._listening: dict[str, asyncio.Future[None]] = {}
        self.rings: dict[tuple[str, str], Ring] = {}
        self._pending_bus: list[StoredEvent] = []
        self._bus_flush_scheduled = False
        self._tasks: set[asyncio.Task[Any]] = set()
        # Publish rate buckets by device, while in use and until full again.
        self.rates = PublishBuckets(bus, self.peers, lambda d: d in self.by_device,
                                    self._tasks)
        # Keys of devices that authenticated here (revocation notices forget them).
        self.keys = DeviceKeys()
        # The database re-check of live sessions' devices (protocol.md §5 Revocation).
        self._revocation_checks: asyncio.Task[None] | None = None

    # -- sessions ----------------------------------------------------------------
    def register(self, session: HubSession) -> HubSession | None:
        """Add a session; return the one it replaces (same device), if any. The user's
        other devices hear of it from ``announce_online`` once the session is welcomed."""
        old = self.by_device.get(session.device_id)
        if old is not None:
            self._drop(old)
        self.by_device[session.device_id] = session
        if session.user_id not in self.by_user and self.bus is not None:
            self._listening[session.user_id] = self.bus.watch(events_channel(session.user_id))
        self.by_user.setdefault(session.user_id, set()).add(session)
        self._watch_revocations(session.ctx.settings.gateway_revocation_check_s,
                                session.ctx.eventlog.read)
        return old

    def announce_online(self, session: HubSession) -> None:
        """The session was welcomed: tell the user's other live sessions (§3)."""
        if self.by_device.get(session.device_id) is session:
            self._presence(session.user_id, session.device_id, True)

    def unregister(self, session: HubSession) -> None:
        if self.by_device.get(session.device_id) is session:
            self._drop(session)
            if session.ready:  # its `online` was announced
                self._presence(session.user_id, session.device_id, False)
            self.rates.forget(session.device_id)
            # Until its acks are stored, another process taking the device over must
            # still wait for it (protocol.md §3 Delivery): see on_control "session".
            self.winding_down[session.device_id] = session
            self._spawn(self._wound_down(session))

    async def _wound_down(self, session: HubSession) -> None:
        try:
            await session.finished.wait()
        finally:
            if self.winding_down.get(session.device_id) is session:
                del self.winding_down[session.device_id]

    # -- publish rate (buckets.py) ------------------------------------------------
    def bucket_for(self, device_id: str, rate: float, burst: int
                   ) -> TokenBucket | SharedBucket:
        """The device's publish bucket (protocol.md §7: the rate is per device)."""
        return self.rates.bucket_for(device_id, rate, burst)

    def _presence(self, user_id: str, device_id: str, online: bool) -> None:
        """Tell the user's other live sessions, here and on other processes (§3)."""
        self._presence_local(user_id, device_id, online)
        if self.bus is not None and self.peers.present:
            task = asyncio.get_running_loop().create_task(self.bus.publish_control(
                "presence", user_id=user_id, device_id=device_id, online=online))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _presence_local(self, user_id: str, device_id: str, online: bool) -> None:
        frame = presence_frame(device_id, online)
        for peer in self.by_user.get(user_id, ()):
            # A session still in its handshake gets `welcome` first, never a presence.
            if peer.device_id != device_id and peer.ready:
                peer.send(frame)

    def _drop(self, session: HubSession) -> None:
        if self.by_device.get(session.device_id) is session:
            del self.by_device[session.device_id]
        peers = self.by_user.get(session.user_id)
        if peers is not None:
            peers.discard(session)
            if not peers:
                del self.by_user[session.user_id]
                for key in [k for k in self.rings if k[0] == session.user_id]:
                    del self.rings[key]
                if self.bus is not None:
                    self.bus.unwatch(events_channel(session.user_id))
                    self._listening.pop(session.user_id, None)

    def online(self, device_id: str) -> bool:
        return device_id in self.by_device

    @property
    def count(self) -> int:
        return len(self.by_device)

    # -- fan-out -------------------------------------------------------------------
    def committed(self, events: list[StoredEvent]) -> None:
        """Called on the loop right after a local commit: relay here and to other nodes."""
        self.fanout(events)
        if self.bus is not None and self.peers.present:
            self._pending_bus.extend(events)
            if not self._bus_flush_scheduled:
                self._bus_flush_scheduled = True
                task = asyncio.get_running_loop().create_task(self._flush_bus())
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def _flush_bus(self) -> None:
        await asyncio.sleep(0)
        events, self._pending_bus = self._pending_bus, []
        self._bus_flush_scheduled = False
        if events and self.bus is not None:
            # One message per user on the user's channel, all in one round trip: only the
            # processes holding a session of that user receive (and decode) it.
            await self.bus.publish_many(encode_events_by_user(self.node_id, events))

    async def listening(self, user_id: str, timeout_s: float = 3.0) -> None:
        """Wait until this process hears ``user_id``'s events from the other processes.
        A handshake waits for it before reading positions, so that an event committed
        elsewhere is either in its catch-up or arrives live, never neither."""
        waiter = self._listening.get(user_id)
        if waiter is None or waiter.done():
            return
        # Bounded: a Redis that does not answer must not hold up the handshake (its lost
        # subscription is then the degraded case of docs/architecture.md).
        done, _ = await asyncio.wait({waiter}, timeout=timeout_s)
        if not done:
            log.warning("user %s: Redis did not confirm the events subscription within "
                        "%.0f s", user_id, timeout_s)

    def fanout(self, events: list[StoredEvent]) -> None:
        """Offer each event to its user's sessions here, wrapped once with its frame."""
        by_user = self.by_user
        for ev in events:
            sessions = by_user.get(ev.user_id)
            if not sessions:
                continue
            key = (ev.user_id, ev.stream)
            ring = self.rings.get(key)
            if ring is None:
                ring = self.rings[key] = Ring()
            framed = Framed(ev)
            ring.add(framed)
            for s in sessions:
                s.offer(framed)

    def ring_after(self, user_id: str, stream: str, seq: int, limit: int
                   ) -> list[Framed] | None:
        ring = self.rings.get((user_id, stream))
        return ring.after(seq, limit) if ring is not None else None

    # -- bus messages from other processes ---------------------------------------------
    async def on_bus(self, channel: str, data: bytes) -> None:
        try:
            if channel.startswith(EVENTS_CHANNEL_PREFIX):
                if data.startswith(self._node_prefix):
                    return  # our own batch, already relayed here
                _, events = decode_events(data, StoredEvent)
                self.fanout(events)
            elif channel == CONTROL_CHANNEL:
                await self.on_control(decode_control(data))
        except Exception:
            log.exception("bad bus message on %s", channel)

    async def on_control(self, msg: dict[str, Any]) -> None:
        kind = msg.get("kind")
        device_id = msg.get("device_id")
        node = msg.get("node")
        if kind in ("node_up", "node_here"):
            if kind == "node_here" and msg.get("to") == self.node_id and isinstance(node, str):
                for did in msg.get("devices") or ():
                    self.remote[did] = node
            await self.peers.on_control(msg)
        elif kind == "session_done" and msg.get("to") == self.node_id:
            waiter = self._handovers.get(str(msg.get("session_id")))
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
        elif kind == "revoke" and isinstance(device_id, str):
            self.end_revoked(device_id)
        elif kind == "session" and isinstance(device_id, str) and node != self.node_id:
            if isinstance(node, str):
                self.remote[device_id] = node
            session = self.by_device.get(device_id)
            other = str(msg.get("session_id") or "")
            if (session is not None and session.session_id != other
                    and session.session_id > other and session.close_code is None):
                # Two processes got the same device at the same moment: the newer session
                # (session ids are UUIDv7, ordered by time) stays; ours is the newer one,
                # so it says so again, and the other process closes its older session
                # (which it had registered before announcing it). Without this order each
                # process closed its own session on the other's notice.
                if isinstance(node, str):
                    self._spawn(self._reannounce(session))
            elif session is not None and session.session_id != other:
                session.close_soon(CloseCode.SESSION_REPLACED, "session_replaced")
                if msg.get("wait_for") == self.node_id:
                    self._spawn(self._hand_over(session, node, msg.get("session_id")))
            elif msg.get("wait_for") == self.node_id:
                # A session of the device that already ended here may still be storing
                # its acks: the hand-over waits for it.
                self._spawn(self._hand_over(self.winding_down.get(device_id), node,
                                            msg.get("session_id")))
        elif kind == "presence" and node != self.node_id:
            user_id = msg.get("user_id")
            if isinstance(device_id, str) and isinstance(node, str):
                if msg.get("online"):
                    self.remote[device_id] = node
                elif self.remote.get(device_id) == node:
                    del self.remote[device_id]
            if isinstance(user_id, str) and isinstance(device_id, str):
                self._presence_local(user_id, device_id, bool(msg.get("online")))
        elif kind == "user_removed":
            for did in msg.get("device_ids") or ():
                self.end_revoked(did, user_removed=True)

    # -- revocation (protocol.md §5) ----------------------------------------------------------
    def end_revoked(self, device_id: str, *, user_removed: bool = False) -> None:
        """The device was revoked (or its user removed): forget its key and close its
        live session here with 4403, after an ``error`` ``revoked`` unless the user is
        gone (protocol.md §5 Revocation)."""
        self.keys.forget(device_id)
        session = self.by_device.get(device_id)
        if session is not None:
            if not user_removed:
                session.send(error_frame("revoked", "this device was revoked"))
            session.close_soon(CloseCode.REVOKED, "revoked")

    def _watch_revocations(self, interval_s: float, read: Reader) -> None:
        """Start the periodic re-check while this process holds sessions."""
        task = self._revocation_checks
        if task is None or task.done():
            self._revocation_checks = asyncio.get_running_loop().create_task(
                self._revocation_loop(interval_s, read), name="relaybox-revocation-check")

    async def _revocation_loop(self, interval_s: float, read: Reader) -> None:
        """A revocation whose notice never arrived (Redis down when it was made, or this
        process not subscribed at that moment) still closes the session within
        ``interval_s`` plus one database read: protocol.md §5 Revocation. Ends when the
        last session does; the next registration starts it again."""
        while self.by_device:
            await asyncio.sleep(interval_s)
            try:
                await self.recheck_revocations(read)
            except Exception as exc:  # the database is down: the next round tries again
                log.warning("revocation re-check failed: %s", exc)

    async def recheck_revocations(self, read: Reader) -> None:
        """Read the revoked state of every live session's device (one query per 500, in
        the reader pool) and end the sessions of those no longer standing, as a notice
        would."""
        live = dict(self.by_device)
        if not live:
            return
        ended: dict[str, bool] = await read(revoked_among, list(live))
        for device_id, revoked in ended.items():
            # Only the session that was read (a newer one made its own check, in touch),
            # and only if it is not closing already (a notice came after all).
            session = live[device_id]
            if self.by_device.get(device_id) is session and session.close_code is None:
                log.info("device %s: %s while its notice was missed; closing its session",
                         device_id, "revoked" if revoked else "removed")
                self.end_revoked(device_id, user_removed=not revoked)

    # -- a device moving between processes (protocol.md §3 Delivery) ------------------------
    async def replaced_elsewhere(self, session: HubSession, timeout_s: float = 3.0) -> None:
        """Announce ``session`` to the other processes; if one of them held this device,
        wait until its session there is wound down (its acks durable) before returning."""
        if self.bus is None or not self.peers.present:
            return
        holder = self.remote.get(session.device_id)
        waiter: asyncio.Future[None] | None = None
        if holder is not None and not await self._holder_alive(holder, timeout_s):
            # The process that held the device died (a crash leaves no goodbye): nobody
            # will hand over, so the device is not kept waiting for one.
            if self.remote.get(session.device_id) == holder:
                del self.remote[session.device_id]
            holder = None
        if holder is not None:
            waiter = asyncio.get_running_loop().create_future()
            self._handovers[session.session_id] = waiter
        try:
            # Bounded: a hanging Redis or a dead process must not hold up the handshake.
            async with asyncio.timeout(timeout_s):
                sent = await self.bus.publish_control(
                    "session", device_id=session.device_id, session_id=session.session_id,
                    wait_for=holder)
                if waiter is not None and sent:
                    await waiter
        except TimeoutError:
            log.warning("session %s: no hand-over from the process that held the device; "
                        "its last acks may be replayed", session.session_id)
            if self.remote.get(session.device_id) == holder:
                del self.remote[session.device_id]  # that process is gone or stuck
        finally:
            self._handovers.pop(session.session_id, None)

    async def _holder_alive(self, node: str, timeout_s: float) -> bool:
        if self.bus is None:
            return False
        try:
            async with asyncio.timeout(timeout_s):
                return await self.bus.node_alive(node)
        except Exception:
            return True  # unknown: wait for the hand-over as before (bounded)

    def resubscribed(self) -> None:
        """The bus subscription was (re)established. Session notices sent while it was down
        were lost, so two processes may each hold a session of one device: each process
        announces its live sessions again, and the older of any pair is closed (see the
        "session" notice in ``on_control``)."""
        self.peers.resubscribed()
        if self.bus is None:
            return
        for session in list(self.by_device.values()):
            if session.close_code is None:
                self._spawn(self._reannounce(session))

    async def _reannounce(self, session: HubSession) -> None:
        if self.bus is not None:
            with contextlib.suppress(Exception):
                await self.bus.publish_control("session", device_id=session.device_id,
                                               session_id=session.session_id)

    async def _hand_over(self, session: HubSession | None, node: Any, session_id: Any) -> None:
        if session is not None:
            await session.finished.wait()
            # Its unspent publish tokens are back in Redis before the device goes on there.
            await self.rates.released(session.device_id)
        if self.bus is not None:
            await self.bus.publish_control("session_done", to=node, session_id=session_id)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close_all(self, code: int, reason: str) -> None:
        if self._revocation_checks is not None:
            self._revocation_checks.cancel()
        sessions = list(self.by_device.values())
        for s in sessions:
            s.close_soon(code, reason)
        if sessions:
            await asyncio.wait([asyncio.ensure_future(s.finished.wait()) for s in sessions],
                               timeout=5)
