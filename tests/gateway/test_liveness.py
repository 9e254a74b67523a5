"""protocol.md §4 Liveness: a silent client is closed with 4410; a live one never is."""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.gateway.helpers import Client, users
from tests.plugin import MakeServer
from tests.support import Server

pytestmark = pytest.mark.asyncio(loop_scope="function")
HEARTBEAT = 0.3


@pytest.fixture(scope="module")
def server(gateway_servers: MakeServer) -> Server:
    return gateway_servers(gateway_heartbeat_s=HEARTBEAT)


async def test_silent_client_is_closed_4410_and_an_answering_one_stays(server: Server) -> None:
    silent_dev, live_dev = users(server, 2)[0]
    started = time.monotonic()
    # ping_interval=None: the client sends no pings of its own; it only answers the
    # server's, as long as it reads.
    live = await Client.connect(server, live_dev, ping_interval=None)
    silent = await Client.connect(server, silent_dev, ping_interval=None)
    assert silent.welcome["heartbeat_s"] == HEARTBEAT
    silent.ws.transport.pause_reading()  # it stops reading, so it answers nothing
    offline = await live.expect(lambda f: f["type"] == "presence" and not f["online"]
                                and f["device_id"] == silent_dev.device_id)
    assert offline["online"] is False
    silent.ws.transport.resume_reading()
    assert await silent.closed_code() == 4410
    # The live client sent nothing but pongs; keep it idle for several heartbeats more.
    await asyncio.sleep(max(0.0, started + 6 * HEARTBEAT - time.monotonic()))
    assert live.ws.close_code is None
    await live.barrier()
    await live.close()


async def test_client_that_stops_reading_under_load_is_closed_4410(server: Server) -> None:
    stuck_dev, pub_dev, watch_dev = users(server, 3)[0]
    watch = await Client.connect(server, watch_dev)
    pub = await Client.connect(server, pub_dev)
    stuck = await Client.connect(server, stuck_dev, ping_interval=None)
    await stuck.barrier()
    stuck.ws.transport.pause_reading()
    # Far more than the socket buffers hold: the server's writes to it block, and its
    # pings queue behind them; the silence must still end the session.
    await pub.publish_many("big", ["x" * 60_000] * 256)
    await watch.expect(lambda f: f["type"] == "presence" and not f["online"]
                       and f["device_id"] == stuck_dev.device_id)
    stuck.ws.transport.resume_reading()
    code = await stuck.closed_code(timeout=30)
    # The server writes the 4410 close frame behind ~15 MB the peer has not read; on a
    # loaded machine it may have to drop the connection before the peer reaches it (1006
    # at the client). Either way the server must have ended the session with 4410.
    assert code == 4410 or (code == 1006 and "session closed: 4410" in server.log()), code
    for c in (watch, pub):
        await c.close()
