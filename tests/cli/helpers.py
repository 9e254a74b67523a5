"""CLI test helpers: run a command in-process, start a shared server, publish events."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from click.testing import CliRunner, Result

from relaybox.cli import cli
from relaybox.protocol.encoding import uuid7
from tests.support import DeviceKey, Gw


def run(data_dir: Path, *args: str, env: dict[str, str] | None = None) -> Result:
    """``relaybox --data-dir DATA ARGS…`` in-process; an unexpected exception fails the test."""
    return CliRunner().invoke(cli, ["--data-dir", str(data_dir), *args],
                              catch_exceptions=False, env=env)


def run_json(data_dir: Path, *args: str) -> Any:
    """Run with --json, check success, and parse stdout as exactly one JSON document."""
    r = run(data_dir, *args, "--json")
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


def assert_error(r: Result, *fragments: str) -> None:
    """Exit 1 with one ``error: …`` line on stderr, nothing on stdout, no traceback."""
    assert r.exit_code == 1, r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert "Traceback" not in r.output
    assert r.stdout == ""
    for f in fragments:
        assert f in lines[0], lines[0]


async def publish(gw: Gw, stream: str, body: Any) -> int:
    """Publish one event and return its seq once acked."""
    cid = uuid7()
    await gw.send({"type": "publish", "id": cid, "stream": stream, "body": body})
    while True:
        msg = await gw.recv_type("ack", "nack")
        if msg.get("id") == cid:
            assert msg["type"] == "ack", msg
            return int(msg["seq"])


async def collect(gw: Gw, stream: str, until_seq: int) -> list[dict[str, Any]]:
    """Events of ``stream`` (acking each) until ``until_seq`` arrived; gaps included."""
    got: list[dict[str, Any]] = []
    while True:
        msg = await gw.recv_type("event", "gap")
        if msg["stream"] != stream:
            continue
        got.append(msg)
        if msg["type"] == "event":
            await gw.send({"type": "ack", "stream": stream, "seq": msg["seq"]})
            if msg["seq"] >= until_seq:
                return got
        elif msg["next"] > until_seq:
            return got


def device_key(identity_file: Path) -> DeviceKey:
    """The test-side key of a device paired with ``relaybox client pair``."""
    import nacl.signing

    from relaybox.protocol.encoding import b64url_decode

    doc = json.loads(identity_file.read_text())
    seed = b64url_decode(doc["private_key"], 32)
    return DeviceKey(doc["device_id"], doc["user_id"], nacl.signing.SigningKey(seed))
