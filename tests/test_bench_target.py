"""``relaybox bench --target`` and ``--stress`` against real servers, on tiny loads."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from relaybox.cli import cli
from tests.support import Server, free_port


def _server(tmp_path: Path, env: dict[str, str]) -> tuple[Server, str]:
    data = tmp_path / "data"
    init = subprocess.run([sys.executable, "-m", "relaybox", "init", "--json"],
                          env={**os.environ, "RELAYBOX_DATA_DIR": str(data)},
                          capture_output=True, check=True)
    token = json.loads(init.stdout)["admin_token"]
    server = Server(data, free_port(), {"RELAYBOX_METRICS_ENABLED": "false", **env})
    server.start()
    return server, token


@pytest.fixture
def target(tmp_path: Path) -> Iterator[tuple[Server, str]]:
    server, token = _server(tmp_path, {})
    try:
        yield server, token
    finally:
        server.stop()


def test_bench_target_makes_devices_through_the_api_and_revokes_them(
        target: tuple[Server, str], tmp_path: Path) -> None:
    server, token = target
    out = tmp_path / "bench.json"
    r = CliRunner().invoke(cli, ["bench", "--target", server.url, "--admin-token", token,
                                 "--events", "200", "--catchup-events", "100",
                                 "--handshakes", "20", "--settle", "0",
                                 "--output", str(out)], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    doc = json.loads(out.read_text())
    assert set(doc["summary"]) == {"throughput_events_per_s", "latency_ms_p99_at_2000",
                                   "catchup_events_per_s", "handshakes_per_s"}
    assert "idle" in doc["skipped"] and "skipped idle" in r.output
    assert doc["cleanup"]["devices_revoked"] == 8 and not doc["cleanup"]["revoke_failed"]
    auth = {"Authorization": f"Bearer {token}"}
    revoked = httpx.get(server.url + "/api/v1/admin/revoked-devices", headers=auth).json()
    assert len(revoked) == 8
    users = [u["name"] for u in httpx.get(server.url + "/api/v1/admin/users",
                                          headers=auth).json()]
    assert doc["cleanup"]["users_left"] == [u for u in users if u.startswith("bench-")]


def test_bench_target_reports_a_refused_connection_and_still_cleans_up(
        tmp_path: Path) -> None:
    """One connection per address: the receiver gets in, the publisher is refused (503);
    the run ends with that reason instead of waiting, and the devices are revoked."""
    server, token = _server(tmp_path, {"RELAYBOX_LIMITS_CONNECTIONS_PER_ADDRESS": "1"})
    try:
        r = CliRunner().invoke(cli, ["bench", "--target", server.url, "--admin-token", token,
                                     "--only", "throughput", "--events", "100",
                                     "--output", str(tmp_path / "b.json")])
        assert r.exit_code == 1
        assert "503 too_many_connections" in r.output
        revoked = httpx.get(server.url + "/api/v1/admin/revoked-devices",
                            headers={"Authorization": f"Bearer {token}"}).json()
        assert len(revoked) == 4
    finally:
        server.stop()


def test_bench_target_with_a_wrong_admin_token_says_so(target: tuple[Server, str],
                                                       tmp_path: Path) -> None:
    server, _ = target
    r = CliRunner().invoke(cli, ["bench", "--target", server.url, "--admin-token", "nope",
                                 "--output", str(tmp_path / "b.json")])
    assert r.exit_code == 1 and "401" in r.output and "admin token" in r.output


def test_stress_ramps_until_an_objective_breaks(tmp_path: Path) -> None:
    """Three short steps against a throwaway server; a memory bound of 1 MiB breaks at
    the first step, and the report says so."""
    out = tmp_path / "stress.json"
    r = CliRunner().invoke(cli, ["bench", "--stress", "--stress-rate", "100",
                                 "--stress-connections", "4", "--stress-steps", "3",
                                 "--step-seconds", "0.3", "--p99-ms", "5000",
                                 "--max-rss-mib", "1", "--output", str(out)],
                           catch_exceptions=False)
    assert r.exit_code == 0, r.output
    doc = json.loads(out.read_text())
    assert doc["breaking_point"]["step"] == 1
    assert doc["breaking_point"]["broke_first"].startswith("server memory")
    assert doc["last_good"] is None
    assert "breaking point: step 1" in r.output


def test_stress_against_a_target_reports_every_step(target: tuple[Server, str],
                                                    tmp_path: Path) -> None:
    server, token = target
    out = tmp_path / "stress.json"
    r = CliRunner().invoke(cli, ["bench", "--stress", "--target", server.url,
                                 "--admin-token", token, "--stress-rate", "100",
                                 "--stress-steps", "2", "--step-seconds", "0.3",
                                 "--p99-ms", "5000", "--output", str(out)],
                           catch_exceptions=False)
    assert r.exit_code == 0, r.output
    doc = json.loads(out.read_text())
    assert [s["rate"] for s in doc["steps"]] == [100, 200]
    assert all(s["connections"] == 0 and s["delivered"] > 0 for s in doc["steps"])
    assert doc["breaking_point"] is None and doc["last_good"]["step"] == 2
    assert doc["cleanup"]["devices_revoked"] == 2
