"""Server run records in <data_dir>/run: one locked file per serving process, how CLI
commands find the running servers and their embedded Redis."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from pathlib import Path
from typing import Any

from relaybox.bus.embedded import url_from_socket


def write_server_file(run_dir: Path, info: dict[str, Any]) -> Path:
    """Record this serving process (one file per process) for CLI commands to find.

    The record stays locked (flock) for as long as this process, or a worker it forked,
    lives: the kernel drops the lock when the last of them exits, however it exits. A
    record whose lock nobody holds is stale, even when its pid now belongs to another
    process (a reboot, pid 1 in a container, pid reuse).
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / f"server-{os.getpid()}.json"
    tmp = path.with_suffix(".tmp")
    handle = open(tmp, "w", encoding="utf-8")
    fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
    handle.write(json.dumps({**info, "locked": True}))
    handle.flush()
    tmp.replace(path)
    _held_records[path] = handle
    return path


_held_records: dict[Path, Any] = {}  # this process's locked server records


def _record_alive(path: Path, info: dict[str, Any]) -> bool:
    """Is the process that wrote ``path`` still serving?"""
    if not info.get("locked"):
        # A record of a relaybox that did not lock them: only its pid says.
        try:
            os.kill(int(info["pid"]), 0)
        except (OSError, ValueError, KeyError, TypeError):
            return False
        return True
    if path in _held_records:
        return True
    try:
        with open(path, "rb") as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True  # its server holds the lock
    except OSError:
        return False
    return False  # nobody holds it: the server is gone


def live_servers(run_dir: Path) -> list[dict[str, Any]]:
    """Records of the serving processes that are still alive on this data dir (stale
    records of servers that died are removed on the way)."""
    out = []
    for path in sorted(run_dir.glob("server-*.json")) if run_dir.is_dir() else []:
        try:
            info = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(info, dict):
            continue
        if _record_alive(path, info):
            out.append(info)
        elif info.get("locked"):
            with contextlib.suppress(OSError):
                path.unlink()
    return out


def read_server_file(run_dir: Path) -> dict[str, Any] | None:
    """A live server's record, or None when no server runs on this data dir."""
    servers = live_servers(run_dir)
    return servers[0] if servers else None


def remove_server_file(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink()
    handle = _held_records.pop(path, None)
    if handle is not None:
        handle.close()


def redis_url_for(settings_redis_url: str, run_dir: Path) -> str | None:
    """The Redis a CLI command should talk to: configured, or a running server's embedded one.

    Returns None when Redis is embedded and no server runs (nobody to notify).
    """
    if settings_redis_url:
        return settings_redis_url
    info = read_server_file(run_dir)
    if info and info.get("redis_socket"):
        return url_from_socket(str(info["redis_socket"]))
    return None
