"""`serve --workers 2`: any worker answers a scrape with the totals of all workers."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import httpx

from tests.observability.helpers import (
    Device,
    await_until,
    scrape,
    start_server,
    stop_server,
    value,
    wait_until,
)
from tests.support import seed


async def test_counters_and_gauges_add_up_across_workers(tmp_path: Path) -> None:
    data = tmp_path / "data"
    keys = seed(data, {"alice": 3})["alice"]
    srv = start_server(data, args=["--workers", "2"])
    try:
        assert srv.proc is not None
        folder = data / "run" / f"metrics-{srv.proc.pid}"
        # Both workers write their own files into the serve process's folder.
        wait_until(lambda: len(_pids(folder)) == 2, what="files of two workers")

        status = ("relaybox_http_requests_total", {"route": "/api/v1/status", "method": "GET",
                                                   "status": "200"})
        before = value(scrape(srv), status[0], **status[1])
        with httpx.Client() as client:
            for _ in range(12):  # spread over both workers by the kernel
                assert client.get(srv.url + "/api/v1/status").status_code == 200
        for _ in range(4):  # whichever worker answers the scrape, the total is the same
            assert value(scrape(srv), status[0], **status[1]) - before == 12

        devices = [await Device.connect(srv, k) for k in keys]

        async def sessions(n: int) -> bool:
            return all([value(await asyncio.to_thread(scrape, srv), "relaybox_gateway_sessions")
                        == n for _ in range(4)])

        await await_until(lambda: sessions(3), what="3 sessions in total")
        for d in devices:
            await d.close()
        await await_until(lambda: sessions(0), what="no session left")
        log = srv.log()
    finally:
        stop_server(srv)
    assert not folder.exists()  # removed when serve stops
    assert "Traceback" not in log, log


def _pids(folder: Path) -> set[str]:
    if not folder.is_dir():
        return set()
    return {m.group(1) for f in folder.iterdir() if (m := re.search(r"_(\d+)\.db$", f.name))}
