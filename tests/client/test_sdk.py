"""The device SDK against a real server: delivery, acks, refusals, retries, stop conditions."""

from __future__ import annotations

import asyncio
import dataclasses
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from relaybox.client import (
    AuthFailedError,
    Client,
    ConflictError,
    Event,
    PublishError,
    RevokedError,
    ServerMismatchError,
    SessionReplacedError,
)
from relaybox.client.positions import StateFile
from relaybox.protocol.encoding import uuid4, uuid7
from tests.client.conftest import Proxy, fast_client, new_devices
from tests.support import Server


async def next_event(it: object, timeout: float = 10) -> Event:
    item = await asyncio.wait_for(anext(it), timeout)  # type: ignore[call-overload]
    assert isinstance(item, Event), item
    return item


async def test_events_arrive_in_order_and_acks_survive_reconnect(server: Server) -> None:
    a, b = new_devices(server)
    async with Client(a) as pub:
        seqs = [await pub.publish("notes", {"n": i}) for i in range(3)]
        assert seqs == [1, 2, 3]
        async with Client(b) as sub:
            it = sub.events(["notes"])
            got = [await next_event(it) for _ in range(3)]
        assert [(e.seq, e.body, e.from_device) for e in got] == [
            (1, {"n": 0}, a.device_id), (2, {"n": 1}, a.device_id), (3, {"n": 2}, a.device_id)]
        # Closing acked everything handed out: a new session starts after seq 3.
        async with Client(b) as sub:
            await sub.wait_synced()
            marker = await pub.publish("notes", {"n": "marker"})
            first = await next_event(sub.events(["notes"]))
        assert (first.seq, first.body) == (marker, {"n": "marker"})


async def test_item_in_hand_at_an_exception_is_delivered_again(server: Server) -> None:
    a, b = new_devices(server)
    async with Client(a) as pub:
        await pub.publish("jobs", {"job": 1})
        with pytest.raises(RuntimeError):
            async with Client(b) as sub:
                await next_event(sub.events(["jobs"]))
                raise RuntimeError("the application failed while handling the event")
        async with Client(b) as sub:
            again = await next_event(sub.events(["jobs"]))
    assert (again.seq, again.body) == (1, {"job": 1})


async def test_server_id_mismatch_is_refused(server: Server) -> None:
    (a,) = new_devices(server, 1)
    other = dataclasses.replace(a, server_id=uuid7())
    with pytest.raises(ServerMismatchError, match="refusing to authenticate"):
        async with Client(other):
            pass


async def test_unknown_device_fails_authentication(server: Server) -> None:
    (a,) = new_devices(server, 1)
    stranger = dataclasses.replace(a, device_id=uuid7())
    with pytest.raises(AuthFailedError):
        async with Client(stranger):
            pass


async def test_conflict_carries_head_seq(server: Server) -> None:
    (a,) = new_devices(server, 1)
    async with Client(a) as c:
        first = await c.publish("todo", {"v": 1}, key="list", base_seq=0)
        with pytest.raises(ConflictError) as info:
            await c.publish("todo", {"v": 2}, key="list", base_seq=0)
        assert info.value.head_seq == first
        assert await c.publish("todo", {"v": 2}, key="list", base_seq=first) == first + 1


async def test_refused_publishes_raise_publish_error(server: Server) -> None:
    (a,) = new_devices(server, 1)
    async with Client(a) as c:
        with pytest.raises(PublishError) as forbidden:
            await c.publish("sys.devices", {})
        assert forbidden.value.code == "forbidden"
        with pytest.raises(PublishError) as too_large:
            await c.publish("big", "x" * (c.welcome["max_body_bytes"] + 1))
        assert too_large.value.code == "too_large"
        # The session is still usable after a nack.
        assert await c.publish("big", "small") == 1


async def test_same_id_published_again_gets_the_same_seq(server: Server) -> None:
    a, b = new_devices(server)
    event_id = uuid4()
    async with Client(a) as c:
        seq = await c.publish("clip", {"text": "once"}, id=event_id)
    async with Client(a) as c:
        assert await c.publish("clip", {"text": "twice?"}, id=event_id) == seq
        marker = await c.publish("clip", {"text": "marker"})
    assert marker == seq + 1
    async with Client(b) as sub:
        it = sub.events(["clip"])
        bodies = [(await next_event(it)).body for _ in range(2)]
    assert bodies == [{"text": "once"}, {"text": "marker"}]


async def test_unacked_publish_is_resent_after_reconnect_and_stored_once(
        server: Server, make_proxy: Callable[[int], Proxy]) -> None:
    a, b = new_devices(server)
    proxy = make_proxy(server.port)
    await proxy.start()
    via_proxy = dataclasses.replace(a, server=f"http://127.0.0.1:{proxy.port}")
    async with Client(b) as sub, fast_client(via_proxy) as pub:
        it = sub.events(["clip"])
        proxy.mute_downstream = True  # the server's ack will not reach the publisher
        publish = asyncio.create_task(pub.publish("clip", {"text": "hello"}))
        stored = await next_event(it)  # stored and delivered, but not acked to pub
        assert not publish.done()
        proxy.mute_downstream = False
        proxy.cut()
        assert await asyncio.wait_for(publish, 10) == stored.seq
        assert pub.sessions == 2 and proxy.connections == 2
        # Stored once: the next event gets the next seq and is the next one delivered.
        marker = await pub.publish("clip", {"text": "marker"})
        assert marker == stored.seq + 1
        assert (await next_event(it)).body == {"text": "marker"}


async def test_second_session_of_a_device_replaces_the_first(server: Server) -> None:
    (a,) = new_devices(server, 1)
    async with Client(a) as first:
        it = first.events()
        async with Client(a) as second:
            with pytest.raises(SessionReplacedError):
                while True:
                    await asyncio.wait_for(anext(it), 10)
            with pytest.raises(SessionReplacedError):
                await first.publish("x", 1)
            assert await second.publish("x", 1) == 1


async def test_revoked_device_stops_with_revoked_error(server: Server) -> None:
    _, b = new_devices(server)
    async with Client(b) as victim:
        it = victim.events(["none"])
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "relaybox", "--data-dir", str(server.data_dir),
            "device", "revoke", b.device_id, stdout=subprocess.DEVNULL)
        assert await proc.wait() == 0
        with pytest.raises(RevokedError):
            await asyncio.wait_for(anext(it), 10)
    with pytest.raises(RevokedError):
        async with Client(b):
            pass


async def test_state_file_drops_events_a_previous_run_handed_out(server: Server,
                                                                 tmp_path: Path) -> None:
    a, b = new_devices(server)
    async with Client(a) as pub:
        for i in range(1, 6):
            await pub.publish("feed", {"i": i})
    state = tmp_path / "b.cursors.json"
    # As left by an earlier run that handled 1..3 while the server lost its cursor.
    StateFile(state, b.device_id).save({"feed": 3})
    async with Client(b, state_file=state) as sub:
        it = sub.events(["feed"])
        assert [(await next_event(it)).seq for _ in range(2)] == [4, 5]
    assert StateFile(state, b.device_id).load()["feed"] == 5
    # The duplicates were acked too: without the state file nothing old comes again.
    async with Client(a) as pub, Client(b) as sub:
        await sub.wait_synced()
        marker = await pub.publish("feed", {"i": "marker"})
        assert (await next_event(sub.events(["feed"]))).seq == marker


async def test_publish_waits_for_an_unreachable_server(server: Server,
                                                       tmp_path: Path) -> None:
    (a,) = new_devices(server, 1)
    nowhere = dataclasses.replace(a, server="http://127.0.0.1:9")
    async with fast_client(nowhere) as c:
        assert not c.connected
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.5):
                await c.publish("x", 1)
        assert c.last_error
