"""Backup and restore on PostgreSQL (pg_dump / pg_restore) through the real CLI."""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from click.testing import CliRunner

from relaybox.cli import cli
from tests.plugin import FreshPostgres
from tests.support import pg_database

pytestmark = pytest.mark.postgres


@pytest.fixture
def pg_urls(fresh_postgres: FreshPostgres) -> list[str]:
    """Two empty databases of their own on the test server (source and restore target)."""
    return [fresh_postgres("relaybox_b") for _ in range(2)]


def relaybox(data_dir: Path, url: str, *args: str) -> dict[str, object] | list[object]:
    r = CliRunner().invoke(cli, ["--data-dir", str(data_dir), *args, "--json"],
                           env={"RELAYBOX_DATABASE_URL": url}, catch_exceptions=False)
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)  # type: ignore[no-any-return]


def server_id(url: str) -> str:
    db = pg_database(url, urlsplit(url).path.lstrip("/"))
    try:
        return str(db.execute_sql("SELECT value FROM meta WHERE key = 'server_id'")
                   .fetchone()[0])
    finally:
        db.close()


def test_backup_then_restore_onto_another_database(tmp_path: Path,
                                                   pg_urls: list[str]) -> None:
    source, target = pg_urls
    d1, d2 = tmp_path / "one", tmp_path / "two"
    init = relaybox(d1, source, "init")
    assert isinstance(init, dict)
    relaybox(d1, source, "user", "add", "alice")
    archive = tmp_path / "pg-backup.tar.gz"
    made = relaybox(d1, source, "backup", "--output", str(archive))
    assert isinstance(made, dict) and made["file"] == str(archive)
    assert archive.stat().st_mode & 0o077 == 0
    assert isinstance(made["counts"], dict) and 1 in made["counts"].values()
    relaybox(d1, source, "backup", "verify", str(archive))

    relaybox(d2, target, "restore", str(archive), "--yes")
    assert server_id(target) == init["server_id"] == server_id(source)
    users = relaybox(d2, target, "user", "list")
    assert [u["name"] for u in users] == ["alice"]  # type: ignore[index]
