"""``relaybox bench`` runs end to end on a tiny load and reports every measure."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from relaybox.cli import cli


def test_bench_reports_every_measure(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    r = CliRunner().invoke(cli, ["bench", "--events", "300", "--catchup-events", "200",
                                 "--sessions", "20", "--handshakes", "50", "--settle", "0",
                                 "--output", str(out)],
                           catch_exceptions=False)
    assert r.exit_code == 0, r.output
    doc = json.loads(out.read_text())
    assert set(doc["summary"]) == {"throughput_events_per_s", "latency_ms_p99_at_2000",
                                   "catchup_events_per_s", "handshakes_per_s",
                                   "idle_kib_per_session"}
    assert doc["throughput"]["events"] == 300
    assert doc["throughput"]["events_per_s"] > 0
    assert doc["catchup"]["events"] >= 200
    assert doc["handshakes"]["handshakes"] > 0
    assert doc["idle"]["sessions"] == 20
    assert "throughput_events_per_s" in r.output
