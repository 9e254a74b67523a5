"""``relaybox serve`` says where it serves in one line, without the framework's start-up noise."""

from __future__ import annotations

import time
from collections.abc import Callable

from tests.support import Server


def test_one_ready_line_with_the_urls_and_the_next_step(make_server: Callable[..., Server]
                                                        ) -> None:
    srv = make_server()
    # The line comes from the same start-up step that opens the server for requests.
    deadline = time.monotonic() + 10
    while " ready: " not in (log := srv.log()) and time.monotonic() < deadline:
        time.sleep(0.05)
    base = f"http://127.0.0.1:{srv.port}"
    ready = [line for line in log.splitlines() if " ready: " in line]
    assert ready == [f"relaybox 0.1.0 ready: app {base}/app/ · API {base}/api/v1 · "
                     f"docs {base}/docs"], log
    assert "next: relaybox user add NAME, then relaybox pair NAME" in log
    for noise in ("Sanic Extensions", "Starting worker", "Worker ready", "Migrate \""):
        assert noise not in log, log
