"""Publishes awaiting their ack: sent again with the same id after a reconnect or a retry nack."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from relaybox.client.backoff import backoff_delay
from relaybox.client.errors import ClientError, ConflictError, PublishError
from relaybox.protocol.encoding import dumps, is_system_stream, is_valid_stream, parse_uuid, uuid7

__all__ = ["Publisher"]

PUBLISH_ID_VERSIONS: Final = frozenset({4, 7})  # protocol.md §1 Identifiers
RETRY_INITIAL_S: Final = 0.1  # first wait after an "unavailable" nack
RETRY_MAX_S: Final = 5.0


@dataclass(eq=False)
class _Pending:
    """One publish not yet acked (protocol.md §3 Publish: retried with the same id)."""

    id: str
    stream: str
    base_seq: int | None
    frame: str
    future: asyncio.Future[int]
    state: str = "queued"  # queued: send when connected; sent; waiting: a retry timer runs
    retries: int = 0
    waiters: int = 0
    timer: asyncio.TimerHandle | None = None


def publish_frame(stream: str, body: Any, key: str | None, base_seq: int | None,
                  id: str | None) -> tuple[str, str]:
    """Check the fields and build the ``publish`` frame; returns (id, frame)."""
    if not is_valid_stream(stream):
        raise PublishError("invalid", f"{stream!r} is not a valid stream name")
    if is_system_stream(stream):
        raise PublishError("forbidden", "sys. streams are written only by the server")
    if base_seq is not None and (type(base_seq) is not int or base_seq < 0):
        raise PublishError("invalid", "base_seq must be an integer >= 0")
    if key is not None and not isinstance(key, str):
        raise PublishError("invalid", "key must be a string")
    if id is None:
        id = uuid7()
    else:
        try:
            parse_uuid(id, PUBLISH_ID_VERSIONS)
        except ValueError:
            raise PublishError("invalid", "id must be a lowercase UUIDv4 or UUIDv7") from None
    msg: dict[str, Any] = {"type": "publish", "id": id, "stream": stream, "body": body}
    if key is not None:
        msg["key"] = key
    if base_seq is not None:
        msg["base_seq"] = base_seq
    try:
        return id, dumps(msg)
    except (TypeError, ValueError) as exc:
        raise PublishError("invalid", f"body is not JSON: {exc}") from None


class Publisher:
    """Tracks publishes until acked; ``send`` queues a frame on the live session (or says no)."""

    def __init__(self, send: Callable[[str], bool], rng: random.Random) -> None:
        self._send = send
        self._rng = rng
        self._pending: dict[str, _Pending] = {}

    def __len__(self) -> int:
        return len(self._pending)

    async def publish(self, stream: str, body: Any, key: str | None, base_seq: int | None,
                      id: str | None) -> int:
        id, frame = publish_frame(stream, body, key, base_seq, id)
        p = self._pending.get(id)
        if p is None:  # the same id already in flight shares its outcome
            p = _Pending(id, stream, base_seq, frame, asyncio.get_running_loop().create_future())
            self._pending[id] = p
            if self._send(frame):
                p.state = "sent"
        p.waiters += 1
        try:
            return await asyncio.shield(p.future)
        finally:
            p.waiters -= 1
            if p.waiters == 0 and not p.future.done() and self._pending.get(id) is p:
                # Every caller gave up (cancelled): stop retrying it.
                self._forget(p)
                p.future.cancel()

    def _forget(self, p: _Pending) -> None:
        del self._pending[p.id]
        if p.timer is not None:
            p.timer.cancel()
            p.timer = None

    # -- session events ---------------------------------------------------------------------
    def connected(self) -> None:
        """A new session is ready: send everything not acked, in the original order."""
        for p in self._pending.values():
            if p.state != "waiting" and self._send(p.frame):
                p.state = "sent"

    def disconnected(self) -> None:
        for p in self._pending.values():
            if p.state == "sent":
                p.state = "queued"

    def fail_all(self, exc: ClientError) -> None:
        for p in list(self._pending.values()):
            self._forget(p)
            if not p.future.done():
                p.future.set_exception(exc)
                p.future.exception()  # nobody may await it any more: no "never retrieved"

    # -- answers (protocol.md §3 Publish) ---------------------------------------------------
    def acked(self, msg: dict[str, Any]) -> None:
        p = self._pending.get(msg.get("id"))  # type: ignore[arg-type]
        if p is None:
            return  # a repeat's ack that we already had
        self._forget(p)
        seq = msg.get("seq")
        if p.future.done():
            return
        if type(seq) is int:
            p.future.set_result(seq)
        else:
            p.future.set_exception(PublishError("invalid", "the server's ack has no seq"))

    def nacked(self, msg: dict[str, Any]) -> None:
        p = self._pending.get(msg.get("id"))  # type: ignore[arg-type]
        if p is None:
            return
        code = str(msg.get("code"))
        if code in ("rate_limited", "unavailable"):
            # Not stored; safe to send again with the same id.
            after = msg.get("retry_after_ms")
            if code == "rate_limited" and type(after) is int and after >= 0:
                delay = after / 1000
            else:
                delay = backoff_delay(p.retries, RETRY_INITIAL_S, RETRY_MAX_S, self._rng)
            p.retries += 1
            p.state = "waiting"
            p.timer = asyncio.get_running_loop().call_later(delay, self._retry, p)
            return
        self._forget(p)
        exc: PublishError
        if code == "conflict":
            head = msg.get("head_seq")
            exc = ConflictError(str(msg.get("stream") or p.stream),
                                head if type(head) is int else -1, p.base_seq)
        else:
            exc = PublishError(code, str(msg.get("message") or ""))
        if not p.future.done():
            p.future.set_exception(exc)

    def _retry(self, p: _Pending) -> None:
        p.timer = None
        if self._pending.get(p.id) is p:
            p.state = "sent" if self._send(p.frame) else "queued"
