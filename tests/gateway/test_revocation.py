"""protocol.md §5 Revocation: the live session closes with 4403 within a second."""

from __future__ import annotations

import time

import pytest

from tests.gateway.conftest import MakeServer
from tests.gateway.helpers import Client, handshake_with, revoke, until_close, users
from tests.support import Server

pytestmark = pytest.mark.asyncio(loop_scope="function")


@pytest.fixture(scope="module")
def server(module_servers: MakeServer) -> Server:
    return module_servers()


async def test_revoked_live_session_closes_within_a_second(server: Server) -> None:
    keep, gone = users(server, 2)[0]
    ck = await Client.connect(server, keep)
    await ck.drain_catch_up()
    cg = await Client.connect(server, gone)
    await cg.drain_catch_up()
    started = time.monotonic()
    revoke(server, gone)
    frames, code = await until_close(cg.ws, timeout=5)
    elapsed = time.monotonic() - started
    assert code == 4403
    assert [f["code"] for f in frames if f["type"] == "error"] == ["revoked"]
    assert elapsed < 1.0, elapsed
    # The other device hears about it; its own session is untouched.
    notice = await ck.expect_type("event")
    assert (notice["stream"], notice["body"]["event"], notice["body"]["device_id"]) == (
        "sys.devices", "device_revoked", gone.device_id)
    await ck.barrier()
    # The next handshake of the revoked device fails.
    ws, _, err = await handshake_with(server, gone.device_id,
                                      lambda m: gone.key.sign(m).signature)
    assert (err["type"], err["code"]) == ("error", "revoked")
    assert (await until_close(ws))[1] == 4403
    await ck.close()
