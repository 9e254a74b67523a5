"""Events on their way to the application: queue, duplicate filter, cumulative acks, state file."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable
from typing import Any, Final

from relaybox.client.events import Event, EventStream, Gap, Item
from relaybox.client.positions import Positions, StateFile
from relaybox.protocol.encoding import dumps

__all__ = ["DEFAULT_WINDOW", "Delivery"]

log = logging.getLogger("relaybox.client")

ACK_DELAY_S: Final = 0.1  # protocol.md §3 Flow control: ack within window/2 events or 100 ms
DEFAULT_WINDOW: Final = 256
_STOP: Final = object()  # queued after the last item the application may take


class Delivery:
    """Hands events to the application in order, once, and acknowledges what it took.

    ``send`` queues a frame on the live session; ``connected`` says whether
    there is one (acks are per session: the server clamps them to what it
    sent on that session, protocol.md §3 Delivery).
    """

    def __init__(self, send: Callable[[str], bool], connected: Callable[[], bool],
                 state: StateFile | None) -> None:
        self._send = send
        self._connected = connected
        self._state = state
        self.positions = Positions()
        self.window = DEFAULT_WINDOW
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self._ack_timer: asyncio.TimerHandle | None = None
        self._saving: asyncio.Future[None] | None = None
        self._error: BaseException | None = None
        self._stream: EventStream | None = None

    def load(self) -> None:
        """Start from the saved positions, if a state file is used."""
        if self._state is not None:
            self.positions = Positions(self._state.load())

    # -- session events ---------------------------------------------------------------------
    def new_session(self, heads: dict[str, int], window: int) -> None:
        self.window = window
        # Whatever the application has not taken yet comes again: the server resumes
        # after the device's cursor, which never passes what was acked (protocol.md §3).
        stopped = False
        while not self._queue.empty():
            stopped |= self._queue.get_nowait() is _STOP
        if stopped:
            self._queue.put_nowait(_STOP)
        self.positions.new_session(heads)

    def lost(self) -> None:
        if self._ack_timer is not None:
            self._ack_timer.cancel()
            self._ack_timer = None

    def event(self, event: Event) -> None:
        self.positions.receive(event.stream, event.seq)
        self._queue.put_nowait(event)

    def gap(self, gap: Gap) -> None:
        # The server moved past the gap, so an ack up to next - 1 is accepted.
        self.positions.receive(gap.stream, gap.next - 1)
        self._queue.put_nowait(gap)

    def stop(self, error: BaseException | None = None) -> None:
        """End the iterators after the items already queued; with ``error``, raise it then."""
        if error is not None and self._error is None:
            self._error = error
        self._queue.put_nowait(_STOP)

    # -- the application side ---------------------------------------------------------------
    def open_stream(self, streams: Iterable[str] | None) -> EventStream:
        if self._stream is not None:
            self._stream.release()
        self._stream = EventStream(self, streams)
        return self._stream

    def detach(self, stream: EventStream) -> None:
        if self._stream is stream:
            self._stream = None

    def release_held(self) -> None:
        if self._stream is not None:
            self._stream.release()

    async def take(self) -> Item | None:
        """The next queued item; None once stopped (or the stop error)."""
        item = await self._queue.get()
        if item is _STOP:
            self._queue.put_nowait(_STOP)  # every later take stops too
            if self._error is not None:
                raise self._error
            return None
        return item  # type: ignore[no-any-return]

    def done_with(self, item: Item) -> None:
        last = item.next - 1 if isinstance(item, Gap) else item.seq
        self.positions.done(item.stream, last)
        if self.positions.unacked >= max(1, self.window // 2):
            self.flush()
        elif self._ack_timer is None:
            self._ack_timer = asyncio.get_running_loop().call_later(ACK_DELAY_S, self.flush)

    # -- acks and the state file ------------------------------------------------------------
    def flush(self) -> None:
        """Send the due cumulative acks now and save positions in the background."""
        if self._ack_timer is not None:
            self._ack_timer.cancel()
            self._ack_timer = None
        if self._connected():
            for stream, seq in self.positions.acks_due():
                self._send(dumps({"type": "ack", "stream": stream, "seq": seq}))
        if self.positions.dirty:
            self._save_soon()

    def _save_soon(self) -> None:
        if self._state is None or (self._saving is not None and not self._saving.done()):
            return  # a running save checks ``dirty`` again when it ends
        snapshot = dict(self.positions.processed)
        self.positions.dirty = False
        loop = asyncio.get_running_loop()
        self._saving = loop.run_in_executor(None, self._state.save, snapshot)
        self._saving.add_done_callback(self._saved)

    def _saved(self, fut: asyncio.Future[None]) -> None:
        exc = fut.exception()
        if exc is not None:
            log.warning("cannot save positions to %s: %s", self._state and self._state.path, exc)
        elif self.positions.dirty:
            self._save_soon()

    async def save_now(self) -> None:
        """Wait for a running save, then write the latest positions."""
        if self._state is None:
            return
        if self._saving is not None:
            with contextlib.suppress(Exception):
                await self._saving
        if self.positions.dirty:
            self.positions.dirty = False
            try:
                await asyncio.to_thread(self._state.save, dict(self.positions.processed))
            except OSError as exc:
                log.warning("cannot save positions to %s: %s", self._state.path, exc)
