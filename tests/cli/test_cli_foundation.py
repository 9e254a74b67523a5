"""init, migrate, config and serve: the foundation commands as a self-hoster uses them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx

from tests.cli.helpers import assert_error, run, run_json
from tests.support import embedded_redis_pid, free_port, seed


def test_init_creates_a_private_data_dir_and_shows_the_admin_token_once(tmp_path: Path) -> None:
    d = tmp_path / "fresh"
    doc = run_json(d, "init")
    assert doc["data_dir"] == str(d)
    assert doc["admin_token"].startswith("rbadm_")
    assert Path(doc["config"]).is_file()
    assert (d / "relaybox.db").is_file()
    assert os.stat(d).st_mode & 0o077 == 0
    assert os.stat(d / "relaybox.db").st_mode & 0o077 == 0


def test_init_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    d = tmp_path / "d"
    first = run_json(d, "init")
    assert_error(run(d, "init"), "already initialised")
    again = run_json(d, "init", "--force")
    assert again["server_id"] != first["server_id"]


def test_migrate_status_down_up_round_trip(data_dir: Path) -> None:
    from relaybox.store.migrate import MIGRATIONS_DIR

    every = sorted(p.stem for p in MIGRATIONS_DIR.glob("[0-9][0-9][0-9]_*.py"))
    assert every[:2] == ["001_initial", "002_fewer_event_indexes"]
    newest, rest = every[-1], every[:-1]
    assert run_json(data_dir, "migrate", "status") == {"applied": every, "pending": []}
    assert run_json(data_dir, "migrate", "down", "--steps", "1")["migrations"] == [newest]
    assert run_json(data_dir, "migrate", "status") == {"applied": rest, "pending": [newest]}
    assert run_json(data_dir, "migrate", "down", "--steps", str(len(rest)))["migrations"] == [
        *reversed(rest)]
    assert run_json(data_dir, "migrate", "status")["pending"] == every
    assert run_json(data_dir, "migrate", "up")["migrations"] == every
    human = run(data_dir, "migrate", "status")
    assert human.exit_code == 0 and newest in human.stdout


def test_migrate_rejects_an_unknown_action(data_dir: Path) -> None:
    r = run(data_dir, "migrate", "sideways")
    assert r.exit_code == 2


def test_config_show_masks_secrets(data_dir: Path) -> None:
    env = {"RELAYBOX_METRICS_TOKEN": "s3cret-token",
           "RELAYBOX_REDIS_URL": "redis://user:hunter2@127.0.0.1:6379/0"}
    r = run(data_dir, "config", "show", "--json", env=env)
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["metrics.token"] == "***"
    assert "hunter2" not in r.stdout and "s3cret" not in r.stdout
    assert doc["redis_url"] == "redis://user:***@127.0.0.1:6379/0"
    table = run(data_dir, "config", "show", env=env)
    assert "hunter2" not in table.stdout and "gateway.window" in table.stdout


def test_config_check_names_key_value_and_file(data_dir: Path) -> None:
    assert run_json(data_dir, "config", "check")["ok"] is True
    cfg = data_dir / "relaybox.toml"
    cfg.write_text("port = 70000\n")
    assert_error(run(data_dir, "config", "check"), "port", "70000", str(cfg))
    cfg.write_text("[gateway]\nwindw = 3\n")
    assert_error(run(data_dir, "config", "check"), "gateway.window")


def test_a_bad_setting_stops_serve_with_one_line(tmp_path: Path) -> None:
    d = tmp_path / "d"
    env = {**os.environ, "RELAYBOX_DATA_DIR": str(d), "RELAYBOX_GATEWAY_WINDOW": "lots"}
    r = subprocess.run([sys.executable, "-m", "relaybox", "serve"], env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    assert r.stderr.strip().splitlines()[-1].startswith("error: gateway.window = 'lots'")
    assert "Traceback" not in r.stderr


def _running(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def test_serve_on_a_fresh_machine_then_again_keeps_the_data(tmp_path: Path) -> None:
    d = tmp_path / "never-initialised"
    port = free_port()
    env = {**os.environ, "RELAYBOX_DATA_DIR": str(d)}
    cmd = [sys.executable, "-m", "relaybox", "serve", "--port", str(port)]
    url = f"http://127.0.0.1:{port}/api/v1/status"

    def start() -> subprocess.Popen[str]:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        for _ in range(600):
            try:
                if httpx.get(url, timeout=1).status_code == 200:
                    return proc
            except httpx.HTTPError:
                pass
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            import time

            time.sleep(0.05)
        raise AssertionError("server did not come up")

    proc = start()
    first = httpx.get(url).json()
    assert first["status"] == "ok" and first["database"] == "ok" and first["redis"] == "ok"
    redis_pid = embedded_redis_pid(d)
    seed(d, {"alice": 1})
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    assert "admin token" in out  # printed once, on the first start
    assert not _running(redis_pid)  # the embedded Redis stops with the server
    assert not list((d / "run").glob("server-*.json"))

    proc = start()
    second = httpx.get(url).json()
    assert second["server_id"] == first["server_id"]
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert "rbadm_" not in out  # the admin token is never shown again
    users = run_json(d, "user", "list")
    assert [u["name"] for u in users] == ["alice"]
