"""Server records in <data_dir>/run (bus/runfiles.py): live while their server holds the lock."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx

from relaybox.bus import (
    live_servers,
    read_server_file,
    redis_url_for,
    remove_server_file,
    write_server_file,
)
from tests.support import Server, free_port, seed


def test_a_record_nobody_holds_is_stale_even_if_its_pid_runs(tmp_path: Path) -> None:
    """A killed server's record whose pid now belongs to another process (here: this
    test's own) is not taken for a running server, and is cleared away."""
    run = tmp_path / "run"
    run.mkdir()
    stale = run / "server-1.json"
    stale.write_text(json.dumps({"pid": os.getpid(), "locked": True,
                                 "redis_socket": str(run / "gone.sock")}))
    assert live_servers(run) == []
    assert not stale.exists()


def test_serve_ignores_a_stale_record_and_starts_its_own_redis(tmp_path: Path) -> None:
    """A stale record naming a live pid (pid 1 always runs) and a dead Redis socket: the
    next `relaybox serve` starts its embedded Redis and is healthy, instead of pointing at
    the dead socket with /status 503 "redis: down" forever."""
    data = tmp_path / "data"
    seed(data, {})
    run = data / "run"
    run.mkdir(exist_ok=True)
    (run / "server-1.json").write_text(json.dumps({
        "pid": 1, "locked": True, "redis_socket": str(run / "dead-redis.sock"),
        "url": "http://127.0.0.1:1"}))
    srv = Server(data, free_port(), {})
    srv.start()
    try:
        body = httpx.get(srv.url + "/api/v1/status", timeout=5).json()
        assert body["redis"] == "ok" and body["status"] == "ok", body
        live = live_servers(run)  # the running server's own record, locked by it
        assert [s["pid"] for s in live] == [srv.proc.pid if srv.proc else None]
    finally:
        srv.stop()
    assert live_servers(run) == []


# -- the records of this process ----------------------------------------------------------
def test_a_record_this_process_writes_is_live_until_it_is_removed(tmp_path: Path) -> None:
    run = tmp_path / "run"
    info = {"pid": os.getpid(), "redis_socket": "/tmp/r.sock", "url": "http://127.0.0.1:1"}
    path = write_server_file(run, info)
    assert path == run / f"server-{os.getpid()}.json"
    assert live_servers(run) == [{**info, "locked": True}]
    assert read_server_file(run) == {**info, "locked": True}
    # A CLI command talks to the running server's embedded Redis, unless one is configured.
    assert redis_url_for("", run) == "unix:///tmp/r.sock"
    assert redis_url_for("redis://h:6379/0", run) == "redis://h:6379/0"
    remove_server_file(path)
    assert not path.exists()
    assert live_servers(run) == [] and read_server_file(run) is None
    assert redis_url_for("", run) is None  # nobody to tell


def test_another_process_sees_the_record_live_while_this_one_holds_its_lock(
        tmp_path: Path) -> None:
    run = tmp_path / "run"
    path = write_server_file(run, {"pid": os.getpid()})
    look = [sys.executable, "-c", "import sys; from pathlib import Path; "
            "from relaybox.bus import live_servers; "
            "print(len(live_servers(Path(sys.argv[1]))))", str(run)]
    try:
        assert subprocess.run(look, capture_output=True, text=True, check=True,
                              timeout=60).stdout.strip() == "1"
    finally:
        remove_server_file(path)


def test_an_unlocked_record_is_live_while_its_pid_runs_and_is_never_removed(
        tmp_path: Path) -> None:
    """A record written by a relaybox that did not lock its records: only its pid says."""
    run = tmp_path / "run"
    run.mkdir()
    gone = run / "server-2.json"
    gone.write_text(json.dumps({"pid": _pid_of_an_ended_process()}))
    here = run / "server-3.json"
    here.write_text(json.dumps({"pid": os.getpid()}))
    assert live_servers(run) == [{"pid": os.getpid()}]
    assert gone.exists()


def _pid_of_an_ended_process() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_records_that_are_not_json_objects_are_passed_over(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "server-4.json").write_text("{half")
    (run / "server-5.json").write_text("[1, 2]")
    assert live_servers(run) == []
    assert sorted(p.name for p in run.iterdir()) == ["server-4.json", "server-5.json"]
    assert live_servers(tmp_path / "no-such-dir") == []
