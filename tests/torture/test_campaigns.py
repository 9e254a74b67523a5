"""A short budget of each campaign in the normal test command (docs/operations.md, "Crash
campaigns", has the long mode). A failure here names a broken promise of protocol.md; the
summary and the seed to replay it are in the failure message.

RELAYBOX_TORTURE_SECONDS lengthens both; RELAYBOX_TORTURE_SEED replays one run.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.plugin import postgres_url
from tests.torture.campaign import Budget, cluster_campaign, crash_campaign
from tests.torture.faults import RedisServer

pytestmark = [pytest.mark.asyncio(loop_scope="function"), pytest.mark.slow,
              pytest.mark.timeout(300)]


def _budget(seconds: float) -> Budget:
    budget = Budget(seconds=float(os.environ.get("RELAYBOX_TORTURE_SECONDS", seconds)),
                    quiesce_s=60.0)
    if os.environ.get("RELAYBOX_TORTURE_SEED"):
        budget.seed = int(os.environ["RELAYBOX_TORTURE_SEED"])
    return budget


def _needs(*programs: str) -> None:
    missing = [p for p in programs if not (shutil.which(p) or os.path.exists(f"/usr/sbin/{p}")
                                           or os.path.exists(f"/usr/bin/{p}"))]
    if missing:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{missing} not installed: CI must run the cluster campaign")
        pytest.skip(f"{missing} not installed (apt-get install haproxy redis-server)")


async def test_crash_campaign_one_node(tmp_path: Path) -> None:
    """SQLite, embedded Redis, writer process: kill -9 of everything, of the writer, of
    Redis; SIGSTOP of the server or the writer; a full disk (tmpfs, as root)."""
    report = await crash_campaign(tmp_path, _budget(30.0))
    print(report.text())
    assert report.ok, report.text()


@pytest.mark.postgres
async def test_cluster_campaign_three_nodes(tmp_path: Path) -> None:
    """Three nodes on PostgreSQL and redis-server behind haproxy: nodes killed and stopped,
    Redis killed, PostgreSQL connections terminated, one device on two nodes at once."""
    url = postgres_url()
    _needs("haproxy", "redis-server")
    assert RedisServer.executable()
    report = await cluster_campaign(tmp_path, _budget(30.0), url)
    print(report.text())
    assert report.ok, report.text()
