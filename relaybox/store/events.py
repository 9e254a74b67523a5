"""Event types: a publish request, a stored event, and what the writer answers."""

from __future__ import annotations

from dataclasses import dataclass, field

from relaybox.protocol.encoding import format_ts


@dataclass(slots=True)
class StoredEvent:
    """An event as committed: plain data."""

    user_id: str
    stream: str
    seq: int
    id: str
    device_id: str | None
    key: str | None
    ts: int
    body: str
    _ts_text: str | None = field(default=None, repr=False)

    @property
    def ts_text(self) -> str:
        """``ts`` as RFC 3339 (shared by every event of a commit batch)."""
        if self._ts_text is None:
            self._ts_text = format_ts(self.ts)
        return self._ts_text


@dataclass(slots=True)
class PublishRequest:
    user_id: str
    device_id: str | None  # None: a server-made event (sys.* streams)
    client_id: str
    stream: str
    body: str
    key: str | None = None
    base_seq: int | None = None


@dataclass(slots=True, frozen=True)
class Accepted:
    event: StoredEvent
    duplicate: bool


@dataclass(slots=True, frozen=True)
class Conflicted:
    stream: str
    head_seq: int


@dataclass(slots=True, frozen=True)
class Refused:
    """Not stored, and never will be as sent: ``code`` is the nack code (protocol.md §3
    Publish), ``invalid`` for a value the database refuses."""

    code: str
    message: str
    quota: str | None = None


@dataclass(slots=True, frozen=True)
class Failed:
    """Not stored because storage failed; safe to retry with the same id."""

    reason: str


PublishResult = Accepted | Conflicted | Refused | Failed
