"""The checker: what the devices were told, held against what the database stores.

Every rule cites protocol.md. The database is read directly (SQL on the event, stream_head
and cursor tables), never through the server.
"""

from __future__ import annotations

import json
import re
import statistics
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.torture.devices import Closed
from tests.torture.ledger import Ledger

# protocol.md §6: 1011 and 1001 outside a shutdown are bugs; 4400/4401/4403 mean the
# server refused a well-behaved device; 4409 means a device was replaced although it
# connected only once at a time. A connection lost without a close frame (1006) is
# expected only from a process that died.
EXPLAINED_CLOSES = frozenset({1000, 4408, 4410})
LOST = frozenset({1006, None})


@dataclass
class Report:
    """The checker's verdict and the campaign's figures."""

    violations: list[str] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.violations

    def text(self, limit: int = 40) -> str:
        lines = ["campaign summary:"]
        lines += [f"  {k}: {v}" for k, v in self.figures.items()]
        if self.violations:
            lines.append(f"VIOLATIONS ({len(self.violations)}):")
            lines += [f"  - {v}" for v in self.violations[:limit]]
            if len(self.violations) > limit:
                lines.append(f"  … and {len(self.violations) - limit} more")
        else:
            lines.append("no violation")
        return "\n".join(lines)


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def _rows(db: Any, sql: str) -> list[tuple[Any, ...]]:
    return list(db.execute_sql(sql).fetchall())


def check_store(db: Any, ledger: Ledger, users: Iterable[str]) -> tuple[list[str], dict[str, int]]:
    """protocol.md §3: acked events stored once at their seq, gap-free seqs, no duplicate
    (device, id), compare-and-set never stored over a stale base_seq."""
    out: list[str] = []
    users = set(users)
    events = [r for r in _rows(db, "SELECT user_id, stream, seq, device_id, client_id, key, "
                                   "body FROM \"event\"") if r[0] in users]
    by_stream: dict[tuple[str, str], list[tuple[Any, ...]]] = defaultdict(list)
    by_id: dict[str, list[tuple[Any, ...]]] = defaultdict(list)
    for r in events:
        by_stream[(r[0], r[1])].append(r)
        by_id[r[4]].append(r)
    duplicates = 0
    for (user, stream), rows in by_stream.items():
        rows.sort(key=lambda r: r[2])
        seqs = [r[2] for r in rows]
        if seqs != list(range(1, len(seqs) + 1)):
            missing = sorted(set(range(1, max(seqs) + 1)) - set(seqs))[:10]
            twice = sorted(s for s, n in Counter(seqs).items() if n > 1)[:10]
            out.append(f"stream {stream} of user {user}: seqs not 1..n "
                       f"(missing {missing}, twice {twice})")
    heads = {(u, s): h for u, s, h in _rows(db, "SELECT user_id, stream, head_seq "
                                                "FROM \"stream_head\"") if u in users}
    for key, rows in by_stream.items():
        if heads.get(key) != max(r[2] for r in rows):
            out.append(f"stream {key[1]} of user {key[0]}: head_seq {heads.get(key)} but "
                       f"the highest stored seq is {max(r[2] for r in rows)}")
    for pid, rows in by_id.items():
        devices = Counter(r[3] for r in rows)
        for dev, n in devices.items():
            if n > 1:
                duplicates += n - 1
                out.append(f"(device {dev}, id {pid}) stored {n} times: "
                           f"{[(r[1], r[2]) for r in rows]}")
    lost = 0
    for pid, (stream, seq, _) in ledger.acks.items():
        pub = ledger.published.get(pid)
        stored = [r for r in by_id.get(pid, []) if pub is None or r[3] == pub.device_id]
        if not stored:
            lost += 1
            out.append(f"acked publish {pid} ({stream} seq {seq}) is not stored")
        elif (stored[0][1], stored[0][2]) != (stream, seq):
            out.append(f"publish {pid} was acked at {stream} seq {seq} but is stored at "
                       f"{stored[0][1]} seq {stored[0][2]}")
    known = set(ledger.published)
    for r in events:
        if not r[1].startswith("sys.") and r[4] not in known:
            out.append(f"stored event {r[4]} ({r[1]} seq {r[2]}) was never published")
    for pid, head in ledger.conflicts.items():
        pub = ledger.published[pid]
        if pid in by_id:
            out.append(f"publish {pid} was nacked conflict but is stored")
        if pub.base_seq is not None and head <= pub.base_seq:
            out.append(f"publish {pid}: conflict with head_seq {head} <= base_seq "
                       f"{pub.base_seq}")
        rows = by_stream.get((pub.user_id, pub.stream), [])
        if not any(r[2] == head and (pub.key is None or r[5] == pub.key) for r in rows):
            out.append(f"publish {pid}: conflict names head_seq {head}, but no stored event "
                       f"of {pub.stream} key {pub.key} has that seq")
    stale = 0
    for (_, stream), rows in by_stream.items():
        latest: dict[str | None, int] = {}
        for r in rows:  # in seq order
            pub = ledger.published.get(r[4])
            if pub is None or pub.base_seq is None:
                continue
            # protocol.md §3 Conflicts: compared with the latest event of the same key,
            # or with no key the stream head.
            prev = latest.get(r[5], 0) if pub.key is not None else r[2] - 1
            base = json.loads(r[6]).get("base")
            if base != pub.base_seq or prev > pub.base_seq:
                stale += 1
                out.append(f"compare-and-set stored over a stale base: {stream} seq {r[2]} "
                           f"key {r[5]} base_seq {pub.base_seq}, but seq {prev} was the "
                           f"latest")
            latest[r[5]] = r[2]
    return out, {"stored": len(events), "lost": lost, "duplicates": duplicates,
                 "stale_cas": stale}


def check_cursors(db: Any, ledger: Ledger) -> list[str]:
    """After a clean stop, the cursors hold every ack sent before each device's last
    normal close (docs/architecture.md: a clean stop commits everything queued)."""
    out = []
    cursors = {(d, s): a for d, s, a in _rows(db, "SELECT device_id, stream, acked_seq "
                                                   "FROM \"cursor\"")}
    for dev, acked in ledger.last_acked.items():
        for stream, seq in acked.items():
            have = cursors.get((dev, stream), 0)
            if have < seq:
                out.append(f"device {dev} stream {stream}: cursor {have} after a clean stop, "
                           f"but seq {seq} was acked before its last normal close")
    return out


def check_closes(closes: list[Closed], ledger: Ledger, shutdown_at: float) -> list[str]:
    """protocol.md §6: every session ended for a documented, expected reason."""
    out = []
    for c in closes:
        if c.at >= shutdown_at:
            continue
        if c.code in EXPLAINED_CLOSES:
            continue
        if c.code in LOST and ledger.crash_between(c.at - 1.0, c.at):
            continue
        out.append(f"{c.role} {c.device_id}: connection ended with {c.code} during "
                   f"{ledger.fault_at(c.at)}")
    return out


TRACEBACK = re.compile(r"^Traceback \(most recent call last\):$", re.M)


def check_logs(paths: Iterable[Path]) -> list[str]:
    """No unexplained traceback in a server log (protocol.md §6: no server bug shows)."""
    out = []
    for path in paths:
        text = path.read_text(errors="replace") if path.exists() else ""
        for m in TRACEBACK.finditer(text):
            # The traceback and the line that introduced it.
            start = text.rfind("\n", 0, max(0, m.start() - 1)) + 1
            excerpt = text[start:m.start() + 1500].splitlines()
            tail = next((ln for ln in excerpt[2:] if ln and not ln.startswith(" ")), "")
            out.append(f"traceback in {path.name}: {excerpt[0][:200]} … {tail[:300]}")
    return out


def figures(ledger: Ledger, closes: list[Closed], store: dict[str, int]) -> dict[str, Any]:
    kinds = Counter(f.kind for f in ledger.faults)
    rec = sorted(f.recovery_s for f in ledger.faults if f.recovery_s is not None)
    by_kind: dict[str, list[float]] = defaultdict(list)
    for f in ledger.faults:
        if f.recovery_s is not None:
            by_kind[f.kind].append(f.recovery_s)

    def fmt(x: float | None) -> str:
        return "-" if x is None else f"{x:.2f} s"

    return {
        "cycles": f"{len(ledger.faults)} ("
                  + ", ".join(f"{k} {n}" for k, n in sorted(kinds.items())) + ")",
        "published": len(ledger.published),
        "acked": len(ledger.acks),
        "cas conflicts": len(ledger.conflicts),
        "stored": store.get("stored", 0),
        "lost": store.get("lost", 0),
        "duplicates": store.get("duplicates", 0),
        "stale compare-and-set": store.get("stale_cas", 0),
        "delivered to subscribers": ledger.delivered,
        "redeliveries": ledger.redelivered,
        "normal closes checked": len(ledger.normal_closes),
        "recovery p50/p99": f"{fmt(percentile(rec, 50))} / {fmt(percentile(rec, 99))}",
        "recovery p50 by fault": ", ".join(f"{k} {fmt(percentile(v, 50))}"
                                           for k, v in sorted(by_kind.items())),
        "close codes": dict(Counter(str(c.code) for c in closes).most_common()),
        **({"two-node races": dict(ledger.races)} if ledger.races else {}),
        **({"notes": "; ".join(ledger.notes)} if ledger.notes else {}),
    }


def check(db: Any, ledger: Ledger, closes: list[Closed], users: Iterable[str],
          logs: Iterable[Path], shutdown_at: float) -> Report:
    store_violations, store = check_store(db, ledger, users)
    violations = [*ledger.violations, *store_violations, *check_cursors(db, ledger),
                  *check_closes(closes, ledger, shutdown_at), *check_logs(logs)]
    return Report(violations, figures(ledger, closes, store))
