"""``relaybox bench`` runs end to end on a tiny load and reports every measure."""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from click.testing import CliRunner

from relaybox import bench as b
from relaybox.cli import cli
from tests.plugin import FreshPostgres
from tests.support import pg_database


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


def test_bench_latency_reports_stalls_and_the_storage_probe(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    r = CliRunner().invoke(cli, ["bench", "--only", "latency", "--events", "400",
                                 "--output", str(out)], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    lat = json.loads(out.read_text())["latency_at_2000"]
    assert isinstance(lat["stalls"], list)
    probe = lat["storage_probe"]
    # 400 events at 2,000/s: ~0.2 s of measuring, at 250 probe fsyncs a second.
    assert probe["fsyncs"] > 0
    assert 0 < probe["fsync_ms_p50"] <= probe["fsync_ms_p99"] <= probe["fsync_ms_max"]
    assert set(lat["host_cpu_s"]) >= {"user", "system", "idle", "iowait", "steal"}


def test_stalls_are_runs_of_late_events_in_send_order() -> None:
    ms = 1_000_000
    t0 = 5_000 * ms
    # (sent, latency), not in send order: on time, two late in a row, on time, one late,
    # on time, and one late much later.
    events = [(t0 + 4 * ms, 12 * ms), (t0, 1 * ms), (t0 + 1 * ms, 30 * ms),
              (t0 + 2 * ms, 25 * ms), (t0 + 1500 * ms, 11 * ms), (t0 + 3 * ms, 2 * ms),
              (t0 + 5 * ms, 3 * ms)]
    sent, lat = zip(*events, strict=True)
    runs = b.stalls(list(sent), list(lat), t0)
    assert runs == [{"at_s": 0.001, "events": 2, "worst_ms": 30.0},
                    {"at_s": 0.004, "events": 1, "worst_ms": 12.0},
                    {"at_s": 1.5, "events": 1, "worst_ms": 11.0}]


def test_a_stall_is_marked_storage_only_if_a_probe_fsync_was_slow_meanwhile() -> None:
    ms = 1_000_000
    t0 = 10_000 * ms
    late = [{"at_s": 1.0, "events": 40, "worst_ms": 20.0},
            {"at_s": 2.0, "events": 30, "worst_ms": 15.0}]
    syncs = [(t0 + 1005 * ms, 18 * ms),  # slow, inside the first stall
             (t0 + 2000 * ms, 1 * ms),  # during the second, but fast
             (t0 + 2100 * ms, 40 * ms)]  # slow, after the second ended
    b.mark_storage_stalls(late, syncs, t0)
    assert [run["storage"] for run in late] == [True, False]
    summary = b.probe_summary([(t0 - ms, 50 * ms), *syncs], t0)
    assert summary["fsyncs"] == 3  # the sync before t0 is not part of the run
    assert summary["fsync_ms_max"] == 40.0
    assert summary["stalls"] == [{"at_s": 1.005, "ms": 18.0}, {"at_s": 2.1, "ms": 40.0}]
    note = b.stall_note({"stalls": late, "storage_probe": summary})
    assert note is not None and "2 stall(s)" in note and "1 of them" in note


@pytest.mark.postgres
def test_bench_measures_a_server_on_postgresql(tmp_path: Path,
                                              fresh_postgres: FreshPostgres) -> None:
    """With RELAYBOX_DATABASE_URL set, the devices are seeded into PostgreSQL, where the
    server looks for them (they went into a SQLite file before), and a second run on the
    same database works too (new names each run)."""
    db_url = fresh_postgres()
    for run in range(2):
        out = tmp_path / f"bench{run}.json"
        r = CliRunner().invoke(cli, ["bench", "--only", "throughput", "--events", "200",
                                     "--settle", "0", "--output", str(out)],
                               env={"RELAYBOX_DATABASE_URL": db_url},
                               catch_exceptions=False)
        assert r.exit_code == 0, r.output
        doc = json.loads(out.read_text())
        assert doc["database"] == "postgresql"
        assert doc["throughput"]["events"] == 200
    check = pg_database(db_url, urlsplit(db_url).path.lstrip("/"))
    users = [row[0] for row in check.execute_sql('SELECT name FROM "user"')]
    check.close()
    assert sum(u.startswith("bench0-") for u in users) == 2
