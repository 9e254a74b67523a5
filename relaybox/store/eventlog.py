"""The names other layers import from the event log, while they move to the modules that
define them: store/events.py (event types), store/front.py (``EventLog``) and
store/append.py (``append_now``). New code imports from those."""

from __future__ import annotations

from relaybox.store.append import append_now
from relaybox.store.events import (
    Accepted,
    Conflicted,
    Failed,
    PublishRequest,
    PublishResult,
    Refused,
    StoredEvent,
)
from relaybox.store.front import EventLog

__all__ = ["Accepted", "Conflicted", "EventLog", "Failed", "PublishRequest", "PublishResult",
           "Refused", "StoredEvent", "append_now"]
