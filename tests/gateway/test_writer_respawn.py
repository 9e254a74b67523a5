"""protocol.md §3 Delivery with the writer process dying under a running server: acks
received before a normal close are durable before the device's next catch-up, and
publishes the dead writer had not answered are acked, each stored once."""

from __future__ import annotations

import os
import signal

import pytest

from relaybox.protocol.encoding import uuid4
from tests.gateway.helpers import Client, connect_synced, users
from tests.plugin import MakeServer
from tests.support import writer_pids

pytestmark = pytest.mark.asyncio(loop_scope="function")


async def test_acks_a_killed_writer_had_not_read_are_not_redelivered(
        servers: MakeServer) -> None:
    server = servers(gateway_publish_rate_per_s=0)
    assert server.proc is not None
    (a, b) = users(server, 2)[0]
    ca, cb = await connect_synced(server, a), await connect_synced(server, b)
    await ca.publish_many("s", [1, 2, 3])
    await cb.events(3, "s", ack=False)
    (writer,) = writer_pids(server.proc.pid)
    os.kill(writer, signal.SIGSTOP)  # the ack reaches the writer's socket, unread
    try:
        await cb.ack("s", 3)
        await cb.barrier()  # the server has read the ack
        await cb.close()  # 1000: the ack must be durable before the next catch-up
    finally:
        os.kill(writer, signal.SIGKILL)
    cb = await Client.connect(server, b)
    synced = await cb.expect_type("event", "synced")
    assert synced["type"] == "synced", synced  # nothing acked is sent again
    # The writer process was replaced; publishing goes on without a gap.
    (new_writer,) = writer_pids(server.proc.pid)
    assert new_writer != writer
    acks = await ca.publish_many("s", [4])
    assert [f["seq"] for f in acks] == [4]
    ev = await cb.expect_type("event")
    assert (ev["stream"], ev["seq"]) == ("s", 4)
    await ca.close()
    await cb.close()


async def test_publishes_a_killed_writer_had_not_read_are_acked_once(
        servers: MakeServer) -> None:
    server = servers(gateway_publish_rate_per_s=0)
    assert server.proc is not None
    (a, b) = users(server, 2)[0]
    ca, cb = await connect_synced(server, a), await connect_synced(server, b)
    (writer,) = writer_pids(server.proc.pid)
    ids = [uuid4() for _ in range(20)]
    os.kill(writer, signal.SIGSTOP)
    try:
        for i, pid in enumerate(ids):
            await ca.send({"type": "publish", "id": pid, "stream": "s", "body": i})
        await ca.barrier()  # the server has read the publishes and sent them on
    finally:
        os.kill(writer, signal.SIGKILL)
    # Every one is acked (none nacked), by the next writer process.
    replies = [await ca.reply_to(pid) for pid in ids]
    assert [(f["type"], f["seq"]) for f in replies] == [("ack", i) for i in range(1, 21)]
    events = await cb.events(20, "s")
    assert [(e["seq"], e["body"]) for e in events] == [(i + 1, i) for i in range(20)]
    await ca.close()
    await cb.close()
