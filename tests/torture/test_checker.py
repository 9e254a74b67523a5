"""The checker finds each kind of defect it is there for (a checker that never fails proves
nothing): on a real, migrated SQLite database with the rows a broken server would leave."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from relaybox.store import migrate
from relaybox.store.db import make_sqlite
from tests.torture.checker import check, check_closes, check_logs, percentile
from tests.torture.devices import Closed
from tests.torture.ledger import Fault, Ledger, Published

USER, DEV, SUB = "u" * 36, "d" * 36, "s" * 36


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Any]:
    database = make_sqlite(tmp_path / "relaybox.db")
    database.connect()
    migrate.up(database)
    yield database
    database.close()


def store(db: Any, stream: str, seq: int, pid: str, *, key: str | None = None,
          body: Any = None) -> None:
    db.execute_sql('INSERT INTO "event" (user_id, stream, seq, device_id, client_id, key, '
                   'body, ts) VALUES (?, ?, ?, ?, ?, ?, ?, 0)',
                   (USER, stream, seq, DEV, pid, key, json.dumps(body or {})))
    db.execute_sql('INSERT INTO "stream_head" (user_id, stream, head_seq, floor_seq, '
                   'key_count) VALUES (?, ?, ?, 0, 0) ON CONFLICT (user_id, stream) DO '
                   'UPDATE SET head_seq = excluded.head_seq', (USER, stream, seq))


def published(ledger: Ledger, pid: str, stream: str = "p0", seq: int | None = None,
              **kw: Any) -> None:
    ledger.published[pid] = Published(pid, DEV, USER, stream, **kw)
    if seq is not None:
        ledger.acks[pid] = (stream, seq, 0.0)


def verdict(db: Any, ledger: Ledger) -> list[str]:
    return check(db, ledger, [], [USER], [], shutdown_at=0.0).violations


def test_a_clean_history_passes(db: Any) -> None:
    ledger = Ledger()
    for seq, pid in enumerate(["a", "b", "c"], start=1):
        published(ledger, pid, seq=seq)
        store(db, "p0", seq, pid)
    published(ledger, "k1", "cas", 1, key="k", base_seq=0)
    store(db, "cas", 1, "k1", key="k", body={"base": 0})
    published(ledger, "k2", "cas", key="k", base_seq=0)
    ledger.conflicts["k2"] = 1  # lost the race, and was not stored
    report = check(db, ledger, [], [USER], [], shutdown_at=0.0)
    assert report.ok, report.text()
    assert report.figures["acked"] == 4 and report.figures["lost"] == 0


def test_an_acked_event_that_is_not_stored_is_lost(db: Any) -> None:
    ledger = Ledger()
    published(ledger, "a", seq=1)
    published(ledger, "b", seq=2)
    store(db, "p0", 1, "a")
    assert any("acked publish b" in v and "not stored" in v for v in verdict(db, ledger))


def test_an_event_stored_at_another_seq_than_acked(db: Any) -> None:
    ledger = Ledger()
    published(ledger, "a", seq=2)
    published(ledger, "b", seq=1)
    store(db, "p0", 1, "a")
    store(db, "p0", 2, "b")
    assert any("acked at p0 seq 2 but is stored at p0 seq 1" in v for v in verdict(db, ledger))


def test_a_gap_and_an_event_nobody_published(db: Any) -> None:
    # (A publish stored twice cannot be written here: the schema's unique index on
    # (client_id, device_id) refuses it, and the checker would report it all the same.)
    ledger = Ledger()
    published(ledger, "a", seq=1)
    store(db, "p0", 1, "a")
    store(db, "p0", 3, "ghost")  # seq 2 is missing, and nobody sent "ghost"
    found = verdict(db, ledger)
    assert any("seqs not 1..n (missing [2]" in v for v in found), found
    assert any("ghost" in v and "never published" in v for v in found), found


def test_compare_and_set_over_a_stale_base(db: Any) -> None:
    ledger = Ledger()
    published(ledger, "x", "cas", 1, key="k", base_seq=0)
    published(ledger, "y", "cas", 2, key="k", base_seq=0)  # stale: seq 1 has key k
    store(db, "cas", 1, "x", key="k", body={"base": 0})
    store(db, "cas", 2, "y", key="k", body={"base": 0})
    assert any("stale base" in v and "seq 2" in v for v in verdict(db, ledger))


def test_a_conflict_nack_for_a_stored_event_or_a_head_nobody_has(db: Any) -> None:
    ledger = Ledger()
    published(ledger, "x", "cas", key="k", base_seq=0)
    ledger.conflicts["x"] = 5
    store(db, "cas", 1, "x", key="k", body={"base": 0})
    found = verdict(db, ledger)
    assert any("nacked conflict but is stored" in v for v in found), found
    assert any("names head_seq 5" in v for v in found), found


def test_a_cursor_behind_what_a_normal_close_acknowledged(db: Any) -> None:
    ledger = Ledger()
    ledger.last_acked[SUB] = {"p0": 7}
    db.execute_sql('INSERT INTO "cursor" (device_id, stream, acked_seq) VALUES (?, ?, ?)',
                   (SUB, "p0", 5))
    assert any("cursor 5 after a clean stop" in v for v in verdict(db, ledger))


def test_close_codes_need_a_reason() -> None:
    ledger = Ledger()
    ledger.faults.append(Fault("kill-group", "server", start=10.0, heal=11.0))
    closes = [Closed(10.5, "subscriber", SUB, 1006),  # the server died: expected
              Closed(20.0, "subscriber", SUB, 1006),  # nothing died
              Closed(21.0, "publisher", DEV, 1011),
              Closed(22.0, "publisher", DEV, 1000),
              Closed(40.0, "publisher", DEV, 1001)]  # the clean stop at the end
    found = check_closes(closes, ledger, shutdown_at=30.0)
    assert [v.split(" with ")[1].split(" ")[0] for v in found] == ["1006", "1011"]


def test_a_traceback_in_a_log(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    log.write_text("INFO fine\nERROR relaybox.gateway: session failed\n"
                   "Traceback (most recent call last):\n  File \"x.py\", line 1, in run\n"
                   "ValueError: boom\nINFO next\n")
    (found,) = check_logs([log])
    assert "session failed" in found and "ValueError: boom" in found


def test_percentiles() -> None:
    assert percentile([], 50) is None
    assert percentile([2.0], 99) == 2.0
    assert percentile([1.0, 2.0, 3.0], 50) == 2.0
