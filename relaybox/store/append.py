"""Storing publishes inside the caller's transaction: seqs, duplicates, compare-and-set
and quotas (the statements beside them are in store/sql.py)."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Set
from typing import Any

import peewee as pw

from relaybox.protocol.encoding import format_ts, now_ms
from relaybox.store.db import is_postgres, write_transaction
from relaybox.store.events import (
    Accepted,
    Conflicted,
    PublishRequest,
    PublishResult,
    Refused,
    StoredEvent,
)
from relaybox.store.intake import publish_problem
from relaybox.store.quotas import (
    OverQuota,
    Quotas,
    add_bytes,
    body_bytes,
    counted,
    lock_users,
    new_keys,
    save_bytes,
    stream_count,
)
from relaybox.store.sql import KEY_HEAD_SQL, executemany

# INSERT … RETURNING needs SQLite 3.35 (PostgreSQL has it); older SQLite takes the general path.
_HAS_RETURNING = sqlite3.sqlite_version_info >= (3, 35, 0)
_ROWS_PER_INSERT = 100  # 800 parameters: under SQLite's oldest limit of 999


def append(db: pw.Database, reqs: list[PublishRequest], ts: int, *,
           assume_new: bool = False, quotas: Quotas | None = None, careful: bool = False,
           seen_keys: Set[tuple[str, str, str]] = frozenset()
           ) -> tuple[list[PublishResult], list[StoredEvent]]:
    """Store publishes inside the caller's write transaction (one ``ts`` per batch).

    Assigns seq per (user, stream) without gaps, deduplicates by (device, id) and applies
    compare-and-set. On SQLite the transaction must hold the write lock (BEGIN IMMEDIATE);
    on PostgreSQL the heads are locked here with SELECT … FOR UPDATE.

    ``assume_new``: skip the query for stored duplicates (duplicates within ``reqs`` are
    still found) when there is no compare-and-set; a publish that repeats a stored event
    then makes the insert raise ``IntegrityError`` and the caller, after rolling back,
    calls again without it.

    ``quotas`` (store/quotas.py): a batch is first written as if no quota were reached,
    and checked after; if one is passed, ``OverQuota`` is raised and the caller, after
    rolling back, calls again with ``careful``, which checks publish by publish and
    answers those over a quota ``Refused("forbidden", quota=…)``. The quota counters are
    kept up to date with or without ``quotas``. ``seen_keys``: (user_id, stream, key)
    known to be stored already (the writer's memory), not looked up again.
    """
    if not reqs:
        return [], []
    problems = [publish_problem(r) for r in reqs]
    if any(problems):
        # Refused before the batch is written (store/intake.py): the rest goes on.
        ok = [r for r, problem in zip(reqs, problems, strict=True) if problem is None]
        stored, events = append(db, ok, ts, assume_new=assume_new, quotas=quotas,
                                careful=careful, seen_keys=seen_keys)
        it = iter(stored)
        return [next(it) if problem is None else Refused("invalid", problem)
                for problem in problems], events
    pg = is_postgres(db)
    p = "%s" if pg else "?"
    ts_text = format_ts(ts)  # formatted once per batch
    plain = _HAS_RETURNING and not careful and all(r.base_seq is None for r in reqs)
    if assume_new and plain:
        return _append_plain(db, p, reqs, ts, ts_text, {}, quotas, seen_keys)

    # Deduplicate by (device, id): one query per batch (protocol.md §3 Publish).
    ids = list({r.client_id for r in reqs if r.device_id is not None})
    known: dict[tuple[str, str], StoredEvent] = {}
    for chunk_start in range(0, len(ids), 500):
        chunk = ids[chunk_start:chunk_start + 500]
        sql = ("SELECT user_id, stream, seq, client_id, device_id, key, ts, body FROM event "
               f"WHERE client_id IN ({','.join([p] * len(chunk))})")
        for row in db.execute_sql(sql, chunk).fetchall():
            ev = StoredEvent(row[0], row[1], row[2], row[3], row[4], row[5], row[6], row[7])
            if ev.device_id is not None:
                known[(ev.device_id, ev.id)] = ev

    if plain:
        return _append_plain(db, p, reqs, ts, ts_text, known, quotas, seen_keys)
    # The general path checks each publish against the quotas as it goes.
    return _append_general(db, p, pg, reqs, ts, ts_text, known, quotas, seen_keys)


def _append_plain(db: pw.Database, p: str, reqs: list[PublishRequest], ts: int, ts_text: str,
                  known: dict[tuple[str, str], StoredEvent], quotas: Quotas | None,
                  seen_keys: Set[tuple[str, str, str]]
                  ) -> tuple[list[PublishResult], list[StoredEvent]]:
    """No compare-and-set in the batch: each stream's seqs come from one upsert of its head
    (… RETURNING head_seq, which also locks the row on PostgreSQL) and the events go in with
    one multi-row INSERT: a handful of statements per batch, whatever its size. Quotas are
    checked once the counters are updated (and raise ``OverQuota``)."""
    first: dict[tuple[str, str], int] = {}  # (device, id) -> index of its first publish
    counts: dict[tuple[str, str], int] = {}
    fresh: list[int] = []
    keyed: set[tuple[str, str, str]] = set()
    added: dict[str, int] = {}  # user -> body bytes stored now
    for i, r in enumerate(reqs):
        if r.device_id is not None:
            k = (r.device_id, r.client_id)
            if k in known or k in first:
                continue  # a duplicate of a stored event or of an earlier one in this batch
            first[k] = i
        fresh.append(i)
        hk = (r.user_id, r.stream)
        counts[hk] = counts.get(hk, 0) + 1
        if counted(r.stream):
            added[r.user_id] = added.get(r.user_id, 0) + body_bytes(r.body)
            if r.key is not None:
                keyed.add((r.user_id, r.stream, r.key))
    keyed -= seen_keys
    key_added: dict[tuple[str, str], int] = {}
    for user_id, stream, _ in new_keys(db, p, keyed) if keyed else ():
        key_added[(user_id, stream)] = key_added.get((user_id, stream), 0) + 1
    next_seq: dict[tuple[str, str], int] = {}
    created: set[str] = set()  # users who may have a new stream
    over: set[str] = set()
    # Sorted: every writer locks heads in one order (PostgreSQL), so none deadlock.
    for (user_id, stream), n in sorted(counts.items()):
        more_keys = key_added.get((user_id, stream), 0)
        head, key_count = db.execute_sql(
            f"INSERT INTO stream_head (user_id, stream, head_seq, floor_seq, key_count) "
            f"VALUES ({p}, {p}, {p}, 0, {p}) ON CONFLICT (user_id, stream) DO UPDATE SET "
            "head_seq = stream_head.head_seq + excluded.head_seq, "
            "key_count = stream_head.key_count + excluded.key_count "
            "RETURNING head_seq, key_count", (user_id, stream, n, more_keys)).fetchone()
        next_seq[(user_id, stream)] = int(head) - n + 1
        if quotas and counted(stream):
            if head == n:
                created.add(user_id)
            if more_keys and 0 < quotas.keys_per_stream < key_count:
                over.add(user_id)
    totals = add_bytes(db, p, added) if added else {}  # locks these users' rows
    if quotas:
        limit = quotas.stored_bytes_per_user
        if limit:
            over.update(u for u, total in totals.items() if total > limit)
        limit = quotas.streams_per_user
        if limit:
            over.update(u for u in created - over if stream_count(db, p, u) > limit)
        if over:
            raise OverQuota(over)
    events: dict[int, StoredEvent] = {}
    rows: list[Any] = []
    for i in fresh:
        r = reqs[i]
        hk = (r.user_id, r.stream)
        seq = next_seq[hk]
        next_seq[hk] = seq + 1
        events[i] = StoredEvent(r.user_id, r.stream, seq, r.client_id, r.device_id, r.key, ts,
                                r.body, ts_text)
        rows.extend((r.user_id, r.stream, seq, r.device_id, r.client_id, r.key, r.body, ts))
    values = f"({p}, {p}, {p}, {p}, {p}, {p}, {p}, {p})"
    for start in range(0, len(fresh), _ROWS_PER_INSERT):
        n = min(_ROWS_PER_INSERT, len(fresh) - start)
        db.execute_sql(
            "INSERT INTO event (user_id, stream, seq, device_id, client_id, key, body, ts) "
            f"VALUES {', '.join([values] * n)}", rows[start * 8:(start + n) * 8])
    results: list[PublishResult] = []
    for i, r in enumerate(reqs):
        ev = events.get(i)
        if ev is not None:
            results.append(Accepted(ev, duplicate=False))
        else:
            assert r.device_id is not None
            k = (r.device_id, r.client_id)
            prior = known.get(k) or events[first[k]]
            results.append(Accepted(prior, duplicate=True))
    return results, [events[i] for i in fresh]


class _Budget:
    """What the users of a careful batch may still add (store/quotas.py), as of the rows
    locked in this transaction."""

    def __init__(self, db: pw.Database, p: str, pg: bool, quotas: Quotas,
                 users: list[str], created: set[tuple[str, str]]) -> None:
        self.quotas = quotas
        self.bytes = lock_users(db, p, pg, users)  # locked before the streams are counted
        self.streams: dict[str, int] = {}
        if quotas.streams_per_user:
            for user_id in sorted({u for u, _ in created}):
                self.streams[user_id] = (quotas.streams_per_user
                                         - stream_count(db, p, user_id))

    def refusal(self, r: PublishRequest, new_stream: bool, new_key: bool, key_count: int,
                size: int) -> str | None:
        q = self.quotas
        if new_stream and q.streams_per_user and self.streams.get(r.user_id, 0) <= 0:
            return "streams"
        if new_key and q.keys_per_stream and key_count >= q.keys_per_stream:
            return "keys"
        if (q.stored_bytes_per_user and r.user_id in self.bytes
                and self.bytes[r.user_id] + size > q.stored_bytes_per_user):
            return "bytes"
        return None

    def take(self, r: PublishRequest, new_stream: bool, size: int) -> None:
        if new_stream and r.user_id in self.streams:
            self.streams[r.user_id] -= 1
        if r.user_id in self.bytes:
            self.bytes[r.user_id] += size


def _append_general(db: pw.Database, p: str, pg: bool, reqs: list[PublishRequest], ts: int,
                    ts_text: str, known: dict[tuple[str, str], StoredEvent],
                    quotas: Quotas | None, seen_keys: Set[tuple[str, str, str]]
                    ) -> tuple[list[PublishResult], list[StoredEvent]]:
    """Any batch (compare-and-set included): heads read under lock, checked one by one;
    with ``quotas``, each publish is checked against them too."""
    results: list[PublishResult | None] = [None] * len(reqs)
    # Lock and read the heads of every stream this batch touches.
    pairs = sorted({(r.user_id, r.stream) for r in reqs})
    heads: dict[tuple[str, str], int] = {}
    key_counts: dict[tuple[str, str], int] = {}
    conflict_clause = "ON CONFLICT (user_id, stream) DO NOTHING"
    executemany(db, "INSERT INTO stream_head (user_id, stream, head_seq, floor_seq, "
                f"key_count) VALUES ({p}, {p}, 0, 0, 0) {conflict_clause}", pairs)
    lock = " FOR UPDATE" if pg else ""
    for chunk_start in range(0, len(pairs), 400):
        pair_chunk = pairs[chunk_start:chunk_start + 400]
        where = " OR ".join([f"(user_id = {p} AND stream = {p})"] * len(pair_chunk))
        flat = [v for pair in pair_chunk for v in pair]
        for u, s, h, kc in db.execute_sql(
                f"SELECT user_id, stream, head_seq, key_count FROM stream_head "
                f"WHERE {where}{lock}", flat).fetchall():
            heads[(u, s)] = h
            key_counts[(u, s)] = kc
    # A head still at 0 is a stream this batch may create (the quota counts streams
    # with events only).
    created = {hk for hk in pairs if heads[hk] == 0 and counted(hk[1])}
    todo = [r for r in reqs
            if r.device_id is None or (r.device_id, r.client_id) not in known]
    keyed = {(r.user_id, r.stream, r.key) for r in todo
             if r.key is not None and counted(r.stream)} - seen_keys
    unseen = new_keys(db, p, keyed) if keyed else set()
    budget = None
    if quotas:
        budget = _Budget(db, p, pg, quotas,
                         sorted({r.user_id for r in todo if counted(r.stream)}), created)

    key_heads: dict[tuple[str, str, str], int] = {}
    rows: list[tuple[Any, ...]] = []
    new_events: list[StoredEvent] = []
    added: dict[str, int] = {}
    refused: set[tuple[str, str]] = set()
    for i, r in enumerate(reqs):
        if r.device_id is not None:
            prior = known.get((r.device_id, r.client_id))
            if prior is not None:
                results[i] = Accepted(prior, duplicate=True)
                continue
        hk = (r.user_id, r.stream)
        head = heads[hk]
        if r.base_seq is not None:
            # Compare-and-set (protocol.md §3 Conflicts).
            if r.key is None:
                current = head
            else:
                kk = (r.user_id, r.stream, r.key)
                if kk not in key_heads:
                    row = db.execute_sql(KEY_HEAD_SQL.format(p=p),
                                         (r.user_id, r.stream, r.key)).fetchone()
                    key_heads[kk] = int(row[0]) if row and row[0] is not None else 0
                current = key_heads[kk]
            if current > r.base_seq:
                results[i] = Conflicted(r.stream, current)
                continue
        if counted(r.stream):
            size = body_bytes(r.body)
            new_stream = head == 0 and hk in created
            new_key = r.key is not None and (r.user_id, r.stream, r.key) in unseen
            if budget is not None:
                quota = budget.refusal(r, new_stream, new_key, key_counts[hk], size)
                if quota is not None:
                    results[i] = Refused("forbidden", budget.quotas.message(quota, r.stream),
                                         quota=quota)
                    refused.add(hk)
                    continue
                budget.take(r, new_stream, size)
            if new_key:
                unseen.discard((r.user_id, r.stream, r.key))  # counted once
                key_counts[hk] += 1
            added[r.user_id] = added.get(r.user_id, 0) + size
        seq = head + 1
        heads[hk] = seq
        if r.key is not None:
            key_heads[(r.user_id, r.stream, r.key)] = seq
        ev = StoredEvent(r.user_id, r.stream, seq, r.client_id, r.device_id, r.key, ts, r.body,
                         ts_text)
        rows.append((r.user_id, r.stream, seq, r.device_id, r.client_id, r.key, r.body, ts))
        new_events.append(ev)
        results[i] = Accepted(ev, duplicate=False)
        if r.device_id is not None:
            known[(r.device_id, r.client_id)] = ev  # a repeat inside this same batch

    if rows:
        executemany(db, "INSERT INTO event (user_id, stream, seq, device_id, client_id, "
                    f"key, body, ts) VALUES ({p}, {p}, {p}, {p}, {p}, {p}, {p}, {p})", rows)
        touched = sorted({(e.user_id, e.stream) for e in new_events})
        executemany(db, f"UPDATE stream_head SET head_seq = {p}, key_count = {p} "
                    f"WHERE user_id = {p} AND stream = {p}",
                    [(heads[k], key_counts[k], k[0], k[1]) for k in touched])
    if added:
        if budget is None and _HAS_RETURNING:
            add_bytes(db, p, added)  # one statement
        else:
            save_bytes(db, p, added)  # one per user (rows locked by _Budget if careful)
    # A stream refused by the streams quota leaves no empty head behind.
    empty = [hk for hk in refused if heads[hk] == 0]
    if empty:
        executemany(db, f"DELETE FROM stream_head WHERE user_id = {p} AND stream = {p} "
                    "AND head_seq = 0", empty)
    return [r for r in results if r is not None], new_events


def append_now(db: pw.Database, reqs: list[PublishRequest],
               clock: Callable[[], int] = now_ms) -> list[PublishResult]:
    """Store publishes in a transaction of their own (CLI and jobs; not the hot path).
    No quota applies (the server's own sys. notices; the counters are kept)."""
    with write_transaction(db):
        results, _ = append(db, reqs, clock())
    return results
