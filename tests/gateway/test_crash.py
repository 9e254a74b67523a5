"""protocol.md §3 Delivery: an event that was acked to its publisher is never lost (kill -9)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Iterable
from typing import cast

import pytest

from relaybox.protocol.encoding import uuid4
from relaybox.store.models import Event
from tests.gateway.conftest import MakeServer
from tests.gateway.helpers import Client, database, users

pytestmark = pytest.mark.asyncio(loop_scope="function")


async def test_acked_events_survive_kill_9_exactly_once(servers: MakeServer) -> None:
    server = servers(gateway_publish_rate_per_s=0)
    (dev,) = users(server, 1)[0]
    c = await Client.connect(server, dev)
    ids = [uuid4() for _ in range(3000)]
    acked: dict[str, int] = {}
    # At most 200 publishes in flight: the kill lands mid-stream however fast the server
    # commits (never after the whole stream was acked).
    in_flight = asyncio.Semaphore(200)

    async def send_all() -> None:
        with contextlib.suppress(Exception):  # the server dies under it
            for i, pid in enumerate(ids):
                await asyncio.wait_for(in_flight.acquire(), 10)
                await c.send({"type": "publish", "id": pid, "stream": "crash", "body": i})

    async def read_acks() -> None:
        with contextlib.suppress(Exception):
            try:
                await read()
            finally:
                for _ in range(200):  # let the sender run into the closed connection
                    in_flight.release()

    async def read() -> None:
        while True:
            f = json.loads(await asyncio.wait_for(c.ws.recv(), 10))
            if f["type"] == "ack":
                acked[f["id"]] = f["seq"]
                in_flight.release()
                if len(acked) == 500:
                    server.kill()  # kill -9 in the middle of the stream

    await asyncio.gather(send_all(), read_acks())
    assert 500 <= len(acked) < len(ids)

    with database(server):
        q = (Event.select(Event.client_id, Event.seq)
             .where((Event.user_id == dev.user_id) & (Event.stream == "crash"))
             .order_by(Event.seq).tuples())
        rows = list(cast("Iterable[tuple[str, int]]", q))
    stored = dict(rows)
    assert len(stored) == len(rows)  # no id twice
    assert [s for _, s in rows] == list(range(1, len(rows) + 1))  # no gap
    for pid, seq in acked.items():  # every ack is there, at its seq
        assert stored.get(pid) == seq

    # After a restart, retrying everything with the same ids stores each exactly once.
    again = servers(server.data_dir, gateway_publish_rate_per_s=0)
    c = await Client.connect(again, dev)
    acks = await c.publish_many("crash", list(range(len(ids))), ids=ids)
    replies = {f["id"]: f["seq"] for f in acks}
    assert all(replies[pid] == seq for pid, seq in stored.items())
    assert sorted(replies.values()) == list(range(1, len(ids) + 1))
    await c.close()
