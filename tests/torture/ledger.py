"""What the campaign's devices saw and what the fault injector did, for the checker."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field

# Faults after which a session may end without a close frame (1006), and acks that were
# queued for the writer may be lost (protocol.md §3 Delivery: "only a crash may lose
# cursor progress").
CRASHES = frozenset({"kill-group", "kill-node", "kill-writer"})


def now() -> float:
    return time.monotonic()


@dataclass
class Published:
    """One publish as the device sent it (retried with the same id until answered)."""

    id: str
    device_id: str
    user_id: str
    stream: str
    key: str | None = None
    base_seq: int | None = None
    sent_at: float = 0.0


@dataclass
class Fault:
    """One injected fault: ``start`` when it hit, ``heal`` when it was undone."""

    kind: str
    target: str
    start: float
    heal: float = 0.0
    first_ack: float | None = None  # the first ack any device received after ``heal``

    @property
    def crash(self) -> bool:
        return self.kind in CRASHES

    @property
    def recovery_s(self) -> float | None:
        return None if self.first_ack is None else self.first_ack - self.start


@dataclass
class NormalClose:
    """A subscriber closed with 1000 after the server answered a ping behind its acks."""

    device_id: str
    at: float
    acked: dict[str, int]


@dataclass
class Ledger:
    """Everything observed. Violations found while running are kept here too."""

    published: dict[str, Published] = field(default_factory=dict)
    acks: dict[str, tuple[str, int, float]] = field(default_factory=dict)  # id -> stream, seq, t
    conflicts: dict[str, int] = field(default_factory=dict)  # id -> head_seq of the nack
    refused: dict[str, str] = field(default_factory=dict)  # id -> other final nack code
    faults: list[Fault] = field(default_factory=list)
    normal_closes: list[NormalClose] = field(default_factory=list)
    # What subscribers acknowledged before their last normal close (device -> stream -> seq).
    last_acked: dict[str, dict[str, int]] = field(default_factory=dict)
    races: Counter[str] = field(default_factory=Counter)  # outcome -> rounds
    delivered: int = 0
    redelivered: int = 0
    violations: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def violation(self, text: str) -> None:
        self.violations.append(f"[{time.strftime('%H:%M:%S')}] {text}")

    def ack(self, pid: str, stream: str, seq: int) -> None:
        t = now()
        old = self.acks.get(pid)
        if old is not None and (old[0], old[1]) != (stream, seq):
            self.violation(f"publish {pid} acked twice differently: {old[:2]} then "
                           f"{(stream, seq)}")
        self.acks[pid] = (stream, seq, t)
        for fault in reversed(self.faults):
            if fault.heal and t >= fault.heal and fault.first_ack is None:
                fault.first_ack = t
            elif fault.first_ack is not None:
                break

    def crash_between(self, start: float, end: float) -> bool:
        """Whether a crash-kind fault was active at some point in [start, end]."""
        return any(f.crash and f.start <= end and (f.heal or end) >= start
                   for f in self.faults)

    def fault_at(self, t: float) -> str:
        active = [f"{f.kind}({f.target})" for f in self.faults
                  if f.start <= t and (f.heal == 0.0 or t <= f.heal + 5)]
        return ", ".join(active) or "no fault"

    def faults_since(self, t: float) -> str:
        kinds = [f"{f.kind}({f.target})" for f in self.faults if (f.heal or now()) >= t]
        return ", ".join(kinds) or "none"
