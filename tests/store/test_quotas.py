"""Quotas in the writer's transaction (store/quotas.py), on SQLite and PostgreSQL: streams
per user, distinct keys per stream, stored bytes per user; sys. streams exempt; the
counters kept by every batch and by retention; exact across two writer processes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import peewee as pw
import pytest

from relaybox.config import load_settings
from relaybox.protocol.encoding import uuid4
from relaybox.services import retention
from relaybox.store.append import append_now
from relaybox.store.events import Accepted, Conflicted, PublishRequest, PublishResult, Refused
from relaybox.store.front import EventLog
from relaybox.store.models import StreamHead, User
from relaybox.store.quotas import Quotas
from relaybox.store.writerproc import ProcessEventLog
from tests.store.helpers import spec_for

pytestmark = pytest.mark.asyncio(loop_scope="function")
D1 = "d1-" + "0" * 33
QUOTAS = Quotas(streams_per_user=3, keys_per_stream=3, stored_bytes_per_user=100)


def new_user() -> str:
    user = User.create(id=uuid4(), name=f"u{uuid4()[:12]}", created_at=1)
    return str(user.id)


def req(user: str, stream: str, body: str = "1", key: str | None = None,
        base_seq: int | None = None) -> PublishRequest:
    return PublishRequest(user, D1, uuid4(), stream, body, key, base_seq)


def quota_of(res: PublishResult) -> str | None:
    if isinstance(res, Accepted):
        return None
    assert isinstance(res, Refused) and res.code == "forbidden", res
    return res.quota


class Log:
    def __init__(self, db: pw.Database) -> None:
        self.log = EventLog(db, read_threads=1, quotas=QUOTAS)
        self.log.start(asyncio.get_running_loop())

    async def publish(self, *reqs: PublishRequest) -> list[str | None]:
        """One batch; each result's quota (None when stored)."""
        return [quota_of(r) for r in await asyncio.gather(*(self.log.publish(r)
                                                             for r in reqs))]


@pytest.fixture(params=["upsert-returning", "general"])
async def log(request: pytest.FixtureRequest, db: pw.Database,
              monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Log]:
    """Both append paths: plain batches (then written again checking each publish when
    over) and the general path (compare-and-set, or SQLite before 3.35)."""
    from relaybox.store import append

    monkeypatch.setattr(append, "_HAS_RETURNING", request.param == "upsert-returning")
    lg = Log(db)
    yield lg
    await asyncio.get_running_loop().run_in_executor(None, lg.log.stop)


def streams_of(user: str) -> dict[str, tuple[int, int]]:
    return {h.stream: (h.head_seq, h.key_count)
            for h in StreamHead.select().where(StreamHead.user_id == user)}


def stored_bytes(user: str) -> int:
    return int(User.get_by_id(user).stored_bytes)


async def test_streams_quota_refuses_new_streams_in_arrival_order(log: Log) -> None:
    user = new_user()
    got = await log.publish(*(req(user, f"s{i}") for i in range(6)), req(user, "s0"))
    assert got == [None, None, None, "streams", "streams", "streams", None]
    assert sorted(streams_of(user)) == ["s0", "s1", "s2"]  # no empty head left behind
    # Later batches too; the existing streams take any number of events.
    assert await log.publish(req(user, "s9"), req(user, "s1")) == ["streams", None]
    other = new_user()
    assert await log.publish(*(req(other, f"s{i}") for i in range(3))) == [None] * 3


async def test_keys_quota_counts_distinct_keys_per_stream(log: Log) -> None:
    user = new_user()
    got = await log.publish(req(user, "a", key="k0"), req(user, "a", key="k1"),
                            req(user, "a", key="k0"), req(user, "a", key="k2"),
                            req(user, "a", key="k3"), req(user, "a"), req(user, "b", key="k3"))
    assert got == [None, None, None, None, "keys", None, None]
    assert await log.publish(req(user, "a", key="k4"), req(user, "a", key="k1")) == [
        "keys", None]
    assert streams_of(user) == {"a": (6, 3), "b": (1, 1)}


async def test_bytes_quota_counts_body_bytes(log: Log) -> None:
    user = new_user()
    body = '"' + "é" * 19 + '"'  # 40 UTF-8 bytes
    got = await log.publish(req(user, "a", body), req(user, "a", body), req(user, "a", body),
                            req(user, "a", '"' + "x" * 18 + '"'))
    assert got == [None, None, "bytes", None]
    assert stored_bytes(user) == 100
    assert await log.publish(req(user, "a", "1")) == ["bytes"]


async def test_compare_and_set_batches_check_quotas_too(log: Log) -> None:
    user = new_user()
    got = await log.publish(*(req(user, f"s{i}", base_seq=0) for i in range(4)))
    assert got == [None, None, None, "streams"]
    assert await log.publish(req(user, "s0", base_seq=1), req(user, "s3", base_seq=0)) == [
        None, "streams"]
    # A conflict is still answered as a conflict.
    res = await log.log.publish(req(user, "s0", base_seq=0))
    assert isinstance(res, Conflicted) and res.head_seq == 2


async def test_sys_streams_are_exempt(log: Log, db: pw.Database) -> None:
    user = new_user()
    assert await log.publish(*(req(user, f"s{i}", key=f"k{i}") for i in range(3))) == [None] * 3
    notices = [PublishRequest(user, None, uuid4(), "sys.devices", '"' + "n" * 200 + '"',
                              key=f"k{i}") for i in range(5)]
    assert all(isinstance(r, Accepted) for r in append_now(db, notices))
    got = await log.publish(PublishRequest(user, None, uuid4(), "sys.other", '"' + "n" * 200 + '"'))
    assert got == [None]
    assert stored_bytes(user) == 3  # only the user's own bodies
    assert streams_of(user)["sys.devices"] == (5, 0)


async def test_retention_gives_the_bytes_back(log: Log, db: pw.Database,
                                              tmp_path: Any) -> None:
    user = new_user()
    body = '"' + "x" * 38 + '"'  # 40 bytes
    assert await log.publish(req(user, "a", body), req(user, "a", body)) == [None, None]
    assert await log.publish(req(user, "a", body)) == ["bytes"]
    settings = load_settings(tmp_path, env={"RELAYBOX_RETENTION_MAX_EVENTS_PER_STREAM": "1"})
    report = await asyncio.get_running_loop().run_in_executor(
        None, lambda: retention.prune(db, settings, 1, pause_s=0))
    assert report.events >= 1
    assert stored_bytes(user) == 40
    assert await log.publish(req(user, "a", body)) == [None]


async def test_counters_are_kept_without_quotas(db: pw.Database) -> None:
    user = new_user()
    results = append_now(db, [req(user, "a", '"ab"', key="k"), req(user, "a", "1", key="k"),
                              req(user, "a", "1", key="j")])
    assert all(isinstance(r, Accepted) for r in results)
    assert streams_of(user) == {"a": (3, 2)}
    assert stored_bytes(user) == 6


@pytest.mark.parametrize("writers", [2])
async def test_two_writer_processes_never_pass_the_streams_quota(
        db: pw.Database, writers: int) -> None:
    """Two writer processes (as two server processes or nodes) create new streams for
    one user at once: exactly the quota's number of streams exist in the end."""
    user = new_user()
    spec = {**spec_for(db), "quotas": (5, 0, 0)}
    logs = [ProcessEventLog(db, spec, read_threads=1) for _ in range(writers)]
    for lg in logs:
        lg.start(asyncio.get_running_loop())
    try:
        await asyncio.gather(*(lg.ready() for lg in logs))
        # Each writer gets its own new streams, in several batches, at the same time.
        futs = [lg.publish(req(user, f"w{w}-{i}")) for i in range(20)
                for w, lg in enumerate(logs)]
        results = await asyncio.gather(*futs)
    finally:
        await asyncio.gather(*(asyncio.get_running_loop().run_in_executor(None, lg.stop)
                               for lg in logs))
    stored = [r for r in results if isinstance(r, Accepted)]
    refused = [r for r in results if isinstance(r, Refused)]
    assert len(stored) == 5 and len(refused) == len(results) - 5
    assert {r.quota for r in refused} == {"streams"}
    assert len(streams_of(user)) == 5
