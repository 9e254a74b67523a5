"""The campaign's devices: SDK publishers and compare-and-set writers, raw subscribers.

Publishers and compare-and-set writers use the device SDK (relaybox/client), so its retry
by id across reconnects is what the campaign exercises. Subscribers speak the protocol
themselves: the checker needs every frame they were sent (redeliveries, where a catch-up
started, which acks a normal close made durable), which the SDK rightly hides.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
from dataclasses import dataclass, field
from typing import Any

import websockets
from websockets.asyncio.client import ClientConnection

from relaybox.client import Client, ConflictError, FatalError, Identity, PublishError
from relaybox.client.errors import ClientClosedError
from relaybox.client.handshake import run_handshake
from relaybox.protocol.client import ClientHandshake, HandshakeFailed, HandshakeRefused
from relaybox.protocol.encoding import dumps, loads, uuid4
from tests.support import DeviceKey
from tests.torture.ledger import Ledger, NormalClose, Published, now

CAS_KEYED = "cas"  # compare-and-set against the latest event of the same key
CAS_HEAD = "cas-head"  # compare-and-set against the stream head (no key)
CAS_KEYS = ("k0", "k1", "k2")
PLAIN_STREAMS = ("p0", "p1")


@dataclass
class Closed:
    """How one connection of a device ended."""

    at: float
    role: str
    device_id: str
    code: int | None


class RecordingClient(Client):
    """The SDK client, noting how each of its connections ended (close codes)."""

    def __init__(self, identity: Identity, closes: list[Closed], role: str) -> None:
        # A short backoff ceiling: after a fault is healed the device is back within a
        # bound the hung-session check can use.
        super().__init__(identity, backoff_initial=0.1, backoff_max=2.0)
        self._closes = closes
        self._role = role
        self._last_ws: object = None

    async def _session(self) -> None:
        try:
            await super()._session()
        finally:
            ws = self._ws
            if ws is not None and ws is not self._last_ws:
                self._last_ws = ws
                self._closes.append(Closed(now(), self._role, self.identity.device_id,
                                           ws.close_code))


class SdkDevice:
    """An SDK client of one device that also takes (and so acknowledges) its events."""

    role = "sdk"

    def __init__(self, identity: Identity, ledger: Ledger, closes: list[Closed],
                 rng: random.Random) -> None:
        self.identity = identity
        self.ledger = ledger
        self.rng = rng
        self.client = RecordingClient(identity, closes, self.role)
        self.fatal: BaseException | None = None
        self._drain: asyncio.Task[None] | None = None

    @property
    def device_id(self) -> str:
        return self.identity.device_id

    async def start(self) -> None:
        await self.client.start()
        self._drain = asyncio.create_task(self._take_events())

    async def _take_events(self) -> None:
        with contextlib.suppress(Exception):
            async for _ in self.client.events():
                pass

    async def probe(self, deadline: float) -> str | None:
        """None once a ping went through a live session before ``deadline``, else why not."""
        why = "no attempt"
        while now() < deadline:
            try:
                async with asyncio.timeout(max(0.01, deadline - now())):
                    await self.client.wait_connected()
                    await self.client.ping()
                return None
            except FatalError as exc:
                return f"stopped for good: {exc}"
            except TimeoutError:
                why = ("connected, ping unanswered" if self.client.connected else
                       f"not connected ({self.client.last_error})")
            except ClientClosedError as exc:  # the connection dropped under the ping
                why = str(exc)
                await asyncio.sleep(0.05)
        return why

    def _publish_failed(self, pid: str, exc: BaseException) -> None:
        if isinstance(exc, FatalError):
            self.fatal = exc
            self.ledger.violation(f"{self.role} {self.device_id} stopped for good: {exc!r}")
        elif isinstance(exc, PublishError):
            self.ledger.refused[pid] = exc.code
        else:
            self.ledger.violation(f"{self.role} {self.device_id}: publish {pid} failed: "
                                  f"{exc!r}")

    async def aclose(self) -> None:
        await self.client.aclose()
        if self._drain is not None:
            self._drain.cancel()
            with contextlib.suppress(BaseException):
                await self._drain


class Publisher(SdkDevice):
    """Publishes without pause to the plain streams, ``depth`` publishes in flight."""

    role = "publisher"

    def __init__(self, identity: Identity, ledger: Ledger, closes: list[Closed],
                 rng: random.Random, depth: int = 3, pause_s: float = 0.02) -> None:
        super().__init__(identity, ledger, closes, rng)
        self.depth = depth
        self.pause_s = pause_s
        self._n = itertools.count()

    async def run(self, stop: asyncio.Event) -> None:
        await asyncio.gather(*(self._worker(stop) for _ in range(self.depth)))

    async def _worker(self, stop: asyncio.Event) -> None:
        ident = self.identity
        while not stop.is_set() and self.fatal is None:
            pid, stream = uuid4(), self.rng.choice(PLAIN_STREAMS)
            self.ledger.published[pid] = Published(pid, ident.device_id, ident.user_id, stream,
                                                   sent_at=now())
            try:
                seq = await self.client.publish(stream, {"n": next(self._n)}, id=pid)
            except Exception as exc:
                self._publish_failed(pid, exc)
            else:
                self.ledger.ack(pid, stream, seq)
            await asyncio.sleep(self.pause_s)  # load pacing, not a wait for an event


class CasWriter(SdkDevice):
    """Compare-and-set writes: base_seq is the latest seq this device knows for the key
    (from its own acks and from conflicts); the body repeats it for the checker."""

    role = "cas"

    def __init__(self, identity: Identity, ledger: Ledger, closes: list[Closed],
                 rng: random.Random, pause_s: float = 0.02) -> None:
        super().__init__(identity, ledger, closes, rng)
        self.pause_s = pause_s
        self.known: dict[tuple[str, str | None], int] = {}
        self._n = itertools.count()

    async def run(self, stop: asyncio.Event) -> None:
        ident = self.identity
        while not stop.is_set() and self.fatal is None:
            if self.rng.random() < 0.3:
                stream, key = CAS_HEAD, None
            else:
                stream, key = CAS_KEYED, self.rng.choice(CAS_KEYS)
            base = self.known.get((stream, key), 0)
            pid = uuid4()
            self.ledger.published[pid] = Published(pid, ident.device_id, ident.user_id, stream,
                                                   key, base, now())
            body = {"base": base, "n": next(self._n)}
            try:
                seq = await self.client.publish(stream, body, key=key, base_seq=base, id=pid)
            except ConflictError as exc:
                self.ledger.conflicts[pid] = exc.head_seq
                self.known[(stream, key)] = max(base, exc.head_seq)
            except Exception as exc:
                self._publish_failed(pid, exc)
            else:
                self.ledger.ack(pid, stream, seq)
                self.known[(stream, key)] = seq
            await asyncio.sleep(self.pause_s)


@dataclass
class _Session:
    ws: ClientConnection
    opened: float
    floor: dict[str, int]  # acked before the last normal close, if it must hold
    top: dict[str, int] = field(default_factory=dict)  # highest seq received, per stream
    acked: dict[str, int] = field(default_factory=dict)  # highest ack sent, per stream
    pongs: dict[str, asyncio.Future[None]] = field(default_factory=dict)
    closing: bool = False  # a normal close is under way: let it finish


class Subscriber:
    """A raw gateway device that records every event, acks cumulatively, and now and then
    closes normally (1000) and reconnects, to check where the next catch-up starts."""

    role = "subscriber"

    def __init__(self, url: str, dev: DeviceKey, ledger: Ledger, closes: list[Closed],
                 rng: random.Random, close_every_s: tuple[float, float] = (1.0, 5.0)) -> None:
        self.url = url
        self.dev = dev
        self.ledger = ledger
        self.closes = closes
        self.rng = rng
        self.close_every_s = close_every_s
        self.have: dict[str, int] = {}  # every seq up to this one received, per stream
        self.floor: dict[str, int] = {}
        self.floor_at = 0.0
        self.session: _Session | None = None
        self.welcomed = asyncio.Event()
        self.last_error = ""
        self._refs = itertools.count(1)
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()

    @property
    def device_id(self) -> str:
        return self.dev.device_id

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while not self._stop.is_set():
            try:
                await self._session()
            except (OSError, TimeoutError, websockets.WebSocketException, ValueError) as exc:
                self.last_error = repr(exc)
            if not self._stop.is_set():
                await asyncio.sleep(self.rng.uniform(0.05, 0.5))  # reconnect backoff

    async def _handshake(self, ws: ClientConnection) -> dict[str, Any]:
        hs = ClientHandshake(self.device_id, self.dev.key, strict=True)
        try:
            return await run_handshake(hs, ws.send, ws.recv)
        except HandshakeFailed as exc:
            if hs.challenge is None:
                raise ValueError(f"no challenge: {exc}") from None
            answer = exc.refused.frame if isinstance(exc, HandshakeRefused) else exc
            self.ledger.violation(f"subscriber {self.device_id}: handshake refused: {answer}")
            raise ValueError(f"no welcome: {answer}") from None

    async def _session(self) -> None:
        ws = await websockets.connect(self.url, max_size=None, compression=None, proxy=None,
                                      open_timeout=10, max_queue=None, close_timeout=5)
        try:
            async with asyncio.timeout(15):
                await self._handshake(ws)
            opened = now()
            # protocol.md §3 Delivery: acks received before a normal close are durable
            # before the next catch-up; only a crash in between may lose them.
            crashed = self.ledger.crash_between(self.floor_at, opened)
            if crashed:
                # The cursor may have lost anything since: only normal closes from now on
                # say where the next catch-ups must start.
                self.floor = {}
            s = _Session(ws, opened, {} if crashed else dict(self.floor))
            self.session = s
            self.welcomed.set()
            flusher = asyncio.create_task(self._flush_loop(s))
            closer = asyncio.create_task(self._close_later(s))
            try:
                async for raw in ws:
                    self._frame(s, raw)
            finally:
                self.session = None
                self.welcomed.clear()
                flusher.cancel()
                if s.closing:
                    await asyncio.wait([closer], timeout=15)
                closer.cancel()
                for fut in s.pongs.values():
                    if not fut.done():
                        fut.set_exception(ConnectionError("the session ended"))
        finally:
            with contextlib.suppress(Exception):
                await ws.close()
            self.closes.append(Closed(now(), self.role, self.device_id, ws.close_code))

    def _frame(self, s: _Session, raw: str | bytes) -> None:
        msg = loads(raw)
        if not isinstance(msg, dict):
            self.ledger.violation(f"subscriber {self.device_id}: not a JSON object: {raw!r}")
            return
        kind = msg.get("type")
        if kind == "event":
            self._event(s, str(msg["stream"]), int(msg["seq"]))
        elif kind == "pong":
            fut = s.pongs.pop(str(msg.get("ref")), None)
            if fut is not None and not fut.done():
                fut.set_result(None)
        elif kind == "gap":
            self.ledger.violation(f"subscriber {self.device_id}: gap without retention: {msg}")

    def _event(self, s: _Session, stream: str, seq: int) -> None:
        have = self.have.get(stream, 0)
        where = f"subscriber {self.device_id} stream {stream}"
        if stream not in s.top:
            floor = s.floor.get(stream, 0)
            if seq <= floor:
                self.ledger.violation(
                    f"{where}: cursor regression: catch-up started at seq {seq} although "
                    f"seq {floor} was acked before a normal close (no crash in between; "
                    f"faults since that close: {self.ledger.faults_since(self.floor_at)})")
            if seq > have + 1:
                self.ledger.violation(f"{where}: session starts at seq {seq}, seqs "
                                      f"{have + 1}..{seq - 1} were never delivered")
        elif seq != s.top[stream] + 1:
            self.ledger.violation(f"{where}: seq {seq} after {s.top[stream]} in one session "
                                  f"(out of order, duplicate or gap)")
        s.top[stream] = max(seq, s.top.get(stream, 0))
        if seq <= have:
            self.ledger.redelivered += 1
        elif seq == have + 1:
            self.have[stream] = seq
            self.ledger.delivered += 1

    async def _flush_loop(self, s: _Session) -> None:
        while True:
            await asyncio.sleep(0.05)  # protocol.md §3 Flow control: ack within 100 ms
            await self._flush(s)

    async def _flush(self, s: _Session) -> None:
        for stream, top in list(s.top.items()):
            if top > s.acked.get(stream, 0):
                s.acked[stream] = top
                await s.ws.send(dumps({"type": "ack", "stream": stream, "seq": top}))

    async def _ping(self, s: _Session) -> None:
        ref = f"p{next(self._refs)}"
        fut = asyncio.get_running_loop().create_future()
        fut.add_done_callback(lambda f: f.cancelled() or f.exception())  # always retrieved
        s.pongs[ref] = fut
        await s.ws.send(dumps({"type": "ping", "ref": ref}))
        await fut

    async def _close_later(self, s: _Session) -> None:
        await asyncio.sleep(self.rng.uniform(*self.close_every_s))  # pacing of normal closes
        with contextlib.suppress(Exception):
            await self._close_normally(s)

    async def _close_normally(self, s: _Session) -> None:
        s.closing = True
        await self._flush(s)
        acked = dict(s.acked)
        async with asyncio.timeout(10):
            await self._ping(s)  # the server reads in order: it has read every ack above
        await s.ws.close(1000)
        if s.ws.close_code == 1000:
            at = now()
            for stream, seq in acked.items():
                self.floor[stream] = max(self.floor.get(stream, 0), seq)
            self.floor_at = at
            self.ledger.normal_closes.append(NormalClose(self.device_id, at, acked))
            self.ledger.last_acked[self.device_id] = dict(self.floor)

    async def probe(self, deadline: float) -> str | None:
        """None once a ping went through a live session before ``deadline``, else why not."""
        why = "no session"
        while now() < deadline:
            try:
                async with asyncio.timeout(max(0.01, deadline - now())):
                    await self.welcomed.wait()
                    s = self.session
                    if s is None:
                        continue
                    await self._ping(s)
                return None
            except TimeoutError:
                why = ("session open, ping unanswered" if self.session is not None else
                       f"not connected ({self.last_error})")
            except (ConnectionError, websockets.WebSocketException):
                await asyncio.sleep(0.05)  # that session ended under the ping
        return why

    async def aclose(self) -> None:
        """Stop reconnecting; close the current session normally (acks made durable)."""
        self._stop.set()
        s = self.session
        if s is not None and not s.closing:
            with contextlib.suppress(Exception):
                await self._close_normally(s)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
