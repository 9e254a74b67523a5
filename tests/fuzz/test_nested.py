"""JSON nested 1,000 and 100,000 deep, in a ping's ref, a publish body and a REST body:
a documented refusal (or, for a depth relaybox can store, the documented answer), and a
connection closed cleanly, never aborted.

The server reads frames up to 1 MiB here, so that 100,000 levels (200 KB of brackets)
reach the JSON parser instead of stopping at the frame size limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

import httpx
import pytest
from websockets.exceptions import ConnectionClosed

from relaybox.protocol.encoding import uuid4
from tests.api.helpers import Api
from tests.fuzz.conftest import StartServer
from tests.fuzz.player import TIMEOUT_S, handshake
from tests.fuzz.test_rest_fuzz import assert_answer

DEPTHS = [1000, 100_000]
# array: orjson's path; object: the same with members; bigint: a 19-digit number sends
# the text to the exact stdlib parser (encoding.py), whose recursion limit differs.
SHAPES = ["array", "object", "bigint"]


def nested_text(depth: int, shape: str) -> str:
    if shape == "object":
        return '{"a":' * depth + "1" + "}" * depth
    inner = "12345678901234567890" if shape == "bigint" else "1"
    return "[" * depth + inner + "]" * depth


@pytest.fixture(scope="module")
def api(start_server: StartServer) -> Api:
    return start_server({"alice": 2}, RELAYBOX_GATEWAY_MAX_FRAME_BYTES="1048576")


async def _exchange(api: Api, frame: str) -> tuple[list[dict[str, Any]], int | None]:
    """Send ``frame`` after a handshake; every frame until the session is quiet (a final
    ping answered) or closed, and the close code."""
    ws, _ = await handshake(api.server, api.devices["alice"][0])
    got: list[dict[str, Any]] = []
    with contextlib.suppress(ConnectionClosed):
        await ws.send(frame)
        await ws.send('{"type":"ping","ref":"end"}')
        async with asyncio.timeout(TIMEOUT_S):
            while True:
                f = json.loads(await ws.recv())
                if f.get("type") == "pong" and f.get("ref") == "end":
                    break
                if f.get("type") not in ("event", "synced"):
                    got.append(f)
    await ws.close()
    await ws.wait_closed()
    return got, ws.close_code


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("depth", DEPTHS)
def test_ping_ref(api: Api, depth: int, shape: str) -> None:
    """protocol.md §4: the ref is echoed; one too deep to encode again gets a non-fatal
    ``error`` ``invalid``; one too deep to parse is a malformed frame (4400)."""
    frame = '{"type":"ping","ref":' + nested_text(depth, shape) + "}"
    got, code = asyncio.run(_exchange(api, frame))
    assert code in (1000, 4400), (code, got)
    if code == 4400:
        assert [f["type"] for f in got] == ["error"] and got[0]["code"] == "bad_request", got
    elif got and got[0]["type"] == "error":
        assert [(f["type"], f["code"]) for f in got] == [("error", "invalid")], got
    else:
        assert [f["type"] for f in got] == ["pong"], got
        assert got[0]["ref"] == json.loads(nested_text(depth, shape))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("depth", DEPTHS)
def test_publish_body(api: Api, depth: int, shape: str) -> None:
    pid = uuid4()
    frame = (f'{{"type":"publish","id":"{pid}","stream":"deep","body":'
             + nested_text(depth, shape) + "}")
    got, code = asyncio.run(_exchange(api, frame))
    assert code in (1000, 4400), (code, got)
    if code == 4400:
        assert [f["type"] for f in got] == ["error"] and got[0]["code"] == "bad_request", got
    else:  # a body it cannot store is nacked; one it can is stored and acked
        assert len(got) == 1 and got[0]["id"] == pid, got
        assert (got[0]["type"], got[0].get("code")) in (("nack", "invalid"), ("ack", None))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("depth", DEPTHS)
@pytest.mark.parametrize("where", ["publish-body", "whole-body", "admin-user-name",
                                   "pairing-claim"])
def test_rest_body(api: Api, depth: int, shape: str, where: str) -> None:
    deep = nested_text(depth, shape)
    if where == "publish-body":
        url, token = "/streams/deep/events", api.token(api.devices["alice"][0])
        body = f'{{"id":"{uuid4()}","body":{deep}}}'
    elif where == "whole-body":
        url, token = "/streams/deep/events", api.token(api.devices["alice"][0])
        body = deep
    elif where == "admin-user-name":
        url, token = "/admin/users", api.admin_token
        body = f'{{"name":{deep}}}'
    else:
        url, token = "/pairing/claim", ""
        body = f'{{"code":"ABCD-EFGH","public_key":{deep},"name":"x"}}'
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    with httpx.Client(base_url=api.url, timeout=20) as http:
        r = http.post(url, content=body.encode(), headers=headers)
        assert_answer(r, f"POST {url}")
        if where == "publish-body" and r.status_code in (200, 201):
            return  # a depth the store can hold: stored like any body
        assert r.status_code in (400, 413, 422), (r.status_code, r.text[:500])
        # The connection is still usable (the server did not drop it).
        assert http.get("/status").status_code == 200
