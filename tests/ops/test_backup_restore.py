"""Backup archives and restore: round trip, damaged archives refused, atomic swap."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import sqlite3
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

from relaybox.config import load_settings
from relaybox.services import backup, restore
from relaybox.services.backup import BackupError
from relaybox.store import migrate
from relaybox.store.append import append_now
from relaybox.store.db import open_database
from relaybox.store.events import PublishRequest
from relaybox.store.models import Event
from tests.cli.helpers import assert_error, run, run_json
from tests.support import seed, sqlite_events


def _fill(data_dir: Path, n: int = 5) -> None:
    keys = seed(data_dir, {"alice": 2})
    db = open_database(load_settings(data_dir, env={}))
    try:
        dev = keys["alice"][0]
        append_now(db, [PublishRequest(dev.user_id, dev.device_id, f"0190{i:04d}-0000-7000-8000"
                                       f"-000000000000", "notes", json.dumps({"i": i}))
                        for i in range(n)])
    finally:
        db.close()


def _state(data_dir: Path) -> dict[str, str]:
    """Every file of a data dir (outside backups) with its sha256: 'nothing changed'."""
    return {str(p.relative_to(data_dir)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(data_dir.rglob("*")) if p.is_file() and "backups" not in p.parts}


def test_round_trip_onto_a_fresh_data_dir(data_dir: Path, tmp_path: Path) -> None:
    _fill(data_dir)
    settings = load_settings(data_dir, env={})
    made = backup.create_backup(settings)
    assert made.file.parent == settings.backups_path and made.file.name.startswith("relaybox-")
    assert made.counts["event"] == 7  # 5 published + 2 device_added notices
    newest = max(p.stem for p in migrate.MIGRATIONS_DIR.glob("[0-9]*.py"))
    assert made.manifest["migration"] == newest
    target = load_settings(tmp_path / "fresh", env={})
    done = restore.restore_backup(target, made.file)
    assert done.server_id == made.manifest["server_id"] and done.config == "restored"
    assert sqlite_events(tmp_path / "fresh") == sqlite_events(data_dir)
    assert (tmp_path / "fresh" / "relaybox.toml").read_text() == settings.config_file.read_text()
    assert oct((tmp_path / "fresh" / "relaybox.db").stat().st_mode & 0o777) == "0o600"
    assert not list((tmp_path / "fresh").glob(".*"))  # no temporary leftovers


def test_restore_replaces_a_database_and_drops_its_stale_wal(data_dir: Path,
                                                             tmp_path: Path) -> None:
    _fill(data_dir)
    made = backup.create_backup(load_settings(data_dir, env={}))
    other = tmp_path / "other"
    seed(other, {"zed": 1})
    (other / "relaybox.toml").write_text("port = 9999\n")
    (other / "relaybox.db-shm").write_bytes(b"stale")
    done = restore.restore_backup(load_settings(other, env={}), made.file)
    assert done.config == "kept" and (other / "relaybox.toml").read_text() == "port = 9999\n"
    assert not (other / "relaybox.db-shm").exists()
    assert sqlite_events(other) == sqlite_events(data_dir)
    names = sqlite3.connect(other / "relaybox.db").execute("SELECT name FROM user").fetchall()
    assert names == [("alice",)]


def _rewrite(src: Path, dst: Path, edit: dict[str, bytes | None], *,
             extra: dict[str, bytes] | None = None) -> None:
    """Copy an archive, replacing (bytes) or dropping (None) members, adding ``extra``."""
    with tarfile.open(src) as tin, tarfile.open(dst, "w:gz") as tout:
        for info in tin.getmembers():
            data = tin.extractfile(info).read()  # type: ignore[union-attr]
            if info.name in edit:
                if edit[info.name] is None:
                    continue
                data = edit[info.name]  # type: ignore[assignment]
            info.size = len(data)
            tout.addfile(info, io.BytesIO(data))
        for name, data in (extra or {}).items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tout.addfile(info, io.BytesIO(data))


def _manifest(path: Path) -> dict[str, object]:
    with tarfile.open(path) as tar:
        return json.load(tar.extractfile("manifest.json"))  # type: ignore[arg-type]


def _damage(kind: str, good: Path, bad: Path) -> None:
    raw = good.read_bytes()
    if kind == "truncated":
        bad.write_bytes(raw[: len(raw) // 2])
    elif kind == "flipped":
        plain = bytearray(gzip.decompress(raw))
        plain[len(plain) // 2] ^= 0xFF  # inside the database member
        bad.write_bytes(gzip.compress(bytes(plain)))
    elif kind == "not-gzip":
        bad.write_bytes(b"hello, not an archive")
    elif kind == "empty":
        bad.write_bytes(b"")
    elif kind == "counts":
        m = _manifest(good)
        m["counts"]["event"] += 1  # type: ignore[index]
        _rewrite(good, bad, {"manifest.json": json.dumps(m).encode()})
    elif kind == "no-db":
        _rewrite(good, bad, {"relaybox.db": None})
    elif kind == "traversal":
        _rewrite(good, bad, {}, extra={"../escape.txt": b"x"})
    elif kind == "garbage-db":
        m = _manifest(good)
        junk = b"x" * 4096
        m["members"]["relaybox.db"] = {"bytes": len(junk),  # type: ignore[index]
                                       "sha256": hashlib.sha256(junk).hexdigest()}
        _rewrite(good, bad, {"manifest.json": json.dumps(m).encode(), "relaybox.db": junk})


KINDS = ["truncated", "flipped", "not-gzip", "empty", "counts", "no-db", "traversal",
         "garbage-db"]


@pytest.mark.parametrize("kind", KINDS)
def test_a_damaged_archive_is_refused_and_nothing_changes(kind: str, data_dir: Path,
                                                          tmp_path: Path) -> None:
    _fill(data_dir)
    good = backup.create_backup(load_settings(data_dir, env={})).file
    bad = tmp_path / f"{kind}.tar.gz"
    _damage(kind, good, bad)
    with pytest.raises(BackupError):
        backup.verify_backup(bad)
    target = tmp_path / "target"
    seed(target, {"keep": 1})
    before = _state(target)
    r = run(target, "restore", str(bad), "--yes")
    assert_error(r, str(bad))
    assert _state(target) == before
    assert not (tmp_path / "escape.txt").exists()
    # On a data dir that did not exist, a refused restore leaves nothing behind.
    assert_error(run(tmp_path / "never", "restore", str(bad), "--yes"))
    assert not (tmp_path / "never").exists()


def test_verify_cli_reports_counts_and_refuses_damage(data_dir: Path, tmp_path: Path) -> None:
    made = run_json(data_dir, "backup")
    doc = run_json(data_dir, "backup", "verify", made["file"])
    assert doc["ok"] is True and doc["counts"] == made["counts"]
    assert doc["sha256"] == hashlib.sha256(Path(made["file"]).read_bytes()).hexdigest()
    human = run(data_dir, "backup", "verify", made["file"])
    assert human.exit_code == 0 and "ok" in human.stdout
    bad = tmp_path / "bad.tar.gz"
    _damage("truncated", Path(made["file"]), bad)
    assert_error(run(data_dir, "backup", "verify", str(bad)), "damaged")
    assert_error(run(data_dir, "backup", "verify", str(tmp_path / "missing.tar.gz")),
                 "no such file")


def test_restore_refuses_a_backup_from_a_newer_relaybox(data_dir: Path, tmp_path: Path) -> None:
    good = backup.create_backup(load_settings(data_dir, env={})).file
    work = tmp_path / "x"
    work.mkdir()
    with tarfile.open(good) as tar:
        tar.extract("relaybox.db", work, filter="data")
    conn = sqlite3.connect(work / "relaybox.db")
    conn.execute("INSERT INTO migratehistory (name, migrated_at) VALUES ('999_future', "
                 "'2030-01-01')")
    conn.commit()
    conn.close()
    db = (work / "relaybox.db").read_bytes()
    m = _manifest(good)
    m["migration"] = "999_future"
    m["counts"]["migratehistory"] += 1  # type: ignore[index]
    m["members"]["relaybox.db"] = {"bytes": len(db),  # type: ignore[index]
                                   "sha256": hashlib.sha256(db).hexdigest()}
    newer = tmp_path / "newer.tar.gz"
    _rewrite(good, newer, {"manifest.json": json.dumps(m).encode(), "relaybox.db": db})
    backup.verify_backup(newer)  # a sound archive …
    assert_error(run(tmp_path / "t", "restore", str(newer), "--yes"), "newer relaybox")
    assert not (tmp_path / "t").exists()  # refused: the new data dir is not left behind


def test_restore_needs_yes(data_dir: Path, tmp_path: Path) -> None:
    made = run_json(data_dir, "backup")
    assert_error(run(tmp_path / "t", "restore", made["file"]), "--yes")
    assert not (tmp_path / "t").exists()
    done = run_json(tmp_path / "t", "restore", made["file"], "--yes")
    assert done["counts"] == made["counts"] and done["migrations_applied"] == []
    human = run(tmp_path / "u", "restore", made["file"], "--yes")
    assert human.exit_code == 0 and done["server_id"] in human.stdout


def test_output_that_exists_is_not_overwritten(data_dir: Path, tmp_path: Path) -> None:
    taken = tmp_path / "taken.tar.gz"
    taken.write_bytes(b"precious")
    assert_error(run(data_dir, "backup", "--output", str(taken)), "exists")
    assert taken.read_bytes() == b"precious"


def _at(t: float) -> Callable[[], float]:
    return lambda: t


def test_list_marks_unreadable_files_and_prune_keeps_newest_scheduled(data_dir: Path) -> None:
    settings = load_settings(data_dir, env={})
    manual = backup.create_backup(settings).file
    autos = [backup.create_backup(settings, auto=True, clock=_at(1.8e9 + d * 86400)).file
             for d in range(4)]
    (settings.backups_path / "junk.tar.gz").write_bytes(b"junk")
    listed = run_json(data_dir, "backup", "list")
    problems = {Path(d["file"]).name: d["problem"] for d in listed}
    assert problems["junk.tar.gz"] and problems[manual.name] is None
    assert sum(d["scheduled"] for d in listed) == 4
    human = run(data_dir, "backup", "list")
    assert human.exit_code == 0 and "unreadable" in human.stdout
    removed = backup.prune_backups(settings.backups_path, 2)
    assert removed == autos[:2]
    assert sorted(p.name for p in settings.backups_path.glob("*.tar.gz")) == sorted(
        [manual.name, autos[2].name, autos[3].name, "junk.tar.gz"])


def test_default_names_never_collide(tmp_path: Path) -> None:
    first = backup.default_name(tmp_path, 1.8e9)
    first.write_bytes(b"")
    second = backup.default_name(tmp_path, 1.8e9)
    assert second != first and second.name.endswith("-1.tar.gz")
    second.write_bytes(b"")
    autos = [backup.default_name(tmp_path, 1.8e9, auto=True)]
    assert autos[0].name.startswith("relaybox-auto-")


def test_events_survive_in_the_archive_byte_for_byte(data_dir: Path, tmp_path: Path) -> None:
    _fill(data_dir, 3)
    made = backup.create_backup(load_settings(data_dir, env={}), tmp_path / "b.tar.gz")
    out = tmp_path / "x"
    with tarfile.open(made.file) as tar:
        tar.extract("relaybox.db", out, filter="data")
    assert sqlite_events(out) == sqlite_events(data_dir)
    assert os.stat(made.file).st_mode & 0o077 == 0
    db = open_database(load_settings(data_dir, env={}))
    try:
        assert Event.select().count() == made.counts["event"]
    finally:
        db.close()


def test_config_data_dir_and_backups_are_private_whatever_the_umask(tmp_path: Path) -> None:
    d = tmp_path / "data"
    old = os.umask(0)
    try:
        assert run(d, "init").exit_code == 0
        made = run_json(d, "backup")
        (d / "relaybox.toml").chmod(0o644)
        assert run(d, "init", "--force").exit_code == 0
    finally:
        os.umask(old)

    def mode(p: Path | str) -> str:
        return oct(os.stat(p).st_mode & 0o777)

    assert mode(d) == "0o700"
    assert mode(d / "relaybox.toml") == "0o600"  # it may hold a database password
    assert mode(d / "relaybox.db") == "0o600"
    assert mode(made["file"]) == "0o600" and mode(d / "backups") == "0o700"


def test_restore_never_replaces_a_file_that_is_not_a_database(data_dir: Path,
                                                              tmp_path: Path) -> None:
    made = backup.create_backup(load_settings(data_dir, env={})).file
    notes = tmp_path / "notes.txt"
    notes.write_text("not a database\n")
    other = tmp_path / "other"
    other.mkdir()
    (other / "relaybox.toml").write_text(f'database_url = "sqlite:///{notes}"\n')
    assert_error(run(other, "restore", str(made), "--yes"), "not a SQLite database")
    assert notes.read_text() == "not a database\n"
    assert sorted(p.name for p in other.iterdir()) == ["relaybox.toml"]


def test_list_marks_an_archive_whose_manifest_names_a_path(data_dir: Path) -> None:
    settings = load_settings(data_dir, env={})
    good = backup.create_backup(settings).file
    m = _manifest(good)
    m["members"]["../x"] = m["members"]["relaybox.db"]  # type: ignore[index]
    _rewrite(good, settings.backups_path / "odd.tar.gz", {"manifest.json": json.dumps(m).encode()})
    problems = {Path(d["file"]).name: d["problem"] for d in run_json(data_dir, "backup", "list")}
    assert "unexpected member '../x'" in problems["odd.tar.gz"]
    assert problems[good.name] is None
