"""protocol.md §6: a server shutting down closes sessions with 1001, and logs no traceback."""

from __future__ import annotations

import pytest

from tests.gateway.helpers import Client, users
from tests.plugin import MakeServer

pytestmark = pytest.mark.asyncio(loop_scope="function")


async def test_shutdown_closes_sessions_with_1001_and_logs_no_traceback(
        servers: MakeServer) -> None:
    server = servers()
    (a, b) = users(server, 2)[0]
    ca, cb = await Client.connect(server, a), await Client.connect(server, b)
    await ca.drain_catch_up()
    await cb.drain_catch_up()
    await ca.publish("notes", 1)
    assert server.stop() == 0
    assert await ca.closed_code() == 1001
    assert await cb.closed_code() == 1001
    assert "Traceback" not in server.log(), server.log()[-4000:]
