"""Hostile backup archives: `backup verify` and `restore` write nothing outside their temp dir.

Each archive below is well-formed gzip and tar; only its names, types, sizes or
checksums attack. Every test runs both commands and then checks that a sentinel
file next to the data dir is untouched and the target data dir is byte-for-byte
unchanged (backup.md "Checking a backup").
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from relaybox.config import load_settings
from relaybox.services import backup
from tests.cli.helpers import assert_error, run
from tests.support import seed

SENTINEL = b"precious\n"
_FSIZE = 4 << 20  # the bomb tests' file-size limit: no file may grow past 4 MiB


@dataclass(frozen=True)
class Good:
    """The members of a sound archive, to build hostile ones from."""

    manifest: dict[str, object]
    files: dict[str, bytes]


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory) -> Good:
    src = tmp_path_factory.mktemp("source") / "data"
    seed(src, {"alice": 1})
    made = backup.create_backup(load_settings(src, env={}))
    with tarfile.open(made.file) as tar:
        files = {m.name: tar.extractfile(m).read()  # type: ignore[union-attr]
                 for m in tar.getmembers()}
    del files["manifest.json"]
    return Good(made.manifest, files)


@dataclass(frozen=True)
class Scene:
    root: Path
    sentinel: Path
    target: Path
    before: dict[str, str]
    tmp: Path  # the system temp folder, as `backup verify` sees it

    def archive(self, *entries: tuple[tarfile.TarInfo, bytes | None]) -> Path:
        dst = self.root / "hostile.tar.gz"
        with tarfile.open(dst, "w:gz", format=tarfile.PAX_FORMAT) as tar:
            for info, data in entries:
                tar.addfile(info, None if data is None else io.BytesIO(data))
        return dst

    def unharmed(self) -> None:
        assert self.sentinel.read_bytes() == SENTINEL
        assert _state(self.target) == self.before
        assert not list(self.tmp.iterdir())  # the verify folder is gone too
        assert sorted(p.name for p in self.root.iterdir()) == [
            "hostile.tar.gz", "sentinel.txt", "target", "tmp"]


@pytest.fixture
def scene(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Scene:
    """root/{sentinel.txt, target/ (a data dir), tmp/ (where verify extracts)}.

    From ``tmp/.relaybox-verify-*/`` and ``target/.relaybox-verify-*/`` alike,
    ``../../sentinel.txt`` is the sentinel.
    """
    sentinel = tmp_path / "sentinel.txt"
    sentinel.write_bytes(SENTINEL)
    target = tmp_path / "target"
    seed(target, {"keep": 1})
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    return Scene(tmp_path, sentinel, target, _state(target), tmp)


def _state(data_dir: Path) -> dict[str, str]:
    """Every entry of a folder (hidden ones too) with its content hash."""
    return {str(p.relative_to(data_dir)): "dir" if p.is_dir() else
            hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(data_dir.rglob("*"))}


def _file(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def _manifest(good: Good, listed: dict[str, bytes]) -> tuple[tarfile.TarInfo, bytes]:
    """The good manifest, listing exactly ``listed`` with their true sizes and sha256."""
    doc = dict(good.manifest)
    doc["members"] = {n: {"bytes": len(d), "sha256": hashlib.sha256(d).hexdigest()}
                      for n, d in listed.items()}
    return _file("manifest.json", json.dumps(doc).encode())


def _link(name: str, kind: bytes, to: str) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, to
    return info, None


def _refused(scene: Scene, archive: Path, *fragments: str) -> None:
    """`backup verify` and `restore` (onto the target and onto a new data dir) refuse it."""
    assert_error(run(scene.target, "backup", "verify", str(archive)), *fragments)
    scene.unharmed()
    assert_error(run(scene.target, "restore", str(archive), "--yes"), *fragments)
    scene.unharmed()
    fresh = scene.root / "fresh"
    assert_error(run(fresh, "restore", str(archive), "--yes"), *fragments)
    assert not fresh.exists()
    scene.unharmed()


def test_a_member_name_with_dotdot_is_refused(scene: Scene, good: Good) -> None:
    evil = b"pwned\n"
    db = good.files["relaybox.db"]
    archive = scene.archive(
        _manifest(good, {"relaybox.db": db, "../../sentinel.txt": evil}),
        _file("relaybox.db", db), _file("../../sentinel.txt", evil))
    _refused(scene, archive, "unexpected member '../../sentinel.txt'")


def test_an_absolute_member_name_is_refused(scene: Scene, good: Good) -> None:
    evil, name = b"pwned\n", str(scene.sentinel)
    db = good.files["relaybox.db"]
    archive = scene.archive(_manifest(good, {"relaybox.db": db, name: evil}),
                            _file("relaybox.db", db), _file(name, evil))
    _refused(scene, archive, f"unexpected member {name!r}")


@pytest.mark.parametrize("to", ["../../sentinel.txt", "ABSOLUTE"])
def test_a_symlink_member_is_refused(scene: Scene, good: Good, to: str) -> None:
    db = good.files["relaybox.db"]
    link = str(scene.sentinel) if to == "ABSOLUTE" else to
    archive = scene.archive(_manifest(good, {"relaybox.db": db}),
                            _link("relaybox.db", tarfile.SYMTYPE, link))
    _refused(scene, archive, "relaybox.db is not a regular file")


def test_a_hardlink_member_is_refused(scene: Scene, good: Good) -> None:
    db = good.files["relaybox.db"]
    archive = scene.archive(_manifest(good, {"relaybox.db": db}),
                            _link("relaybox.db", tarfile.LNKTYPE, str(scene.sentinel)))
    _refused(scene, archive, "relaybox.db is not a regular file")


def test_a_device_or_fifo_member_is_refused(scene: Scene, good: Good) -> None:
    db = good.files["relaybox.db"]
    fifo = tarfile.TarInfo("relaybox.db")
    fifo.type = tarfile.FIFOTYPE
    archive = scene.archive(_manifest(good, {"relaybox.db": db}), (fifo, None))
    _refused(scene, archive, "relaybox.db is not a regular file")


def test_a_wrong_checksum_modifies_no_file(scene: Scene, good: Good) -> None:
    db = bytearray(good.files["relaybox.db"])
    manifest = _manifest(good, {"relaybox.db": bytes(db)})
    db[len(db) // 2] ^= 0xFF  # same size, other content
    archive = scene.archive(manifest, _file("relaybox.db", bytes(db)))
    _refused(scene, archive, "relaybox.db does not match its checksum")


def test_a_wrong_checksum_on_a_foreign_path_modifies_no_file(scene: Scene, good: Good) -> None:
    db = good.files["relaybox.db"]
    manifest = _manifest(good, {"relaybox.db": db, "../../sentinel.txt": b"other\n"})
    archive = scene.archive(manifest, _file("../../sentinel.txt", b"pwned\n"),
                            _file("relaybox.db", db))
    _refused(scene, archive)


@pytest.mark.parametrize("name", ["notes.txt", "relaybox.db-wal", "backups"])
def test_a_member_name_outside_the_format_is_refused(scene: Scene, good: Good,
                                                     name: str) -> None:
    db, extra = good.files["relaybox.db"], b"hello\n"
    archive = scene.archive(_manifest(good, {"relaybox.db": db, name: extra}),
                            _file("relaybox.db", db), _file(name, extra))
    _refused(scene, archive, f"unexpected member {name!r}")


def test_a_second_copy_of_a_member_is_refused(scene: Scene, good: Good) -> None:
    db = good.files["relaybox.db"]
    archive = scene.archive(_manifest(good, {"relaybox.db": db}), _file("relaybox.db", db),
                            _file("relaybox.db", db))
    _refused(scene, archive, "unexpected member 'relaybox.db'")


def test_an_archived_config_cannot_place_the_database_outside_the_data_dir(
        scene: Scene, good: Good) -> None:
    db = good.files["relaybox.db"]
    config = f'database_url = "sqlite:///{scene.sentinel}"\n'.encode()
    archive = scene.archive(_manifest(good, {"relaybox.db": db, "relaybox.toml": config}),
                            _file("relaybox.db", db), _file("relaybox.toml", config))
    r = run(scene.target, "backup", "verify", str(archive))  # a sound archive …
    assert r.exit_code == 0, r.output
    fresh = scene.root / "fresh"  # … but on a new machine its config may not aim it
    assert_error(run(fresh, "restore", str(archive), "--yes"), "outside", str(fresh))
    assert not fresh.exists()
    scene.unharmed()


def test_an_archive_that_is_not_a_regular_file_is_refused(scene: Scene) -> None:
    assert_error(run(scene.target, "backup", "verify", os.devnull), "not a regular file")
    assert_error(run(scene.target, "restore", os.devnull, "--yes"), "not a regular file")
    assert _state(scene.target) == scene.before


# -- sizes: each case runs the real CLI in a process that may not grow any file past 4 MiB,
# so a refusal that came only after writing a big file would fail with "File too large".
def _limited(scene: Scene, data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    code = ("import resource, runpy, sys; "
            f"resource.setrlimit(resource.RLIMIT_FSIZE, ({_FSIZE}, {_FSIZE})); "
            "sys.argv = ['relaybox'] + sys.argv[1:]; "
            "runpy.run_module('relaybox', run_name='__main__')")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAYBOX_")}
    env["TMPDIR"] = str(scene.tmp)
    return subprocess.run(
        [sys.executable, "-c", code, "--data-dir", str(data_dir), *args, "--json"],
        env=env, capture_output=True, text=True, timeout=120, check=False)


def _bomb(kind: str, good: Good) -> list[tuple[tarfile.TarInfo, bytes | None]]:
    db = good.files["relaybox.db"]
    zeros = bytes(64 << 20)  # 64 MiB that gzip squeezes into about 64 KiB
    if kind == "declared-too-large":
        info, manifest = _manifest(good, {"relaybox.db": db})
        doc = json.loads(manifest)
        doc["members"]["relaybox.db"]["bytes"] = backup.MAX_DB_BYTES + 1
        member = tarfile.TarInfo("relaybox.db")
        member.size = len(zeros)  # the data runs out long before the declared size
        return [_file("manifest.json", json.dumps(doc).encode()), (member, zeros)]
    if kind == "bigger-than-declared":
        return [_manifest(good, {"relaybox.db": db}), _file("relaybox.db", zeros)]
    assert kind == "header-bomb"  # a 64 MiB pax header before the manifest
    info, manifest = _manifest(good, {"relaybox.db": db})
    info.pax_headers = {"comment": "x" * len(zeros)}
    return [(info, manifest), _file("relaybox.db", db)]


@pytest.mark.parametrize(("kind", "why"), [
    ("declared-too-large", f"the limit is {backup.MAX_DB_BYTES}"),
    ("bigger-than-declared", f"holds {64 << 20} bytes, its manifest says"),
    ("header-bomb", "holds more data than its manifest declares"),
])
def test_an_oversize_member_or_bomb_is_refused_before_it_is_written(
        scene: Scene, good: Good, kind: str, why: str) -> None:
    archive = scene.archive(*_bomb(kind, good))
    for data_dir, args in ((scene.target, ("backup", "verify", str(archive))),
                           (scene.target, ("restore", str(archive), "--yes")),
                           (scene.root / "fresh", ("restore", str(archive), "--yes"))):
        r = _limited(scene, data_dir, *args)
        assert r.returncode == 1 and r.stdout == "", r.stderr
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and why in lines[0], r.stderr
        assert not (scene.root / "fresh").exists()
        scene.unharmed()
