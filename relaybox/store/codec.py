"""The one item codec: what the event log hands its writer (thread or process), and what the
writer process answers.

Items are plain tuples tagged by their first element, cheap to pickle; the writer thread
takes the very same tuples from its queue. Across the socket pair to the writer process a
frame is a 4-byte length and a pickle (both ends are relaybox, on a socket pair no one
else holds). A publish stored now is answered with just its seq and ts, and the loop
rebuilds the event from the request it kept, so the body crosses only once.
"""

from __future__ import annotations

import pickle
import struct
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from relaybox.protocol.encoding import format_ts
from relaybox.store.events import Accepted, PublishRequest, PublishResult, StoredEvent

if TYPE_CHECKING:
    from relaybox.store.batch import BatchOutcome

PUBLISH = 0  # (tag, user_id, device_id, client_id, stream, body, key, base_seq)
CURSOR = 1  # (tag, device_id, stream, seq)
TOUCH = 2  # (tag, device_id, user_id or None)
PROBE = 3  # (tag,): an empty write round trip (does writing work?)
CALL = 4  # (tag, fn): run fn in the writer; the thread writer only (a callable stays home)

Item = tuple[Any, ...]
PROBE_ITEM: Item = (PROBE,)

# What the loop keeps for each item until it is answered: (kind, callback or future, the
# PublishRequest of a publish). Kinds: "p" publish, "c" cursor, "t" touch, "b" probe or call.
Handler = tuple[str, Any, Any]
CURSOR_HANDLER: Handler = ("c", None, None)

_LEN = struct.Struct("!I")


def publish_item(req: PublishRequest) -> Item:
    return (PUBLISH, req.user_id, req.device_id, req.client_id, req.stream, req.body,
            req.key, req.base_seq)


def cursor_item(device_id: str, stream: str, seq: int) -> Item:
    return (CURSOR, device_id, stream, seq)


def touch_item(device_id: str, user_id: str | None) -> Item:
    return (TOUCH, device_id, user_id)


def call_item(fn: Callable[[], Any]) -> Item:
    return (CALL, fn)


def _noop() -> None:
    return None


@dataclass(slots=True)
class Batch:
    """Items decoded for one transaction (store/batch.py)."""

    pubs: list[PublishRequest] = field(default_factory=list)
    cursors: dict[tuple[str, str], int] = field(default_factory=dict)
    touches: list[tuple[str, str | None]] = field(default_factory=list)
    calls: list[Callable[[], Any]] = field(default_factory=list)


def split(items: list[Item]) -> Batch:
    """Decode a batch's items. Several acks of one stream become one cursor update."""
    batch = Batch()
    cursors = batch.cursors
    for it in items:
        tag = it[0]
        if tag == PUBLISH:
            batch.pubs.append(PublishRequest(*it[1:]))
        elif tag == CURSOR:
            k = (it[1], it[2])
            if it[3] > cursors.get(k, -1):
                cursors[k] = it[3]
        elif tag == TOUCH:
            batch.touches.append((it[1], it[2]))
        else:
            batch.calls.append(it[1] if tag == CALL else _noop)
    return batch


class WriterGone(RuntimeError):
    """The writer process stopped before answering (or failed what it was sent)."""


def _plain(result: tuple[Any, Exception | None]) -> tuple[Any, Exception | None]:
    value, exc = result
    return value, None if exc is None else WriterGone(str(exc))


def answers(items: list[Item], out: BatchOutcome) -> tuple[list[Any], float, bool]:
    """The writer process's answer to a batch: one entry per item, in item order, then the
    batch's seconds and health. Errors cross as text (the loop only reports them)."""
    pub_results = iter(out.results)
    touch_results = iter(out.touches)
    call_results = iter(out.calls)
    ans: list[Any] = []
    for it in items:
        tag = it[0]
        if tag == PUBLISH:
            res = next(pub_results)
            if type(res) is not Accepted:
                ans.append(res)  # Conflicted, Refused or Failed
            elif res.duplicate:
                ev = res.event
                ans.append(("dup", ev.user_id, ev.stream, ev.seq, ev.id, ev.device_id, ev.key,
                            ev.ts, ev.body))
            else:
                ans.append((res.event.seq, res.event.ts))
        elif tag == CURSOR:
            ans.append(None)
        elif tag == TOUCH:
            ans.append(_plain(next(touch_results)))
        else:
            ans.append(_plain(next(call_results)))
    return ans, out.seconds, out.healthy


Settled = tuple[list[Callable[[PublishResult], None]], list[PublishResult], list[StoredEvent],
                list[tuple[Any, Any, Any]]]


def read_answers(pending: deque[tuple[str, Any, Any, Item, int]], ans: list[Any]) -> Settled:
    """Match an answer with the items it answers (taken from the front of ``pending``):
    the publishers' callbacks and results, the newly stored events (rebuilt from the
    requests kept), and (future, value, error) of touches and probes."""
    pubs: list[PublishResult] = []
    callbacks: list[Callable[[PublishResult], None]] = []
    new_events: list[StoredEvent] = []
    futures: list[tuple[Any, Any, Any]] = []
    last_ts, ts_text = -1, ""
    for a in ans:
        kind, handler, req, _, _ = pending.popleft()
        if kind == "p":
            callbacks.append(handler)
            if type(a) is not tuple:
                pubs.append(a)  # Conflicted, Refused or Failed
            elif a[0] == "dup":
                pubs.append(Accepted(StoredEvent(*a[1:]), duplicate=True))
            else:
                seq, ts = a
                if ts != last_ts:  # one ts per commit batch, formatted once
                    last_ts, ts_text = ts, format_ts(ts)
                ev = StoredEvent(req.user_id, req.stream, seq, req.client_id, req.device_id,
                                 req.key, ts, req.body, ts_text)
                new_events.append(ev)
                pubs.append(Accepted(ev, duplicate=False))
        elif kind != "c":
            futures.append((handler, a[0], a[1]))
    return callbacks, pubs, new_events, futures


def pack(obj: Any) -> bytes:
    """One frame: a length and a pickle."""
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    return _LEN.pack(len(data)) + data


def unpack(buf: bytearray, limit: int | None = None) -> list[Any]:
    """Take the complete frames (at most ``limit`` of them) out of ``buf``."""
    out: list[Any] = []
    pos = 0
    while len(buf) - pos >= 4 and (limit is None or len(out) < limit):
        (n,) = _LEN.unpack_from(buf, pos)
        if len(buf) - pos - 4 < n:
            break
        out.append(pickle.loads(buf[pos + 4:pos + 4 + n]))  # noqa: S301 - our own frames
        pos += 4 + n
    del buf[:pos]
    return out
