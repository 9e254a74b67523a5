"""``relaybox demo`` runs, ends by itself, and leaves nothing behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import psutil

ENV = {k: v for k, v in os.environ.items() if not k.startswith("RELAYBOX_")}


def test_demo_exchanges_events_and_cleans_up() -> None:
    res = subprocess.run([sys.executable, "-m", "relaybox", "demo", "--duration", "2", "--json"],
                         capture_output=True, text=True, timeout=60, env=ENV)
    assert res.returncode == 0, res.stderr
    summary = json.loads(res.stdout)  # the live view went to stderr
    data_dir = summary["data_dir"]
    assert summary["sent"]["laptop"] > 0 and summary["sent"]["phone"] > 0
    # Every event of one device reached the other, once.
    assert summary["received"] == {"laptop": summary["sent"]["phone"],
                                   "phone": summary["sent"]["laptop"]}
    assert summary["lost"] == 0 and summary["duplicates"] == 0
    assert summary["conflicts"] == 1
    assert summary["server_exit_code"] == 0
    assert summary["redis_left_running"] is False
    assert summary["cleaned_up"] is True and not Path(data_dir).exists()
    # No process of the demo outlives it: not the server, not its redis-server.
    for proc in psutil.process_iter(["status"]):
        if proc.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        try:
            env_dir = proc.environ().get("RELAYBOX_DATA_DIR", "")
            cwd = proc.cwd()
        except (psutil.Error, OSError):
            continue
        assert not env_dir.startswith(data_dir), proc
        assert not cwd.startswith(data_dir), proc
