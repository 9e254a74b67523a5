"""The load generator behind ``relaybox bench`` (docs/performance.md).

``run`` runs every part against a throwaway local server, ``target`` against a running
one, ``stress`` ramps the load until an objective breaks. The parts: ``relay``
(throughput, catch-up), ``latency`` (with the storage probe), ``sessions`` (handshakes,
idle memory); their clients in ``connection`` (the handshake is the protocol core's),
their processes in ``workers``, their numbers in ``stats``.
"""

from __future__ import annotations

from relaybox.bench.connection import ACK_EVERY, Device, LeanConnection, connect, lean_connect
from relaybox.bench.latency import latency, mark_storage_stalls, probe_summary
from relaybox.bench.relay import catchup, relay
from relaybox.bench.run import TARGETS, run_all, stall_note, summarize, to_json
from relaybox.bench.seed import seed_devices, seed_devices_more
from relaybox.bench.server import BenchServer, host_cpu
from relaybox.bench.sessions import handshakes, idle_rss
from relaybox.bench.stats import ms_summary, percentile, stalls
from relaybox.bench.workers import WorkerFailed, describe_failure

__all__ = [
    "ACK_EVERY",
    "TARGETS",
    "BenchServer",
    "Device",
    "LeanConnection",
    "WorkerFailed",
    "catchup",
    "connect",
    "describe_failure",
    "handshakes",
    "host_cpu",
    "idle_rss",
    "latency",
    "lean_connect",
    "mark_storage_stalls",
    "ms_summary",
    "percentile",
    "probe_summary",
    "relay",
    "run_all",
    "seed_devices",
    "seed_devices_more",
    "stall_note",
    "stalls",
    "summarize",
    "to_json",
]
