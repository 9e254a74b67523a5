"""One device's bad value never fails the batch it shares with other users' publishes.

The writer commits the publishes of every device in one transaction. A `key` holding
U+0000 (valid JSON: "\\u0000") is a value PostgreSQL refuses; it once failed its whole
batch, so every other user's publish in it was nacked `unavailable`. Here the writer is
held (a table lock in PostgreSQL) so that the bad publish and another user's publish
are certain to share a batch, through a real server on a real PostgreSQL database.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from urllib.parse import urlsplit

import httpx
import peewee as pw
import pytest

from relaybox.protocol.encoding import uuid4
from tests.gateway.helpers import connect_synced, database, device_token, users
from tests.plugin import MakeServer, postgres_url
from tests.support import Server, fresh_database

pytestmark = [pytest.mark.asyncio(loop_scope="function"), pytest.mark.postgres]


@pytest.fixture(scope="module")
def pg_server(module_servers: MakeServer,
              tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, str]]:
    """A server on a PostgreSQL database of its own, and that database's URL."""
    from relaybox.cli.init_cmd import initialise
    from relaybox.config import load_settings

    with fresh_database(postgres_url(), "relaybox_b") as url:
        data_dir = tmp_path_factory.mktemp("batches") / "data"
        data_dir.mkdir()
        (data_dir / "relaybox.toml").write_text(f'database_url = "{url}"\n')
        initialise(load_settings(data_dir, env={}))
        yield module_servers(data_dir, gateway_publish_rate_per_s=0), url


class HeldWriter:
    """Blocks the server's writer on a lock, so that what arrives meanwhile is written
    in one batch once it is released."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.db = pw.PostgresqlDatabase(parts.path.lstrip("/"), user=parts.username,
                                        password=parts.password, host=parts.hostname,
                                        port=parts.port or 5432)

    def __enter__(self) -> HeldWriter:
        self.db.connect()
        self.db.execute_sql("BEGIN")
        # SHARE conflicts with the ROW EXCLUSIVE lock of every INSERT or UPDATE.
        self.db.execute_sql("LOCK TABLE stream_head IN SHARE MODE")
        return self

    async def until_waiting(self) -> None:
        """Until a writer transaction waits for the lock (it holds one batch)."""
        sql = ("SELECT COUNT(*) FROM pg_stat_activity WHERE datname = current_database() "
               "AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()")
        async with asyncio.timeout(15):
            while self.db.execute_sql(sql).fetchone()[0] == 0:
                await asyncio.sleep(0.01)  # nothing to await: PostgreSQL is asked

    def __exit__(self, *exc: object) -> None:
        self.db.execute_sql("COMMIT")
        self.db.close()


async def test_a_nul_key_fails_alone_and_the_other_users_publish_is_acked(
        pg_server: tuple[Server, str]) -> None:
    server, url = pg_server
    [plug], [bad], [good] = users(server, 1, 1, 1)
    c_plug, c_bad, c_good = [await connect_synced(server, d) for d in (plug, bad, good)]
    plug_id, bad_id, good_id = uuid4(), uuid4(), uuid4()
    with HeldWriter(url) as held:
        await c_plug.send({"type": "publish", "id": plug_id, "stream": "plug", "body": 1})
        await held.until_waiting()  # the plug's batch is being written, and waits
        # Sent as the JSON escape \u0000 (json.dumps), which decodes to U+0000.
        await c_bad.send({"type": "publish", "id": bad_id, "stream": "notes", "body": 1,
                          "key": "a\x00b"})
        await c_good.send({"type": "publish", "id": good_id, "stream": "notes", "body": 2})
        # A pong comes after the publish before it went to the writer: both wait there.
        await c_bad.barrier()
        await c_good.barrier()
    acked = await c_good.reply_to(good_id)
    assert acked["type"] == "ack" and acked["seq"] == 1, acked
    refused = await c_bad.reply_to(bad_id)
    assert (refused["type"], refused["code"]) == ("nack", "invalid"), refused
    assert (await c_plug.reply_to(plug_id))["type"] == "ack"
    with database(server) as db:
        keys = db.execute_sql("SELECT user_id, key FROM event WHERE stream = 'notes' "
                              "AND user_id IN (%s, %s)", (bad.user_id, good.user_id)).fetchall()
    assert keys == [(good.user_id, None)]
    # The device that sent it stays connected, and can publish a good key.
    again = await c_bad.publish("notes", 1, key="ab")
    assert (again["type"], again["seq"]) == ("ack", 1)
    for c in (c_plug, c_bad, c_good):
        await c.close()


async def test_a_nul_inside_a_body_is_json_text_and_is_delivered(
        pg_server: tuple[Server, str]) -> None:
    server, _ = pg_server
    a, b = users(server, 2)[0]
    ca, cb = await connect_synced(server, a), await connect_synced(server, b)
    body = {"text": "a\x00b", "list": ["\x00"]}
    acked = await ca.publish("notes", body)
    assert acked["type"] == "ack", acked
    [got] = await cb.events(1, "notes")
    assert got["body"] == body
    await ca.close()
    await cb.close()


async def test_a_nul_key_over_http_is_422(pg_server: tuple[Server, str]) -> None:
    server, _ = pg_server
    [[dev]] = users(server, 1)
    token = device_token(server, dev)
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
        r = await http.post("/api/v1/streams/notes/events",
                            json={"id": uuid4(), "body": 1, "key": "a\x00b"},
                            headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 422, r.text
    assert r.json()["code"] == "invalid"
