"""protocol.md §3 Delivery: an event that was acked to its publisher is never lost (kill -9);
the writer process that commits it ends with its server, and the writer thread works too."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import select
from collections.abc import Iterable
from pathlib import Path
from typing import cast

import pytest

from relaybox.protocol.encoding import uuid4
from relaybox.store.models import Event
from tests.gateway.helpers import Client, database, users
from tests.plugin import MakeServer
from tests.support import writer_pids

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


@pytest.mark.parametrize("end", ["kill -9", "SIGTERM"])
async def test_the_writer_process_ends_with_its_server(servers: MakeServer, end: str) -> None:
    server = servers(gateway_publish_rate_per_s=0)
    (dev,) = users(server, 1)[0]
    c = await Client.connect(server, dev)
    await c.publish_many("s", [1, 2, 3])
    assert server.proc is not None
    (pid,) = writer_pids(server.proc.pid)
    # Its command line holds nothing but python -m module fd: no database URL.
    args = [a for a in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") if a]
    assert len(args) == 4 and args[1:3] == [b"-m", b"relaybox.store.writer_main"]
    assert args[3].isdigit()
    fd = os.pidfd_open(pid)  # readable once that process has exited
    try:
        if end == "kill -9":
            server.kill()  # the writer sees its socket close and exits by itself
        else:
            await c.close()
            assert server.stop() == 0
        readable, _, _ = await asyncio.get_running_loop().run_in_executor(
            None, select.select, [fd], [], [], 30)
        assert readable == [fd]
    finally:
        os.close(fd)


async def test_with_the_writer_in_a_thread_events_are_stored_and_relayed(
        servers: MakeServer) -> None:
    """storage.writer_process = false: commits run in a thread of the server process."""
    server = servers(storage_writer_process="false", gateway_publish_rate_per_s=0)
    assert server.proc is not None
    assert writer_pids(server.proc.pid) == []
    (a, b) = users(server, 2)[0]
    ca, cb = await Client.connect(server, a), await Client.connect(server, b)
    await cb.drain_catch_up()
    acks = await ca.publish_many("s", [1, 2, 3])
    assert [f["seq"] for f in acks] == [1, 2, 3]
    events = await cb.events(3, "s")
    assert [(e["seq"], e["body"]) for e in events] == [(1, 1), (2, 2), (3, 3)]
    await ca.close()
    await cb.close()
