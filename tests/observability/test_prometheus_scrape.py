"""A real Prometheus server (the Debian package) scrapes relaybox's /metrics."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import httpx

from tests.support import free_port


def test_a_real_prometheus_scrapes_metrics(make_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    exe = shutil.which("prometheus")
    assert exe, "the prometheus binary is installed by .ci/run (Debian package prometheus)"
    server = make_server()
    prom_port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
        "scrape_configs:\n  - job_name: relaybox\n    static_configs:\n"
        f"      - targets: ['127.0.0.1:{server.port}']\n")
    log = open(tmp_path / "prometheus.log", "wb")
    proc = subprocess.Popen(
        [exe, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{prom_port}"],
        stdout=log, stderr=subprocess.STDOUT)
    try:
        api = f"http://127.0.0.1:{prom_port}/api/v1"
        deadline = time.monotonic() + 60
        result: list[dict[str, object]] = []
        while time.monotonic() < deadline:
            assert proc.poll() is None, (tmp_path / "prometheus.log").read_text()
            try:
                query = 'relaybox_gateway_sessions{job="relaybox"}'
                r = httpx.get(f"{api}/query", params={"query": query}, timeout=2)
                result = r.json()["data"]["result"] if r.status_code == 200 else []
            except httpx.HTTPError:
                result = []
            if result:
                break
            time.sleep(0.2)
        assert result, "prometheus never stored a relaybox sample"
        targets = httpx.get(f"{api}/targets", timeout=5).json()["data"]["activeTargets"]
        assert [t["health"] for t in targets] == ["up"]
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()
