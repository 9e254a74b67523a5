"""Minimal reproducers of faults the fuzzers met, each on the documented rule at stake.

They run on a server of their own, whose log is not checked at teardown (a fault may
write to it); each test checks the log itself.
"""

from __future__ import annotations

import asyncio
import contextlib

import httpx
import pytest
from websockets.exceptions import ConnectionClosed

from tests.api.helpers import Api
from tests.fuzz.conftest import StartServer
from tests.fuzz.player import TIMEOUT_S, LogWatch, connect
from tests.fuzz.strategies import oversized_text


@pytest.fixture(scope="module")
def api(start_server: StartServer) -> Api:
    return start_server({}, check_log=False)


def test_frames_after_an_oversized_frame_keep_the_1009(api: Api) -> None:
    """protocol.md Transport: a frame over max_frame_bytes is refused with close 1009,
    also when the client has sent more after it. Closing the socket while that input is
    unread answers the client with a TCP reset, which can destroy the close frame before
    the client reads it (1006, abnormal closure, instead of 1009)."""

    async def once() -> int | None:
        ws = await connect(api.server)
        with contextlib.suppress(ConnectionClosed):
            await ws.send(oversized_text(140_000))
            await ws.ping()
            for _ in range(10):
                await ws.send("null")
            async with asyncio.timeout(TIMEOUT_S):
                while True:
                    await ws.recv()
        await ws.wait_closed()
        return ws.close_code

    # Timing decides whether the reset overtakes the close frame: several tries.
    codes = [asyncio.run(once()) for _ in range(50)]
    assert codes.count(1009) == len(codes), codes


def test_get_with_a_body_logs_no_error(api: Api) -> None:
    """Any client can write ERROR lines into the server log (and set off alerts on
    them) by sending a body with a GET; the request itself is answered normally."""
    log = LogWatch(api.server)
    with httpx.Client(base_url=api.url, timeout=10) as http:
        r = http.request("GET", "/status", content=b"[1]",
                         headers={"Content-Type": "application/json"})
        assert r.status_code == 200
        # The line is written after the answer; a second request on the same connection
        # is handled only once the first is finished with.
        assert http.get("/status").status_code == 200
    text = log.new_text()
    assert " ERROR " not in text, text[-2000:]
