"""Per-user quotas: the counters and checks the writer runs inside its transaction.

docs/configuration.md [quotas]: streams per user, distinct keys per stream, bytes of
event bodies per user (0 = no limit). Server-made ``sys.`` streams are neither counted
nor refused. The counters are ``stream_head.key_count`` and ``user.stored_bytes``
(migration 003); the number of streams is counted only when a batch may create one.
Every batch keeps the counters up to date, whether or not a quota is set.

How exact (docs/protocol.md §3 Quotas): a batch that adds bytes for a user updates that
user's row first, which locks it until commit on PostgreSQL (SQLite's writers take
turns anyway), so the bytes and streams of one user are checked against every other
writer's committed work: neither quota is ever passed, whatever the number of server
processes or nodes. The keys counter is an upper bound: two writers writing the same
new key to one stream at the same moment both count it, and retention never lowers it,
so the keys quota may refuse a little early, never late.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import peewee as pw

SYS_PATTERN = "sys.%"
_CHUNK = 300  # 900 parameters a query: under SQLite's oldest limit of 999


@dataclass(frozen=True, slots=True)
class Quotas:
    """The limits the writer enforces; 0 is no limit."""

    streams_per_user: int = 0
    keys_per_stream: int = 0
    stored_bytes_per_user: int = 0

    @classmethod
    def from_settings(cls, settings: Any) -> Quotas:
        return cls(settings.quota_streams_per_user, settings.quota_keys_per_stream,
                   settings.quota_stored_bytes_per_user)

    def __bool__(self) -> bool:
        return bool(self.streams_per_user or self.keys_per_stream
                    or self.stored_bytes_per_user)

    def message(self, quota: str, stream: str) -> str:
        """Why a publish to ``stream`` is refused for ``quota`` (streams, keys, bytes)."""
        if quota == "streams":
            return f"the user's quota of {self.streams_per_user} streams is reached"
        if quota == "keys":
            return (f"stream {stream!r} has reached its quota of {self.keys_per_stream} "
                    "distinct keys")
        return f"the user's quota of {self.stored_bytes_per_user} stored bytes is reached"


class OverQuota(Exception):
    """An optimistic batch passed a quota: it is rolled back, and written again checking
    each publish of ``users`` in turn."""

    def __init__(self, users: set[str]) -> None:
        super().__init__(f"over a quota: {len(users)} users")
        self.users = users


def counted(stream: str) -> bool:
    """Server-made sys. streams are exempt from quotas."""
    return not stream.startswith("sys.")


def body_bytes(body: str) -> int:
    """The size of a stored body: its UTF-8 bytes (O(1) for ASCII text)."""
    return len(body) if body.isascii() else len(body.encode("utf-8"))


def new_keys(db: pw.Database, p: str, triples: set[tuple[str, str, str]]
             ) -> set[tuple[str, str, str]]:
    """The (user_id, stream, key) that no stored event has yet: one query per batch, one
    probe of the index of keyed events per key (a subquery in the select list, which
    neither database turns into a join that could read the whole table)."""
    todo = list(triples)
    found: set[tuple[str, str, str]] = set()
    for start in range(0, len(todo), _CHUNK):
        part = todo[start:start + _CHUNK]
        values = ", ".join([f"({p}, {p}, {p})"] * len(part))
        sql = (f"WITH v (u, s, k) AS (VALUES {values}) SELECT u, s, k, (SELECT 1 FROM event "
               "WHERE user_id = v.u AND stream = v.s AND key = v.k AND key IS NOT NULL "
               "LIMIT 1) FROM v")
        flat = [v for t in part for v in t]
        found.update((u, s, k) for u, s, k, hit in db.execute_sql(sql, flat).fetchall()
                     if hit is not None)
    return triples - found


def add_bytes(db: pw.Database, p: str, deltas: dict[str, int]) -> dict[str, int]:
    """Add to users' ``stored_bytes``; their totals after it (users without a row are
    left out). On PostgreSQL the rows stay locked until commit: the writers of one user
    take turns from here on, which makes the bytes and streams checks exact."""
    users = sorted(deltas)  # one order for every writer
    out: dict[str, int] = {}
    if p == "%s":
        # An UPDATE over several rows locks them in whatever order its plan visits them:
        # take the row locks first, in id order, so that two nodes' writers never wait on
        # each other in opposite orders (a deadlock, ~1 s lost to detecting it).
        lock_users(db, p, True, users)
    for start in range(0, len(users), _CHUNK):
        part = users[start:start + _CHUNK]
        values = ", ".join([f"({p}, {p})"] * len(part))
        rows = db.execute_sql(
            f"WITH d (id, b) AS (VALUES {values}) UPDATE \"user\" SET stored_bytes = "
            'stored_bytes + (SELECT d.b FROM d WHERE d.id = "user".id) '
            'WHERE id IN (SELECT d.id FROM d) RETURNING id, stored_bytes',
            [v for u in part for v in (u, deltas[u])]).fetchall()
        out.update((u, int(b)) for u, b in rows)
    return out


def lock_users(db: pw.Database, p: str, pg: bool, users: list[str]) -> dict[str, int]:
    """Lock users' rows (PostgreSQL; SQLite's write lock is held already), in one order
    for every writer, and read their ``stored_bytes``."""
    out: dict[str, int] = {}
    lock = " ORDER BY id FOR NO KEY UPDATE" if pg else ""
    users = sorted(users)
    for start in range(0, len(users), _CHUNK):
        part = users[start:start + _CHUNK]
        rows = db.execute_sql(
            f'SELECT id, stored_bytes FROM "user" WHERE id IN ({", ".join([p] * len(part))})'
            f"{lock}", part).fetchall()
        out.update((u, int(b)) for u, b in rows)
    return out


def save_bytes(db: pw.Database, p: str, deltas: dict[str, int]) -> None:
    """Add to users' ``stored_bytes`` (rows already locked by ``lock_users``)."""
    for user_id in sorted(deltas):
        db.execute_sql(f'UPDATE "user" SET stored_bytes = stored_bytes + {p} WHERE id = {p}',
                       (deltas[user_id], user_id))


def freed_bytes(db: pw.Database, user_id: str, stream: str, upto: int) -> int:
    """Bytes of the bodies of a stream's events up to seq ``upto`` (what retention is
    about to remove; 0 for sys. streams, which are not counted)."""
    if not counted(stream):
        return 0
    from relaybox.store.models import Event

    octets = (pw.fn.octet_length(Event.body) if isinstance(db, pw.PostgresqlDatabase)
              else pw.fn.length(Event.body.cast("BLOB")))
    total = (Event.select(pw.fn.COALESCE(pw.fn.SUM(octets), 0))
             .where((Event.user_id == user_id) & (Event.stream == stream)
                    & (Event.seq <= upto)).scalar())
    return int(total or 0)


def release_bytes(user_id: str, freed: int) -> None:
    """Lower a user's ``stored_bytes`` by what retention removed (never below 0)."""
    from relaybox.store.models import User

    (User.update(stored_bytes=pw.Case(None, [(User.stored_bytes > freed,
                                              User.stored_bytes - freed)], 0))
     .where(User.id == user_id).execute())


def stream_count(db: pw.Database, p: str, user_id: str) -> int:
    """A user's streams that hold or held events (sys. streams aside)."""
    row = db.execute_sql(
        f"SELECT COUNT(*) FROM stream_head WHERE user_id = {p} AND head_seq > 0 "
        f"AND stream NOT LIKE {p}", (user_id, SYS_PATTERN)).fetchone()
    return int(row[0])
