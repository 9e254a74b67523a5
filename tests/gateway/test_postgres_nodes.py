"""Two server nodes on PostgreSQL and one Redis: the deployment for more than one machine.

Each node has a data dir of its own (its own config, secrets file and run dir), and both
name the same PostgreSQL database and the same Redis in their relaybox.toml, as two
machines would. Everything a device sees must be the same whichever node it uses.
"""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import urlsplit

import httpx
import pytest

from relaybox.bus import EmbeddedRedis, url_from_socket
from tests.gateway.helpers import (
    Client,
    connect_synced,
    database,
    handshake_with,
    publish_on_both,
    until_close,
    users,
)
from tests.plugin import MakeServer, postgres_url
from tests.support import Server, fresh_database, pg_admin

pytestmark = [pytest.mark.asyncio(loop_scope="function"), pytest.mark.postgres]


@pytest.fixture(scope="module")
def pg_url() -> Iterator[str]:
    """A fresh PostgreSQL database for the module's two nodes."""
    with fresh_database(postgres_url(), "relaybox_n") as url:
        yield url


@pytest.fixture(scope="module")
def shared_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Redis server of its own, standing in for the one the nodes' machines share."""
    server = EmbeddedRedis(tmp_path_factory.mktemp("redis"))
    yield url_from_socket(server.start())
    server.stop()


@pytest.fixture(scope="module")
def nodes(module_servers: MakeServer, tmp_path_factory: pytest.TempPathFactory,
          pg_url: str, shared_redis: str) -> tuple[Server, Server]:
    from relaybox.cli.init_cmd import initialise
    from relaybox.config import load_settings

    started = []
    for i in range(2):
        data_dir = tmp_path_factory.mktemp(f"node{i}") / "data"
        data_dir.mkdir()
        (data_dir / "relaybox.toml").write_text(
            f'database_url = "{pg_url}"\nredis_url = "{shared_redis}"\n')
        settings = load_settings(data_dir, env={})
        assert settings.sqlite_path is None  # really PostgreSQL
        if i == 0:
            initialise(settings)  # creates the schema and the server's identity
        started.append(module_servers(data_dir, gateway_publish_rate_per_s=0))
    return started[0], started[1]


async def test_both_nodes_are_one_server(nodes: tuple[Server, Server]) -> None:
    # One identity: the server_id lives in the shared database, not in a data dir, so
    # a device's signature (which covers it) is good on either node.
    ids = {httpx.get(node.url + "/api/v1/status", timeout=5).json()["server_id"]
           for node in nodes}
    assert len(ids) == 1
    for node in nodes:  # and no SQLite file beside PostgreSQL
        assert not (node.data_dir / "relaybox.db").exists()
    [a] = users(nodes[0], 1)[0]
    for node in nodes:
        c = await Client.connect(node, a)
        assert c.welcome["type"] == "welcome"
        await c.close()


async def test_concurrent_publishers_on_two_nodes_share_one_gap_free_seq(
        nodes: tuple[Server, Server]) -> None:
    first, second = nodes
    n = 200
    user_id = await publish_on_both(first, second, n)
    with database(first) as db:
        stored = db.execute_sql(
            "SELECT COUNT(*), COUNT(DISTINCT seq), MAX(seq) FROM event "
            "WHERE user_id = %s AND stream = 'shared'", (user_id,)).fetchone()
    assert tuple(stored) == (2 * n, 2 * n, 2 * n)


async def test_a_device_offline_catches_up_on_the_other_node(
        nodes: tuple[Server, Server]) -> None:
    first, second = nodes
    a, b = users(first, 2)[0]
    ca = await connect_synced(first, a)
    acks = await ca.publish_many("notes", [f"n{i}" for i in range(50)])
    cb = await Client.connect(second, b)  # offline until now, on the other node
    got = await cb.events(50, "notes")
    assert [e["seq"] for e in got] == [f["seq"] for f in acks]
    assert (await cb.expect_type("synced"))["type"] == "synced"
    await ca.close()
    await cb.close()


async def test_revoking_through_one_node_closes_the_session_on_the_other(
        nodes: tuple[Server, Server], shared_redis: str) -> None:
    from relaybox.bus import SyncBus
    from relaybox.services.devices import revoke_device
    from relaybox.services.notify import Notifier
    from relaybox.store.models import Device

    first, second = nodes
    keep, gone = users(first, 2)[0]
    ck = await connect_synced(first, keep)
    cg = await connect_synced(second, gone)
    # As the CLI does it: on the shared database, then announced on the shared Redis.
    with database(first) as db:
        change = revoke_device(db, Device.get_by_id(gone.device_id))
    bus = SyncBus(shared_redis)
    try:
        Notifier(bus).notify_blocking(change)
    finally:
        bus.close()
    frames, code = await until_close(cg.ws, timeout=5)
    assert code == 4403
    assert [f["code"] for f in frames if f["type"] == "error"] == ["revoked"]
    notice = await ck.expect_type("event")
    assert (notice["stream"], notice["body"]["event"], notice["body"]["device_id"]) == (
        "sys.devices", "device_revoked", gone.device_id)
    # Neither node lets it back in.
    for node in nodes:
        ws, _, err = await handshake_with(node, gone.device_id,
                                          lambda m: gone.key.sign(m).signature)
        assert (err["type"], err["code"]) == ("error", "revoked")
        assert (await until_close(ws))[1] == 4403
    await ck.close()


async def test_reads_survive_connections_the_database_dropped(
        nodes: tuple[Server, Server], pg_url: str) -> None:
    """An administrator (or a failover) ends every connection of the database: the next
    handshakes, which read the device's key and the stream positions in the reader pool,
    succeed on fresh connections instead of failing with 1001 and a traceback."""
    first, _ = nodes
    a, b = users(first, 2)[0]
    c = await connect_synced(first, a)  # the reader threads have connections now
    await c.close()
    name = urlsplit(pg_url).path.lstrip("/")
    admin = pg_admin(postgres_url())
    try:
        ended = admin.execute_sql(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = %s AND pid <> pg_backend_pid()", (name,)).fetchone()[0]
    finally:
        admin.close()
    assert ended > 0
    for dev in (b, a):  # b is not cached: its key is read from the database
        again = await connect_synced(first, dev)
        await again.barrier()
        await again.close()
    assert "Traceback" not in first.log()
