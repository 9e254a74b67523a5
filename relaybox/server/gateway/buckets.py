"""The publish-rate buckets of the devices of one process (protocol.md §7, §8 Publishing):
one per device, outliving its sessions, kept here while a process is alone and leased
from Redis while other processes listen."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

from relaybox.bus import Bus
from relaybox.server.gateway.peers import Peers
from relaybox.server.ratelimit import UNLIMITED, SharedBucket, TokenBucket


class PublishBuckets:
    """Buckets by device, while in use and until full again."""

    def __init__(self, bus: Bus | None, peers: Peers, in_use: Callable[[str], bool],
                 tasks: set[asyncio.Task[Any]]) -> None:
        self.bus = bus
        self.peers = peers
        self._in_use = in_use  # the device has a live session on this process
        self._tasks = tasks  # the hub's, so that it can wait for them at shutdown
        self.buckets: dict[str, TokenBucket | SharedBucket] = {}
        # Shared buckets giving their leased tokens back, by device: a hand-over waits.
        self._releases: dict[str, asyncio.Task[None]] = {}

    def bucket_for(self, device_id: str, rate: float, burst: int
                   ) -> TokenBucket | SharedBucket:
        """The device's publish bucket (protocol.md §7: the rate is per device). It
        outlives the session: reconnecting does not refill it. While other processes
        listen it is leased from Redis (``SharedBucket``), so that moving to another
        node does not refill it either; a process alone keeps it here."""
        if rate <= 0:
            return UNLIMITED
        bucket = self.buckets.get(device_id)
        if self.bus is not None and self.peers.present and not isinstance(bucket,
                                                                           SharedBucket):
            # What is left of a bucket kept here before peers came carries over.
            init = None if bucket is None else burst - bucket.until_full() * rate
            bucket = self.buckets[device_id] = SharedBucket(
                rate, burst, self._lease_for(device_id, rate, burst), init=init)
        elif bucket is None:
            bucket = self.buckets[device_id] = TokenBucket(rate, burst)
        return bucket

    def _lease_for(self, device_id: str, rate: float, burst: int) -> Any:
        bus = self.bus
        assert bus is not None
        key = f"relaybox:publish_rate:{device_id}"

        def lease(want: float, init: float | None) -> Awaitable[tuple[int, float]]:
            return bus.lease_tokens(key, rate, burst, want, init)

        return lease

    def forget(self, device_id: str) -> None:
        """Drop an unused bucket once it is full again: a new one would be the same. Until
        then it stays, so memory holds at most the devices of the last few seconds. A
        shared bucket lives in Redis: it gives its leased tokens back and goes at once."""
        bucket = self.buckets.get(device_id)
        if bucket is None or self._in_use(device_id):
            return
        if isinstance(bucket, SharedBucket):
            del self.buckets[device_id]
            task = asyncio.get_running_loop().create_task(bucket.release())
            self._releases[device_id] = task
            self._tasks.add(task)

            def done(t: asyncio.Task[None]) -> None:
                self._tasks.discard(t)
                if self._releases.get(device_id) is t:
                    del self._releases[device_id]

            task.add_done_callback(done)
            return
        wait = bucket.until_full()
        if wait <= 0:
            del self.buckets[device_id]
        else:
            asyncio.get_running_loop().call_later(wait, self.forget, device_id)

    async def released(self, device_id: str, timeout_s: float = 1.0) -> None:
        """Until the device's unspent leased tokens are back in Redis (at most
        ``timeout_s``): a hand-over to another process waits for it."""
        release = self._releases.get(device_id)
        if release is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(release), timeout_s)
