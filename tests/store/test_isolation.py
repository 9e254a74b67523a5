"""A batch isolates its items: a value the database refuses fails only its own item.

Random batches mix good publishes (new, repeated, compare-and-set), cursors and touches
with bad items: values store/intake.py refuses before the batch (NUL, lone surrogates,
too long, wrong type) and values only the database refuses (a CHECK constraint or a
trigger installed here stands for whatever the intake might miss). They go through the
writer thread and the writer process, on SQLite and on PostgreSQL. Every good item must
commit, with gap-free seqs, and every bad one fail alone.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import peewee as pw
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from relaybox.protocol.encoding import dumps, uuid4
from relaybox.store.events import Accepted, PublishRequest, PublishResult, Refused
from relaybox.store.front import EventLog
from relaybox.store.models import Cursor, Device, Event, StreamHead, User
from relaybox.store.writerproc import ProcessEventLog
from tests.store.helpers import hold_writer, spec_for

POISON_BODY = '"poison"'  # refused by the database, not by the intake
POISON_STREAM = "poison"  # a cursor on it is refused by the database
STREAMS = ["a", "b", "c"]
# Keys every database stores: no NUL, no lone surrogate (those are bad items below).
TEXT = st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",))


def install_poison(db: pw.Database) -> tuple[str, str, str]:
    """Constraints that refuse some values, a user and two devices (the second one's
    touches are refused). Returns (user_id, device_id, poison_device_id)."""
    if isinstance(db, pw.PostgresqlDatabase):
        db.execute_sql(f"ALTER TABLE event ADD CONSTRAINT poison CHECK (body <> '{POISON_BODY}')")
        db.execute_sql('ALTER TABLE "cursor" ADD CONSTRAINT poison '
                       f"CHECK (stream <> '{POISON_STREAM}')")
        db.execute_sql("ALTER TABLE device ADD CONSTRAINT poison "
                       "CHECK (last_seen_at IS NULL OR name <> 'poison')")
    else:
        for name, table, when in (("event", "event", f"NEW.body = '{POISON_BODY}'"),
                                  ("cursor", '"cursor"', f"NEW.stream = '{POISON_STREAM}'")):
            db.execute_sql(f"CREATE TRIGGER poison_{name} BEFORE INSERT ON {table} "
                           f"WHEN {when} BEGIN SELECT RAISE(ABORT, 'poison'); END")
        db.execute_sql("CREATE TRIGGER poison_device BEFORE UPDATE ON device "
                       "WHEN NEW.name = 'poison' AND NEW.last_seen_at IS NOT NULL "
                       "BEGIN SELECT RAISE(ABORT, 'poison'); END")
    user = User.create(id=uuid4(), name="isolation", created_at=1)
    ok = Device.create(id=uuid4(), user=user, name="ok", public_key=b"k" * 32, created_at=1)
    bad = Device.create(id=uuid4(), user=user, name="poison", public_key=b"p" * 32,
                        created_at=1)
    return user.id, ok.id, bad.id


# -- items -------------------------------------------------------------------------

BAD_PUBLISHES = {
    "nul key": {"key": "a\x00b"},
    "nul body": {"body": '"a\x00b"'},
    "surrogate key": {"key": "\udc80"},
    "surrogate body": {"body": '"\ud800"'},
    "long stream": {"stream": "s" * 65},
    "long id": {"client_id": "c" * 37},
    "long key": {"key": "k" * 300},
    "negative base_seq": {"base_seq": -1},
    "body not text": {"body": 7},
    "refused by the database": {"body": POISON_BODY},
}

items = st.lists(st.one_of(
    st.tuples(st.just("pub"), st.sampled_from(STREAMS),
              st.one_of(st.none(), st.text(TEXT, max_size=8)),
              st.one_of(st.integers(), st.text(max_size=20))),
    st.tuples(st.just("dup"), st.integers(min_value=0, max_value=50)),
    st.tuples(st.just("cas"), st.sampled_from(STREAMS),
              st.integers(min_value=2 ** 62, max_value=2 ** 80)),
    st.tuples(st.just("bad"), st.sampled_from(sorted(BAD_PUBLISHES))),
    st.tuples(st.just("cursor"), st.sampled_from([*STREAMS, POISON_STREAM]),
              st.integers(min_value=0, max_value=2 ** 63 - 1)),
    st.tuples(st.just("touch"), st.booleans()),
), min_size=1, max_size=40)


@dataclass
class Batch:
    """One batch as sent, and what each item should come to."""

    user_id: str
    device_id: str
    pubs: list[PublishRequest]
    good: list[bool]  # per publish: stored (or a repeat of a stored one)
    repeats: dict[int, int]  # publish index -> index of the publish it repeats
    cursors: dict[tuple[str, str], int]  # the good ones, newest per (device, stream)
    poison_cursors: list[tuple[str, str, int]]
    touches: list[tuple[str, bool]]  # (device_id, refused)


def build(spec: list[tuple[Any, ...]], device_id: str, poison_device: str) -> Batch:
    user = uuid4()  # a fresh user per example: its streams start at seq 1
    cursor_device = uuid4()
    b = Batch(user, device_id, [], [], {}, {}, [], [])
    for item in spec:
        kind = item[0]
        if kind == "dup" and any(b.good):
            firsts = [i for i, ok in enumerate(b.good) if ok and i not in b.repeats]
            first = firsts[item[1] % len(firsts)]
            orig = b.pubs[first]
            b.pubs.append(PublishRequest(user, device_id, orig.client_id, "b", "0"))
            b.good.append(True)
            b.repeats[len(b.pubs) - 1] = first
        elif kind in ("pub", "dup"):
            stream, key, body = (item[1], item[2], item[3]) if kind == "pub" else ("a", None, 1)
            b.pubs.append(PublishRequest(user, device_id, uuid4(), stream, dumps(body), key))
            b.good.append(True)
        elif kind == "cas":
            b.pubs.append(PublishRequest(user, device_id, uuid4(), item[1], "1",
                                         base_seq=item[2]))
            b.good.append(True)
        elif kind == "bad":
            fields: dict[str, Any] = {"user_id": user, "device_id": device_id,
                                      "client_id": uuid4(), "stream": "a", "body": "1"}
            fields.update(BAD_PUBLISHES[item[1]])
            b.pubs.append(PublishRequest(**fields))
            b.good.append(False)
        elif kind == "cursor":
            if item[1] == POISON_STREAM:
                b.poison_cursors.append((cursor_device, item[1], item[2]))
            else:
                k = (cursor_device, item[1])
                b.cursors[k] = max(b.cursors.get(k, -1), item[2])
        else:
            b.touches.append((poison_device, True) if item[1] else (device_id, False))
    return b


# -- the writers -------------------------------------------------------------------

class Writer:
    """A writer thread or a writer process on its own event loop, fed whole batches."""

    def __init__(self, db: pw.Database, kind: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.kind = kind
        self.log: EventLog = (EventLog(db, read_threads=1) if kind == "thread"
                              else ProcessEventLog(db, spec_for(db), read_threads=1))
        self.log.start(self.loop)
        self.loop.run_until_complete(self.log.ready())

    def run(self, b: Batch) -> tuple[list[PublishResult], list[Any]]:
        return self.loop.run_until_complete(self._run(b))

    async def _run(self, b: Batch) -> tuple[list[PublishResult], list[Any]]:
        release = self._hold()
        # Queued in one go: one batch (the writer process gets them as one frame).
        pubs = [self.log.publish(r) for r in b.pubs]
        for (device, stream), seq in b.cursors.items():
            self.log.save_cursor(device, stream, seq)
        for device, stream, seq in b.poison_cursors:
            self.log.save_cursor(device, stream, seq)
        touches = [self.log.touch(device, b.user_id) for device, _ in b.touches]
        done = self.log.probe()  # answered once the cursors before it are committed
        release()
        await done
        results = list(await asyncio.gather(*pubs))
        touched = list(await asyncio.gather(*touches, return_exceptions=True))
        return results, touched

    def _hold(self) -> Any:
        if self.kind != "thread":
            return lambda: None
        return hold_writer(self.log)

    def stop(self) -> None:
        self.loop.run_until_complete(self.loop.run_in_executor(None, self.log.stop))
        self.loop.close()


@pytest.fixture(params=["thread", "process"])
def writer(request: pytest.FixtureRequest, db: pw.Database) -> Iterator[Writer]:
    w = Writer(db, request.param)
    yield w
    w.stop()


def check(b: Batch, results: list[PublishResult], touched: list[Any]) -> None:
    assert len(results) == len(b.pubs)
    seqs: dict[str, int] = {}
    expected_rows = []
    for i, (r, res) in enumerate(zip(b.pubs, results, strict=True)):
        if not b.good[i]:
            assert isinstance(res, Refused) and res.code == "invalid", (r, res)
            continue
        assert isinstance(res, Accepted), (r, res)
        if i in b.repeats:
            first = results[b.repeats[i]]
            assert isinstance(first, Accepted)
            assert res.duplicate and res.event.seq == first.event.seq
            continue
        seqs[r.stream] = seqs.get(r.stream, 0) + 1
        assert not res.duplicate and res.event.seq == seqs[r.stream]  # gap-free, in order
        expected_rows.append((r.stream, res.event.seq, r.client_id, r.body, r.key))
    stored = [(e.stream, e.seq, e.client_id, e.body, e.key)
              for e in Event.select().where(Event.user_id == b.user_id)]
    assert sorted(stored) == sorted(expected_rows)
    heads = {h.stream: h.head_seq for h in
             StreamHead.select().where(StreamHead.user_id == b.user_id)}
    assert {s: h for s, h in heads.items() if h} == seqs
    devices = {c[0] for c in [*b.cursors, *b.poison_cursors]}
    cursors = {(c.device_id, c.stream): c.acked_seq
               for c in Cursor.select().where(Cursor.device_id.in_(devices))}
    assert cursors == b.cursors
    for (_, refused), got in zip(b.touches, touched, strict=True):
        if refused:
            assert isinstance(got, Exception), got
        else:
            positions, _, revoked = got
            assert positions == {s: (h, 0) for s, h in seqs.items()} and not revoked


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(spec=items)
def test_every_good_item_commits_and_every_bad_one_fails_alone(
        writer: Writer, db: pw.Database, spec: list[tuple[Any, ...]]) -> None:
    _, device_id, poison_device = _devices(db)
    b = build(spec, device_id, poison_device)
    results, touched = writer.run(b)
    check(b, results, touched)
    assert writer.log.healthy


def _devices(db: pw.Database) -> tuple[str, str, str]:
    """The poison, installed once per database (hypothesis runs the test many times with
    the same fixtures)."""
    found = {d.name: d for d in Device.select().where(Device.name.in_(["ok", "poison"]))}
    if not found:
        return install_poison(db)
    return found["ok"].user_id, found["ok"].id, found["poison"].id
