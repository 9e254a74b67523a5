"""protocol.md §1-§2: transport rules and the handshake state machine, on a real server."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import nacl.signing
import pytest

from relaybox.protocol.encoding import b64url_decode, b64url_encode, random_nonce, uuid4
from tests.gateway.helpers import (
    Client,
    close_code,
    handshake_with,
    hello,
    raw,
    recv_json,
    revoke,
    until_close,
    users,
)
from tests.plugin import MakeServer
from tests.support import Server

pytestmark = pytest.mark.asyncio(loop_scope="function")


@pytest.fixture(scope="module")
def server(gateway_servers: MakeServer) -> Server:
    # A high failure limit: this module fails many handshakes on purpose.
    return gateway_servers(gateway_handshake_failures_per_min=100000)


@pytest.fixture(scope="module")
def strict(gateway_servers: MakeServer) -> Server:
    """Short handshake timeout and a low failed-handshake limit (its own Redis)."""
    return gateway_servers(gateway_handshake_timeout_s=0.5,
                          gateway_handshake_failures_per_min=3)


def _is_uuid(value: Any) -> bool:
    return isinstance(value, str) and len(value) == 36 and value == value.lower()


async def test_hello_challenge_auth_welcome(server: Server) -> None:
    (dev,) = users(server, 1)[0]
    ws = await raw(server)
    nonce = random_nonce()
    await ws.send(json.dumps(hello(dev.device_id, nonce)))
    ch = await recv_json(ws)
    assert ch["type"] == "challenge"
    assert ch["server_id"] == httpx.get(server.url + "/api/v1/status").json()["server_id"]
    assert _is_uuid(ch["session_id"])
    assert len(b64url_decode(ch["nonce"], 32)) == 32
    from relaybox.protocol.handshake import gateway_signing_bytes

    msg = gateway_signing_bytes(ch["server_id"], ch["session_id"], dev.device_id, nonce,
                                ch["nonce"])
    await ws.send(json.dumps({"type": "auth",
                              "signature": b64url_encode(dev.key.sign(msg).signature)}))
    welcome = await recv_json(ws)
    assert welcome["type"] == "welcome"
    assert welcome["session_id"] == ch["session_id"]
    assert (welcome["user_id"], welcome["device_id"]) == (dev.user_id, dev.device_id)
    assert (welcome["heartbeat_s"], welcome["window"], welcome["max_body_bytes"]) == (
        20, 256, 65536)
    assert welcome["streams"] == {"sys.devices": 1}
    await ws.close()


async def test_server_nonce_is_fresh_and_a_replayed_signature_fails(server: Server) -> None:
    (dev,) = users(server, 1)[0]
    sigs: list[bytes] = []

    def sign(m: bytes) -> bytes:
        sigs.append(dev.key.sign(m).signature)
        return sigs[-1]

    ws1, ch1, welcome = await handshake_with(server, dev.device_id, sign)
    assert welcome["type"] == "welcome"
    await ws1.close()
    # Replay the first session's signature in a new session: a fresh nonce defeats it.
    ws2, ch2, err = await handshake_with(server, dev.device_id, lambda m: sigs[0])
    assert ch2["nonce"] != ch1["nonce"] and ch2["session_id"] != ch1["session_id"]
    assert (err["type"], err["code"]) == ("error", "auth_failed")
    assert await close_code(ws2) == 4401


async def test_unknown_device_fails_with_auth_failed(server: Server) -> None:
    stranger = nacl.signing.SigningKey.generate()
    ws, ch, err = await handshake_with(server, uuid4(), lambda m: stranger.sign(m).signature)
    assert ch["type"] == "challenge"
    assert (err["type"], err["code"]) == ("error", "auth_failed")
    assert await close_code(ws) == 4401


async def test_bad_signature_fails_with_auth_failed(server: Server) -> None:
    (dev,) = users(server, 1)[0]
    other = nacl.signing.SigningKey.generate()
    ws, _, err = await handshake_with(server, dev.device_id, lambda m: other.sign(m).signature)
    assert (err["type"], err["code"]) == ("error", "auth_failed")
    assert await close_code(ws) == 4401


async def test_revoked_device_fails_with_revoked(server: Server) -> None:
    (dev,) = users(server, 1)[0]
    revoke(server, dev)
    ws, _, err = await handshake_with(server, dev.device_id, lambda m: dev.key.sign(m).signature)
    assert (err["type"], err["code"]) == ("error", "revoked")
    assert await close_code(ws) == 4403


async def test_unknown_and_revoked_devices_are_challenged_like_a_known_one(
        server: Server) -> None:
    known, revoked = users(server, 2)[0]
    revoke(server, revoked)
    # Any well-formed UUID, of any version (here: v1 and v4 ids nobody registered).
    candidates = [known.device_id, revoked.device_id, uuid4(),
                  "6ba7b810-9dad-11d1-80b4-00c04fd430c8"]
    shapes = []
    for device_id in candidates:
        ws = await raw(server)
        await ws.send(json.dumps(hello(device_id)))
        ch = await recv_json(ws)
        shapes.append((sorted(ch), ch["type"], ch["server_id"], len(ch["nonce"]),
                       len(ch["session_id"])))
        await ws.close()
    assert all(s == shapes[0] for s in shapes), shapes
    assert shapes[0][1] == "challenge"


async def test_signature_of_wrong_length_is_malformed(server: Server) -> None:
    (dev,) = users(server, 1)[0]
    ws, _, err = await handshake_with(server, dev.device_id,
                                      lambda m: dev.key.sign(m).signature[:63])
    assert err["type"] == "error" and err["code"] != "auth_failed"
    assert await close_code(ws) == 4400


async def test_unsupported_protocol(server: Server) -> None:
    (dev,) = users(server, 1)[0]
    ws = await raw(server)
    await ws.send(json.dumps(hello(dev.device_id, protocol=2)))
    frames, code = await until_close(ws)
    assert [(f["type"], f["code"]) for f in frames] == [("error", "unsupported_protocol")]
    assert code == 4400


def _publish() -> dict[str, Any]:
    return {"type": "publish", "id": uuid4(), "stream": "notes", "body": 1}


@pytest.mark.parametrize("after_hello", [
    pytest.param(None, id="auth-first"),
    pytest.param(_publish(), id="publish-before-auth"),
    pytest.param("hello", id="hello-twice"),
    pytest.param({"type": "ack", "stream": "notes", "seq": 1}, id="ack-before-auth"),
    pytest.param({"type": "future-type"}, id="unknown-type-before-auth"),
])
async def test_message_out_of_order_is_a_violation(server: Server, after_hello: Any) -> None:
    (dev,) = users(server, 1)[0]
    ws = await raw(server)
    if after_hello is None:
        await ws.send(json.dumps({"type": "auth", "signature": b64url_encode(bytes(64))}))
    else:
        await ws.send(json.dumps(hello(dev.device_id)))
        assert (await recv_json(ws))["type"] == "challenge"
        second = hello(dev.device_id) if after_hello == "hello" else after_hello
        await ws.send(json.dumps(second))
    assert await close_code(ws) == 4400


async def test_publish_as_first_message_is_a_violation(server: Server) -> None:
    ws = await raw(server)
    await ws.send(json.dumps(_publish()))
    assert await close_code(ws) == 4400


async def test_hello_after_welcome_is_a_violation(server: Server) -> None:
    (dev,) = users(server, 1)[0]
    c = await Client.connect(server, dev)
    await c.send(hello(dev.device_id))
    assert await c.closed_code() == 4400


BAD_FRAMES = [
    pytest.param(b'{"type":"ping"}', id="binary"),
    pytest.param('{"type": "ping"', id="invalid-json"),
    pytest.param("[1, 2]", id="array"),
    pytest.param('"hello"', id="string"),
    pytest.param("42", id="number"),
    pytest.param('{"protocol": 1}', id="missing-type"),
    pytest.param('{"type": 1}', id="type-not-a-string"),
]


@pytest.mark.parametrize("frame", BAD_FRAMES)
async def test_bad_frame_before_handshake_closes_4400(server: Server, frame: Any) -> None:
    ws = await raw(server)
    await ws.send(frame)
    assert await close_code(ws) == 4400


@pytest.mark.parametrize("frame", BAD_FRAMES)
async def test_bad_frame_in_session_closes_4400(server: Server, frame: Any) -> None:
    (dev,) = users(server, 1)[0]
    c = await Client.connect(server, dev)
    await c.send(frame)
    assert await c.closed_code() == 4400


async def test_frame_over_max_frame_bytes_closes_1009(server: Server) -> None:
    (dev,) = users(server, 1)[0]
    c = await Client.connect(server, dev)
    await c.send({"type": "ping", "ref": "x" * 131072})
    assert await c.closed_code() == 1009


async def test_frame_over_max_frame_bytes_before_handshake_closes_1009(server: Server) -> None:
    ws = await raw(server)
    await ws.send("x" * 131073)
    assert await close_code(ws) == 1009


async def test_frame_of_exactly_max_frame_bytes_is_read(server: Server) -> None:
    (dev,) = users(server, 1)[0]
    c = await Client.connect(server, dev)
    ref = "x" * (131072 - len(json.dumps({"type": "ping", "ref": ""})))
    frame = json.dumps({"type": "ping", "ref": ref})
    assert len(frame.encode()) == 131072
    await c.send(frame)
    assert (await c.expect_type("pong"))["ref"] == ref
    await c.close()


async def test_second_session_of_a_device_replaces_the_first(server: Server) -> None:
    (dev,) = users(server, 1)[0]
    first = await Client.connect(server, dev)
    second = await Client.connect(server, dev)
    assert await first.closed_code() == 4409
    await second.barrier()  # the new session is alive
    await second.close()


async def test_handshake_timeout_without_hello(strict: Server) -> None:
    ws = await raw(strict)
    assert await close_code(ws) == 4408


async def test_handshake_timeout_without_auth(strict: Server) -> None:
    ws = await raw(strict)
    await ws.send(json.dumps(hello(uuid4())))
    assert (await recv_json(ws))["type"] == "challenge"
    assert await close_code(ws) == 4408


@pytest.mark.parametrize(("failure", "source"), [("auth_failed", "127.0.0.2"),
                                                 ("revoked", "127.0.0.3")])
async def test_failed_handshakes_past_the_limit_are_refused_4429(
        strict: Server, failure: str, source: str) -> None:
    (dev, revoked) = users(strict, 2)[0]
    revoke(strict, revoked)
    other = nacl.signing.SigningKey.generate()
    target, key, code = ((dev, other, 4401) if failure == "auth_failed"
                         else (revoked, revoked.key, 4403))
    minute = int(time.time() // 60)
    for _ in range(2):  # the limit counts per minute; redo if a minute boundary passed
        for _ in range(3):
            ws, _, err = await handshake_with(strict, target.device_id,
                                              lambda m: key.sign(m).signature, source)
            assert err["code"] == failure
            assert await close_code(ws) == code
        # Now even a correct handshake from this address is refused.
        ws = await raw(strict, source)
        refused = await close_code(ws)
        if int(time.time() // 60) == minute:
            break
        minute = int(time.time() // 60)
    assert refused == 4429
    # The count is per address: another client is not affected.
    ws, _, welcome = await handshake_with(strict, dev.device_id,
                                          lambda m: dev.key.sign(m).signature, "127.0.0.9")
    assert welcome["type"] == "welcome"
    await ws.close()


async def test_compression_is_off(server: Server) -> None:
    import websockets

    ws = await websockets.connect(server.ws_url, compression="deflate")
    try:
        assert ws.response is not None
        assert ws.response.headers.get("Sec-WebSocket-Extensions") is None
    finally:
        await ws.close()
