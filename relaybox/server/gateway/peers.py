"""Knowing whether other server processes listen on the bus.

A server alone on its Redis has nobody to tell about its commits, sessions or presence
changes, and publishing them anyway costs a Redis round trip per commit batch (and the
echo of each message back to its own subscription). ``Peers.present`` says whether
anything must be published; it is True whenever another server process may be
listening:

- A process joining the bus subscribes, announces itself (``node_up``) and waits until
  every other subscribed process has answered (``node_here``) before it takes any
  connection. A process that receives ``node_up`` marks peers present *before* it
  answers; since commits are handed to the hub on the same event loop, every commit it
  has not published was durable before the newcomer took its first session, and that
  session's catch-up reads it from storage.
- After losing its subscription a process cannot know what it missed, so it assumes
  peers are present again.
- A periodic check counts subscribers and marks peers absent when this process is the
  only one left and no ``node_up`` arrived while the count was in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from relaybox.aio import cancel_and_wait
from relaybox.bus import CONTROL_CHANNEL, Bus

log = logging.getLogger("relaybox.bus")

JOIN_TIMEOUT_S = 2.0
RECHECK_INTERVAL_S = 10.0


class Peers:
    def __init__(self, bus: Bus | None, node_id: str,
                 local_devices: Callable[[], list[str]] = list) -> None:
        self.bus = bus
        self.node_id = node_id
        self.local_devices = local_devices  # devices with a live session here
        self.present = bus is not None  # until proven alone
        self._generation = 0
        self._answers: set[str] = set()
        self._changed = asyncio.Event()
        self._echo = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._answering: set[asyncio.Task[None]] = set()

    # -- start ---------------------------------------------------------------------
    async def join(self, timeout_s: float = JOIN_TIMEOUT_S) -> None:
        """Announce this process and wait for every other listener's answer."""
        if self.bus is None:
            return
        try:
            async with asyncio.timeout(timeout_s):
                # Our own announcement coming back proves the subscription is live.
                while not self._echo.is_set():
                    await self.bus.publish_control("node_up")
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._echo.wait(), 0.2)
                others = await self.bus.subscribers(CONTROL_CHANNEL) - 1
                while len(self._answers) < others:
                    self._changed.clear()
                    await self._changed.wait()
                self.present = others > 0 or bool(self._answers)
        except TimeoutError:
            log.warning("bus: not every server process answered within %.0f s; "
                        "publishing to all of them", timeout_s)
            self.present = True
        except Exception as exc:  # Redis down: fan-out degrades, serving goes on
            log.warning("bus: could not announce this process: %s", exc)
            self.present = True

    def start_rechecks(self, interval_s: float = RECHECK_INTERVAL_S) -> None:
        if self.bus is not None:
            self._task = asyncio.get_running_loop().create_task(
                self._rechecks(interval_s), name="relaybox-peers")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None

    # -- bus events ----------------------------------------------------------------
    def resubscribed(self) -> None:
        """The subscription was (re)established: messages may have been missed."""
        self._generation += 1
        self.present = self.bus is not None

    async def on_control(self, msg: dict[str, Any]) -> None:
        kind = msg.get("kind")
        node = msg.get("node")
        if kind == "node_up":
            if node == self.node_id:
                self._echo.set()
                return
            self._generation += 1
            self.present = True  # before answering: see the module docstring
            if self.bus is not None:
                # Answered from a task of its own: the confirmations it waits for come
                # through the listener that runs this handler.
                task = asyncio.get_running_loop().create_task(self._answer(node))
                self._answering.add(task)
                task.add_done_callback(self._answering.discard)
        elif kind == "node_here" and msg.get("to") == self.node_id and isinstance(node, str):
            self._generation += 1
            self.present = True
            self._answers.add(node)
            self._changed.set()

    async def _answer(self, node: Any) -> None:
        if self.bus is None:
            return
        # Every events channel this process asked for is confirmed before it answers:
        # the newcomer publishes nothing before the answer, so none of its events can
        # overtake a subscription still on its way (docs/architecture.md).
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.bus.watched(), JOIN_TIMEOUT_S)
        # The answer lists this process's live devices: a session of one of them opened
        # on the newcomer replaces ours only after ours is wound down.
        await self.bus.publish_control("node_here", to=node, devices=self.local_devices())

    # -- periodic check --------------------------------------------------------------
    async def _rechecks(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            await self.recheck()

    async def recheck(self) -> None:
        if self.bus is None or not self.present:
            return
        generation = self._generation
        try:
            alone = await self.bus.subscribers(CONTROL_CHANNEL) <= 1
        except Exception:
            return
        if alone and generation == self._generation and self.bus.healthy:
            self.present = False
