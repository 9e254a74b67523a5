"""Retention: drop old events per stream (raising floor_seq), expired codes and tokens."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import peewee as pw

from relaybox.config import Settings
from relaybox.store import quotas
from relaybox.store.db import write_transaction
from relaybox.store.models import Event, PairingCode, RefreshToken, StreamHead, User

log = logging.getLogger("relaybox.retention")

DAY_MS = 86_400_000
CHUNK = 500  # rows per transaction: a server writing the same SQLite file waits only briefly


@dataclass
class StreamPrune:
    user_id: str
    stream: str
    removed: int
    floor_seq: int  # after the run: last removed seq; the first kept is floor_seq + 1


@dataclass
class RetentionReport:
    dry_run: bool
    events: int = 0
    pairing_codes: int = 0
    refresh_tokens: int = 0
    streams: list[StreamPrune] = field(default_factory=list)

    def as_json(self, user_names: dict[str, str] | None = None) -> dict[str, Any]:
        names = user_names or {}
        return {
            "dry_run": self.dry_run, "events": self.events,
            "pairing_codes": self.pairing_codes, "refresh_tokens": self.refresh_tokens,
            "streams": [{"user_id": s.user_id, "user": names.get(s.user_id),
                         "stream": s.stream, "removed": s.removed, "floor_seq": s.floor_seq}
                        for s in self.streams],
        }


def prune(db: pw.Database, settings: Settings, now_ms: int, *, dry_run: bool = False,
          chunk: int = CHUNK, pause_s: float = 0.002,
          should_stop: Callable[[], bool] = lambda: False) -> RetentionReport:
    """Apply the retention policy as of ``now_ms``; with ``dry_run`` only count.

    Per stream, events go from the oldest up to a cut-off seq, never from the middle,
    so ``floor_seq`` (the last removed seq) says exactly what is gone (protocol.md §3
    Catch-up: devices whose cursor is below it get a ``gap``).
    """
    report = RetentionReport(dry_run=dry_run)
    for user_id, stream, head, floor in _heads(db):
        if should_stop():
            break
        cut = cutoff_seq(settings, user_id, stream, head, floor, now_ms)
        if cut <= floor:
            continue
        if dry_run:
            n = (Event.select().where((Event.user_id == user_id) & (Event.stream == stream)
                                      & (Event.seq <= cut)).count())
            report.streams.append(StreamPrune(user_id, stream, n, cut))
            report.events += n
            continue
        removed = _drop_events(db, user_id, stream, floor, cut, chunk, pause_s, should_stop)
        report.streams.append(StreamPrune(user_id, stream, removed[0], removed[1]))
        report.events += removed[0]
    report.pairing_codes = _drop_rows(
        db, PairingCode, PairingCode.code_hash, PairingCode.expires_at < now_ms,
        dry_run, chunk, pause_s)
    # A used refresh token stays until it expires: presenting it again is how theft is
    # detected (api.md §3 Routes, Tokens). Once expired it can only ever be refused.
    report.refresh_tokens = _drop_rows(
        db, RefreshToken, RefreshToken.token_hash, RefreshToken.expires_at < now_ms,
        dry_run, chunk, pause_s)
    if not dry_run and (report.events or report.pairing_codes or report.refresh_tokens):
        log.info("retention removed %d events from %d streams, %d pairing codes, "
                 "%d refresh tokens", report.events, len(report.streams),
                 report.pairing_codes, report.refresh_tokens)
    return report


def cutoff_seq(settings: Settings, user_id: str, stream: str, head: int, floor: int,
               now_ms: int) -> int:
    """The highest seq the policy removes from a stream (``floor`` when nothing goes)."""
    cut = floor
    if settings.retention_max_events_per_stream > 0:
        cut = max(cut, head - settings.retention_max_events_per_stream)
    if settings.retention_days > 0:
        limit = now_ms - settings.retention_days * DAY_MS
        # The first event young enough to keep; everything before it goes. This scans
        # only the expired prefix (index user_id, stream, seq), i.e. the work to be done.
        first_kept = (Event.select(pw.fn.MIN(Event.seq))
                      .where((Event.user_id == user_id) & (Event.stream == stream)
                             & (Event.seq > cut) & (Event.ts >= limit)).scalar())
        if first_kept is not None:
            cut = max(cut, int(first_kept) - 1)
        else:
            last = (Event.select(pw.fn.MAX(Event.seq))
                    .where((Event.user_id == user_id) & (Event.stream == stream)).scalar())
            if last is not None:
                cut = max(cut, int(last))
    return min(cut, head)


def _heads(db: pw.Database) -> list[tuple[str, str, int, int]]:
    q = (StreamHead.select(StreamHead.user_id, StreamHead.stream, StreamHead.head_seq,
                           StreamHead.floor_seq)
         .where(StreamHead.head_seq > StreamHead.floor_seq)
         .order_by(StreamHead.user_id, StreamHead.stream))
    rows: list[Any] = list(q.tuples())
    return [(str(u), str(s), int(h), int(f)) for u, s, h, f in rows]


def _drop_events(db: pw.Database, user_id: str, stream: str, floor: int, cut: int,
                 chunk: int, pause_s: float, should_stop: Callable[[], bool]
                 ) -> tuple[int, int]:
    """Delete seq ≤ ``cut`` in chunks, raising floor_seq with each one; (removed, floor)."""
    removed = 0
    upto = floor
    while upto < cut:
        # Seqs are dense above the floor, so a seq window holds at most ``chunk`` rows.
        upto = min(cut, upto + chunk)
        with write_transaction(db):
            # The bytes quota counts what is stored: what goes is given back (the keys
            # counter stays, an upper bound; store/quotas.py).
            freed = quotas.freed_bytes(db, user_id, stream, upto)
            removed += (Event.delete()
                        .where((Event.user_id == user_id) & (Event.stream == stream)
                               & (Event.seq <= upto)).execute())
            (StreamHead.update(floor_seq=upto)
             .where((StreamHead.user_id == user_id) & (StreamHead.stream == stream)
                    & (StreamHead.floor_seq < upto)).execute())
            if freed:
                quotas.release_bytes(user_id, freed)  # after the head: the writer's order
        if upto < cut:
            if should_stop():
                break
            time.sleep(pause_s)  # let the server's writer in between chunks
    return removed, upto


def _drop_rows(db: pw.Database, model: Any, pk: Any, cond: Any, dry_run: bool, chunk: int,
               pause_s: float) -> int:
    if dry_run:
        return int(model.select().where(cond).count())
    total = 0
    while True:
        with write_transaction(db):
            batch = model.select(pk).where(cond).limit(chunk)
            n = int(model.delete().where(pk.in_(batch)).execute())
        total += n
        if n < chunk:
            return total
        time.sleep(pause_s)


def user_names() -> dict[str, str]:
    return {u.id: u.name for u in User.select(User.id, User.name)}
