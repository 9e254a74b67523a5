"""Validation of settings: a raw value into its setting's type and range, the checks that
span several settings (URLs, TLS, replication, backup time), and the data dir's."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from relaybox.config.table import SettingInfo, Settings
from relaybox.config.urls import SENTINEL_SCHEMES, mask_url, sentinel_url


class ConfigError(Exception):
    """One or more settings are invalid; ``problems`` holds one line each."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


def convert(row: SettingInfo, value: Any, origin: str) -> tuple[Any, str | None]:
    """Turn ``value`` into the setting's type; return (value, problem)."""
    where = f"{row.key} = {value!r} ({origin})"
    try:
        if row.type is bool:
            if isinstance(value, bool):
                out: Any = value
            elif isinstance(value, str) and value.lower() in ("1", "true", "yes", "on"):
                out = True
            elif isinstance(value, str) and value.lower() in ("0", "false", "no", "off"):
                out = False
            else:
                return None, f"{where}: expected true or false"
        elif row.type is int:
            if isinstance(value, bool) or isinstance(value, float):
                return None, f"{where}: expected a whole number"
            out = int(value)
        elif row.type is float:
            if isinstance(value, bool):
                return None, f"{where}: expected a number"
            out = float(value)
        elif row.type is Path:
            if not isinstance(value, str | Path):
                return None, f"{where}: expected a path"
            out = Path(value)
        else:
            if not isinstance(value, str):
                return None, f"{where}: expected a string"
            out = value
    except (TypeError, ValueError):
        return None, f"{where}: expected a {row.type.__name__}"
    if (row.lo is not None and out < row.lo) or (row.hi is not None and out > row.hi):
        return None, f"{where}: must be between {_num(row.lo)} and {_num(row.hi)}"
    if row.choices and out not in row.choices:
        return None, f"{where}: must be one of {', '.join(row.choices)}"
    return out, None


def _num(value: float | None) -> str:
    if value is None:
        return "any"
    return str(int(value)) if float(value).is_integer() else str(value)


def check_settings(s: Settings) -> list[str]:
    """Problems that span settings or need parsing: the URLs, TLS, replication, backup time."""
    try:
        return _check_settings_unsafe(s)
    except ValueError as exc:
        return [f"database_url / redis_url: malformed URL ({exc})"]


def _check_settings_unsafe(s: Settings) -> list[str]:
    problems = []
    if s.database_url:
        parts = urlsplit(s.database_url)
        if parts.scheme == "sqlite":
            if not s.database_url.startswith("sqlite:///") or len(s.database_url) <= 10:
                problems.append(f"database_url = {s.database_url!r}: use sqlite:///PATH")
        elif parts.scheme in ("postgresql", "postgres"):
            if not parts.hostname and not parts.path.strip("/"):
                problems.append(f"database_url = {mask_url(s.database_url)!r}: "
                                "postgresql://user:pass@host:port/dbname expected")
            _ = parts.port  # raises ValueError for a port out of range
        else:
            problems.append(f"database_url = {mask_url(s.database_url)!r}: "
                            "scheme must be sqlite or postgresql")
    if s.redis_url:
        parts = urlsplit(s.redis_url)
        if parts.scheme in SENTINEL_SCHEMES:
            try:
                sentinel_url(s.redis_url)
            except ValueError as exc:
                problems.append(f"redis_url = {mask_url(s.redis_url)!r}: {exc}")
        elif parts.scheme in ("redis", "rediss"):
            if not parts.hostname:
                problems.append(f"redis_url = {mask_url(s.redis_url)!r}: host missing")
            _ = parts.port
        elif parts.scheme == "unix":
            if not parts.path:
                problems.append(f"redis_url = {mask_url(s.redis_url)!r}: socket path missing")
        else:
            problems.append(f"redis_url = {mask_url(s.redis_url)!r}: "
                            "scheme must be redis, rediss, unix, redis+sentinel or "
                            "rediss+sentinel")
    if bool(s.tls_cert_file) != bool(s.tls_key_file):
        problems.append("tls.cert_file and tls.key_file: set both (https) or neither (http)")
    if s.replication_enabled:
        if s.sqlite_path is None:
            problems.append("replication.enabled: replication streams the SQLite database; "
                            "with PostgreSQL use its WAL archiving (docs/backup.md)")
        if not s.replication_url:
            problems.append("replication.enabled: set replication.url (a folder or a "
                            "Litestream replica URL)")
    if s.backup_time:
        hh, _, mm = s.backup_time.partition(":")
        if not (len(hh) in (1, 2) and len(mm) == 2 and hh.isascii() and mm.isascii()
                and hh.isdecimal() and mm.isdecimal() and int(hh) < 24 and int(mm) < 60):
            problems.append(f"backup.time = {s.backup_time!r}: expected HH:MM")
    return problems


def check_data_dir(settings: Settings) -> list[str]:
    """Problems with the data dir (missing parent, not writable)."""
    d = settings.data_dir
    probe = d if d.exists() else d.parent
    if d.exists() and not d.is_dir():
        return [f"data_dir = {str(d)!r}: exists and is not a folder"]
    if not probe.exists():
        return [f"data_dir = {str(d)!r}: parent folder {str(probe)!r} does not exist"]
    if not os.access(probe, os.W_OK | os.X_OK):
        return [f"data_dir = {str(d)!r}: not writable"]
    return []

