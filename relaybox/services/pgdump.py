"""PostgreSQL side of backups: pg_dump on an exported snapshot, pg_restore in one transaction."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

from relaybox.errors import RelayError

MEMBER = "relaybox.pgdump"


class PgError(RelayError):
    status_code = 422
    code = "backup_invalid"
    title = "Backup failed"


def _tool(name: str) -> str:
    exe = shutil.which(name)
    if exe is None:
        raise PgError(f"{name} not found: install the PostgreSQL client tools")
    return exe


def _split(url: str) -> tuple[str, dict[str, str]]:
    """The URL without its password, and an environment carrying it (not on argv)."""
    parts = urlsplit(url)
    env = dict(os.environ)
    if parts.password:
        env["PGPASSWORD"] = unquote(parts.password)
        host = parts.hostname or ""
        user = parts.username or ""
        netloc = f"{user}@{host}" if user else host
        if parts.port:
            netloc += f":{parts.port}"
        parts = parts._replace(netloc=netloc)
    scheme = "postgresql"
    return urlunsplit(parts._replace(scheme=scheme)), env


def _run(args: list[str], env: dict[str, str]) -> None:
    # Arguments are our own fixed flags plus paths and a URL from the settings.
    res = subprocess.run(args, env=env, capture_output=True, text=True, check=False)  # noqa: S603
    if res.returncode != 0:
        tail = (res.stderr or res.stdout).strip().splitlines()
        raise PgError(f"{Path(args[0]).name} failed: {tail[-1] if tail else res.returncode}")


def dump(url: str, out: Path) -> tuple[dict[str, int], str | None, str | None]:
    """pg_dump and row counts from the same exported snapshot (so they agree exactly)."""
    import psycopg2  # the 'postgres' extra

    exe = _tool("pg_dump")
    dsn, env = _split(url)
    conn: Any = psycopg2.connect(url.replace("postgres://", "postgresql://", 1))
    try:
        conn.set_session(isolation_level="REPEATABLE READ", readonly=True)
        cur = conn.cursor()
        cur.execute("SELECT pg_export_snapshot()")
        snapshot = cur.fetchone()[0]
        cur.execute("SELECT tablename FROM pg_tables WHERE schemaname = current_schema() "
                    "ORDER BY tablename")
        tables = [r[0] for r in cur.fetchall()]
        counts = {}
        for t in tables:
            cur.execute('SELECT COUNT(*) FROM "{}"'.format(t.replace('"', '""')))
            counts[t] = int(cur.fetchone()[0])
        server_id = migration = None
        if "meta" in counts:
            cur.execute("SELECT value FROM meta WHERE key = 'server_id'")
            row = cur.fetchone()
            server_id = row[0] if row else None
        if "migratehistory" in counts:
            cur.execute("SELECT name FROM migratehistory ORDER BY id DESC LIMIT 1")
            row = cur.fetchone()
            migration = row[0] if row else None
        _run([exe, "--format=custom", "--no-owner", f"--snapshot={snapshot}",
              f"--file={out}", f"--dbname={dsn}"], env)
    finally:
        conn.rollback()
        conn.close()
    return counts, server_id, migration


def check(archive: Path, dump_file: Path) -> None:
    """A custom-format dump is readable when pg_restore can list it."""
    exe = _tool("pg_restore")
    try:
        _run([exe, "--list", str(dump_file)], dict(os.environ))
    except PgError as exc:
        raise PgError(f"{archive}: the PostgreSQL dump is unreadable ({exc.detail})") from None


def restore(url: str, dump_file: Path) -> None:
    """Replace the schema's contents in one transaction: all or nothing."""
    exe = _tool("pg_restore")
    dsn, env = _split(url)
    _run([exe, "--clean", "--if-exists", "--no-owner", "--single-transaction",
          "--exit-on-error", f"--dbname={dsn}", str(dump_file)], env)
