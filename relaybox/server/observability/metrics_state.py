"""Server state that metrics sample: delivery lag, scheduler counts, backups, memory.

Read once a second on the event loop (except the backup folder, read in a thread), and
summarised so that no metric needs a per-device label.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from relaybox.protocol.delivery import Framed, StreamState

SCHEDULER_COUNTS = ("job_runs", "job_failures", "job_skipped")  # relaybox/jobs/scheduler.py


@dataclass(frozen=True, slots=True)
class Lag:
    total: int  # unacked events over all connected devices
    most: int  # the largest backlog of one device
    behind: int  # devices with a backlog
    oldest_s: float  # age of the oldest unacked event


class SessionLag(Protocol):
    """One live session as the lag reader sees it (server/gateway/session.py ``Session``)."""

    @property
    def user_id(self) -> str: ...
    @property
    def device_id(self) -> str: ...
    @property
    def streams(self) -> Mapping[str, StreamState]: ...


class SessionsView(Protocol):
    """The live sessions and recent events of one process (server/gateway/hub.py ``Hub``)."""

    @property
    def by_device(self) -> Mapping[str, SessionLag]: ...
    def ring_after(self, user_id: str, stream: str, seq: int, limit: int
                   ) -> Sequence[Framed] | None: ...


class LagReader:
    """Delivery lag of the sessions of one process (protocol.md §3 Delivery)."""

    def __init__(self) -> None:
        # (device, stream) -> (first unacked seq, when first seen there) for events that
        # already left the recent ring, whose commit time is no longer at hand.
        self._stuck: dict[tuple[str, str], tuple[int, float]] = {}

    def read(self, hub: SessionsView, now: float) -> Lag:
        now_ms = now * 1000.0
        total = most = behind = 0
        oldest_ms = 0.0
        stuck: dict[tuple[str, str], tuple[int, float]] = {}
        for session in list(hub.by_device.values()):
            lag = 0
            for name, st in list(session.streams.items()):
                # Sent and not acked, plus not sent yet. (Not known_head - acked: a device
                # never acks its own events, which are not delivered to it.)
                inflight = len(st.inflight)
                n = inflight + max(0, st.known_head - st.done)
                if n <= 0:
                    continue
                lag += n
                first = st.inflight[0] if inflight else st.done + 1
                nxt = hub.ring_after(session.user_id, name, first - 1, 1)
                if nxt and nxt[0].seq == first:
                    age = now_ms - nxt[0].event.ts
                else:  # time since this position last moved: a lower bound
                    key = (session.device_id, name)
                    prev = self._stuck.get(key)
                    since = prev[1] if prev is not None and prev[0] == first else now_ms
                    stuck[key] = (first, since)
                    age = now_ms - since
                oldest_ms = max(oldest_ms, age)
            if lag:
                behind += 1
                total += lag
                most = max(most, lag)
        self._stuck = stuck
        return Lag(total, most, behind, max(0.0, oldest_ms) / 1000.0)


class CountDeltas:
    """What the scheduler counted since the last look (it keeps plain running totals)."""

    def __init__(self) -> None:
        self._seen: dict[tuple[str, str], int] = {}

    def read(self, scheduler: object) -> list[tuple[str, str, int]]:
        """[(count name, task, increase)] for every task count the scheduler exposes."""
        out = []
        for attr in SCHEDULER_COUNTS:
            counts = getattr(scheduler, attr, None)
            if not isinstance(counts, Mapping):
                continue  # an older or newer scheduler without it: nothing to report
            for task, n in counts.items():
                if not isinstance(n, int):
                    continue
                key = (attr, str(task))
                seen = self._seen.get(key, 0)
                out.append((attr, str(task), max(0, n - seen)))
                self._seen[key] = n
        return out


def last_backup_at(scheduler: object) -> float:
    value = getattr(scheduler, "last_backup_at", None)
    return float(value) if isinstance(value, int | float) else 0.0


def newest_backup(directory: Path) -> float:
    """mtime of the newest ``relaybox-*.tar.gz`` (services/backup.py names), else 0."""
    try:
        return max((p.stat().st_mtime for p in directory.glob("relaybox-*.tar.gz")),
                   default=0.0)
    except OSError:
        return 0.0


def resident_bytes(pid: int | None = None) -> int:
    """Resident memory of this process, or of process ``pid`` (0 if it is gone)."""
    try:
        with open(f"/proc/{pid or 'self'}/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        if pid is not None:
            return 0
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
