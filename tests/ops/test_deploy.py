"""scripts/deploy against a local install: a good version goes live, a broken one is rolled
back with no event lost; and the release/deploy workflows are well-formed."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import httpx
import pytest
import yaml

from relaybox.client.identity import Identity
from tests.gateway.helpers import connect_synced
from tests.support import Server, free_port, seed

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "scripts" / "deploy"
WORKFLOWS = ROOT / ".github" / "workflows"

# The restart and stop commands the test gives scripts/deploy: the server runs in the
# background from <root>/current, its pid in a file (what systemd does for the service).
STOP = """#!/bin/sh
if [ -f "$PIDFILE" ]; then
    pid=$(cat "$PIDFILE")
    kill "$pid" 2>/dev/null || true
    while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
    rm -f "$PIDFILE"
fi
"""
RESTART = STOP + """
"$RELAYBOX_VENV/bin/relaybox" serve --port "$PORT" </dev/null >>"$SERVER_LOG" 2>&1 &
echo $! >"$PIDFILE"
"""


def _copy_tree(dest: Path) -> Path:
    """The package source (what a wheel is built from), never the repository itself."""
    dest.mkdir()
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy2(ROOT / name, dest / name)
    for folder in ("relaybox", "migrations"):
        shutil.copytree(ROOT / folder, dest / folder,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return dest


def _wheel(src: Path, out: Path) -> Path:
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                    "--no-build-isolation", "-w", str(out), str(src)],
                   check=True, capture_output=True, timeout=120)
    (wheel,) = out.glob("relaybox-*.whl")
    return wheel


PROBE_MIGRATION = '''"""A column the broken version adds (its rollback must remove it)."""

import peewee as pw


def migrate(migrator, database, fake=False, **kwargs):
    migrator.add_fields("device", deploy_probe=pw.IntegerField(default=0))


def rollback(migrator, database, fake=False, **kwargs):
    migrator.remove_fields("device", "deploy_probe")
'''


def _broken(src: Path) -> None:
    """Version 0.1.1 with one more migration, whose readiness check always answers 503."""
    migrations = sorted((src / "migrations").glob("[0-9]*.py"))
    number = int(migrations[-1].name[:3]) + 1
    (src / "migrations" / f"{number:03d}_deploy_probe.py").write_text(
        PROBE_MIGRATION)
    status = src / "relaybox" / "server" / "api" / "status.py"
    text = status.read_text()
    patched = text.replace("status=200 if db_ok else 503)", "status=503)")
    assert patched != text, "the readiness route changed: update this patch"
    status.write_text(patched)
    for f, pat in ((src / "pyproject.toml", r'^version = "[^"]+"'),
                   (src / "relaybox" / "__init__.py", r'^__version__ = "[^"]+"')):
        f.write_text(re.sub(pat, pat.split(" = ")[0].lstrip("^") + ' = "0.1.1"',
                            f.read_text(), count=1, flags=re.M))


def _dependencies(dest: Path) -> Path:
    """This environment's installed packages minus relaybox: the new venvs get
    them on PYTHONPATH instead of downloading them (the wheel is installed --no-deps)."""
    dest.mkdir()
    site = Path(sysconfig.get_paths()["purelib"])
    skip = re.compile(r"^(relaybox|__editable__|_distutils_hack)|\.pth$")
    for entry in site.iterdir():
        if not skip.search(entry.name):
            (dest / entry.name).symlink_to(entry)
    return dest


def _deploy(root: Path, wheel: Path, env: dict[str, str], scripts: Path,
            device: Path, url: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(DEPLOY), str(wheel), "--root", str(root),
         "--url", url, "--device", str(device), "--timeout", "8",
         "--restart", str(scripts / "restart"), "--stop", str(scripts / "stop"),
         "--venv-args=--without-pip", "--pip-args=--no-deps --no-index"],
        env=env, capture_output=True, text=True, timeout=180)


def test_a_broken_version_is_rolled_back_and_no_event_is_lost(tmp_path: Path) -> None:
    good_src = _copy_tree(tmp_path / "good")
    bad_src = _copy_tree(tmp_path / "bad")
    _broken(bad_src)
    good, bad = _wheel(good_src, tmp_path / "wheel-good"), _wheel(bad_src, tmp_path / "wheel-bad")
    assert "-0.1.1-" in bad.name and good.name != bad.name

    data_dir, root, scripts = tmp_path / "data", tmp_path / "opt", tmp_path / "bin"
    scripts.mkdir()
    for name, text in (("restart", RESTART), ("stop", STOP)):
        (scripts / name).write_text(text)
        (scripts / name).chmod(0o755)
    port = free_port()
    pidfile = tmp_path / "server.pid"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COV", "PYTHON"))}
    env.update(PYTHONPATH=str(_dependencies(tmp_path / "deps")), PORT=str(port),
               PIDFILE=str(pidfile), SERVER_LOG=str(tmp_path / "server.log"),
               RELAYBOX_DATA_DIR=str(data_dir))
    server = Server(data_dir, port, env={})
    server_id = _init(data_dir)
    alice = seed(data_dir, {"alice": 2})["alice"]
    try:
        # The check's device: alice's first device, as an identity file.
        device = Identity(server=server.url, server_id=server_id,
                          device_id=alice[0].device_id, user_id=alice[0].user_id,
                          private_key=bytes(alice[0].key)).save(tmp_path / "device.json")

        first = _deploy(root, good, env, scripts, device.path or Path(), server.url)
        assert first.returncode == 0, first.stderr + _log(tmp_path)
        assert os.readlink(root / "current") == "venvs/0.1.0"
        assert httpx.get(server.url + "/api/v1/status").json()["version"] == "0.1.0"

        asyncio.run(_publish(server, alice[0], 3))
        applied = _applied(data_dir)

        second = _deploy(root, bad, env, scripts, device.path or Path(), server.url)
        last = second.stderr.strip().splitlines()[-1]
        assert second.returncode == 1, second.stderr + _log(tmp_path)
        assert last.startswith("deploy: rolled back to 0.1.0: ")
        assert "health/ready" in last and "503" in last
        assert (root / "venvs" / "0.1.1").is_dir()  # kept for a look at what failed
        assert "migrations applied: " in second.stderr and "_deploy_probe" in second.stderr
        assert "migrations undone: " in second.stderr
        assert _applied(data_dir) == applied  # the new version's migration is undone

        # The old version serves again, from the old venv, with every event.
        assert os.readlink(root / "current") == "venvs/0.1.0"
        assert httpx.get(server.url + "/api/v1/health/ready").status_code == 200
        assert httpx.get(server.url + "/api/v1/status").json()["version"] == "0.1.0"
        exe = Path(f"/proc/{pidfile.read_text().strip()}/cmdline").read_bytes()
        assert b"venvs/0.1.0/bin" in exe or str(root / "current").encode() in exe
        assert asyncio.run(_catch_up(server, alice[1])) == ["e0", "e1", "e2"]
        backups = list((data_dir / "backups").glob("relaybox-*.tar.gz"))
        assert len(backups) == 1  # taken before the deploy that had a previous version
    finally:
        subprocess.run([str(scripts / "stop")], env=env, timeout=30, check=False)
        server.kill()  # only the embedded Redis, if the server left it behind


def _applied(data_dir: Path) -> list[str]:
    out = subprocess.run([sys.executable, "-m", "relaybox", "migrate", "status", "--json"],
                         check=True, capture_output=True, text=True, timeout=60,
                         env={**os.environ, "RELAYBOX_DATA_DIR": str(data_dir)})
    return list(json.loads(out.stdout)["applied"])


def _init(data_dir: Path) -> str:
    """relaybox init (this checkout's version: the same schema); the server id."""
    out = subprocess.run([sys.executable, "-m", "relaybox", "init", "--json"], check=True,
                         capture_output=True, text=True, timeout=60,
                         env={**os.environ, "RELAYBOX_DATA_DIR": str(data_dir)})
    return str(json.loads(out.stdout)["server_id"])


async def _publish(server: Server, dev: object, n: int) -> None:
    c = await connect_synced(server, dev)  # type: ignore[arg-type]
    await c.publish_many("notes", [f"e{i}" for i in range(n)])
    await c.close()


async def _catch_up(server: Server, dev: object) -> list[str]:
    from tests.gateway.helpers import Client

    c = await Client.connect(server, dev)  # type: ignore[arg-type]
    bodies = []
    while True:
        f = await c.expect_type("event", "synced")
        if f["type"] == "synced":
            break
        await c.ack(f["stream"], f["seq"])
        if f["stream"] == "notes":
            bodies.append(f["body"])
    await c.close()
    return bodies


def _log(tmp_path: Path) -> str:
    with contextlib.suppress(OSError):
        return "\n--- server log ---\n" + (tmp_path / "server.log").read_text()[-3000:]
    return ""


# -- workflows --------------------------------------------------------------------------------
def _workflow(name: str) -> dict:
    doc = yaml.safe_load((WORKFLOWS / name).read_text())
    assert isinstance(doc, dict) and doc["jobs"], name
    # PyYAML reads the bare key `on` as True.
    doc["on"] = doc.pop(True, doc.get("on"))
    return doc


def _steps(job: dict) -> str:
    return "\n".join(str(s.get("run", "")) + " " + str(s.get("uses", "")) for s in job["steps"])


def test_release_builds_smoke_tests_sboms_and_publishes_with_trusted_publishing() -> None:
    wf = _workflow("release.yml")
    assert "tags" in wf["on"]["push"]
    jobs = wf["jobs"]
    build = _steps(jobs["build"])
    for needle in ("python -m build", "--version", "relaybox init", "relaybox serve",
                   "/api/v1/health/ready", "cyclonedx-py", "actions/upload-artifact"):
        assert needle in build, needle
    publish = jobs["publish"]
    assert publish["permissions"]["id-token"] == "write"
    assert "build" in publish["needs"]
    assert "pypa/gh-action-pypi-publish" in _steps(publish)
    notes = jobs["release-notes"]
    assert notes["permissions"]["contents"] == "write"
    assert "gh release create" in _steps(notes)


def test_deploy_workflow_calls_scripts_deploy() -> None:
    wf = _workflow("deploy.yml")
    assert "workflow_dispatch" in wf["on"] or "workflow_run" in wf["on"]
    steps = _steps(wf["jobs"]["deploy"])
    assert "scripts/deploy" in steps


def test_ci_runs_on_every_supported_python() -> None:
    wf = _workflow("ci.yml")
    matrix = wf["jobs"]["test"]["strategy"]["matrix"]["python-version"]
    assert set(matrix) == {"3.11", "3.12", "3.13"}
    if (ROOT / "scripts" / "audit").exists():
        assert "scripts/audit" in _steps(wf["jobs"]["audit"])


@pytest.mark.parametrize("name", ["release.yml", "deploy.yml", "ci.yml"])
def test_workflow_actions_are_pinned_to_a_version(name: str) -> None:
    wf = _workflow(name)
    for job in wf["jobs"].values():
        for step in job["steps"]:
            if "uses" in step:
                assert "@" in step["uses"], step["uses"]
