"""protocol.md §5 Revocation: the live session closes with 4403 within a second."""

from __future__ import annotations

import sqlite3
import time

import pytest

from tests.gateway.helpers import (
    connect_synced,
    database,
    device_token,
    handshake_with,
    raw,
    revoke,
    send_auth,
    until_close,
    until_registered,
    users,
)
from tests.plugin import MakeServer
from tests.support import Server

pytestmark = pytest.mark.asyncio(loop_scope="function")


@pytest.fixture(scope="module")
def server(gateway_servers: MakeServer) -> Server:
    return gateway_servers()


async def test_revoked_live_session_closes_within_a_second(server: Server) -> None:
    keep, gone = users(server, 2)[0]
    ck = await connect_synced(server, keep)
    cg = await connect_synced(server, gone)
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


async def test_a_revoke_landing_between_key_lookup_and_registration_still_closes(
        server: Server) -> None:
    """The device's key was read before the revoke was stored, and the revoke's notice
    went out before the session was registered (here: no notice at all). The positions
    are read in the same transaction as a fresh revocation check: 4403, never welcome."""
    watcher, dev = users(server, 2)[0]
    cw = await connect_synced(server, watcher)
    token = device_token(server, watcher)  # before the lock: it writes
    lock = sqlite3.connect(server.data_dir / "relaybox.db", isolation_level=None)
    try:
        lock.execute("BEGIN IMMEDIATE")  # the server's writer waits: no touch, no welcome
        ws = await raw(server)
        await send_auth(ws, dev)
        # Registered: the key lookup went through and the session waits for the writer.
        await until_registered(server, token, dev.device_id)
        lock.execute("UPDATE device SET revoked_at = 1 WHERE id = ?", (dev.device_id,))
        lock.execute("COMMIT")
    finally:
        if lock.in_transaction:
            lock.execute("ROLLBACK")
        lock.close()
    frames, code = await until_close(ws)
    assert code == 4403
    assert [f["type"] for f in frames] == ["error"] and frames[0]["code"] == "revoked"
    # It never came online for the user's other devices.
    assert [f for f in await cw.barrier() if f["type"] == "presence"] == []
    await cw.close()


async def test_a_known_key_is_refused_once_revoked_even_if_the_notice_never_came(
        server: Server) -> None:
    """The server keeps the keys of devices that authenticated (no database read when
    they come back). A revocation whose notice this server never received (here: written
    straight into the database) still ends the next handshake with 4403, before the
    device is announced online."""
    watcher, dev = users(server, 2)[0]
    cw = await connect_synced(server, watcher)
    c = await connect_synced(server, dev)  # its key is now known to the server
    await c.close()
    await cw.expect(lambda f: f["type"] == "presence" and not f["online"])
    await cw.barrier()  # drops the buffered frames (its `online`)
    with database(server) as db:
        db.execute_sql("UPDATE device SET revoked_at = 1 WHERE id = ?", (dev.device_id,))
    for _ in range(2):  # the key is read again the second time: the same answer
        ws, _, err = await handshake_with(server, dev.device_id,
                                          lambda m: dev.key.sign(m).signature)
        assert (err["type"], err["code"]) == ("error", "revoked")
        assert (await until_close(ws))[1] == 4403
    assert [f for f in await cw.barrier() if f["type"] == "presence"] == []
    # Restored, it gets in again.
    with database(server) as db:
        db.execute_sql("UPDATE device SET revoked_at = NULL WHERE id = ?", (dev.device_id,))
    c = await connect_synced(server, dev)
    assert await cw.expect_type("presence") == {"type": "presence",
                                               "device_id": dev.device_id, "online": True}
    await c.close()
    await cw.close()
