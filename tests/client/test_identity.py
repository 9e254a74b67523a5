"""Identity files, server URLs, backoff and positions: the SDK parts that need no server."""

from __future__ import annotations

import json
import os
import random
import stat
from pathlib import Path

import pytest
from nacl.signing import SigningKey

from relaybox.client import Identity, IdentityError, backoff_delay, normalize_server_url
from relaybox.client.positions import Positions, StateFile
from relaybox.protocol.encoding import uuid7


def make_identity(server: str = "http://127.0.0.1:8000") -> Identity:
    return Identity(server=server, server_id=uuid7(), device_id=uuid7(), user_id=uuid7(),
                    private_key=bytes(SigningKey.generate()), name="laptop")


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_saved_identity_is_private_and_loads_back(tmp_path: Path) -> None:
    ident = make_identity()
    path = tmp_path / "conf" / "identity.json"
    saved = ident.save(path)
    assert mode(path) == 0o600
    assert mode(path.parent) == 0o700
    assert sorted(p.name for p in path.parent.iterdir()) == ["identity.json"]  # no temp left
    loaded = Identity.load(path)
    assert loaded == ident and loaded.path == path == saved.path
    assert loaded.public_key == ident.public_key
    doc = json.loads(path.read_text())
    assert {"server", "server_id", "device_id", "user_id", "private_key"} <= set(doc)


def test_saving_over_a_readable_file_makes_it_private(tmp_path: Path) -> None:
    path = tmp_path / "identity.json"
    path.write_text("{}")
    os.chmod(path, 0o644)
    make_identity().save(path)
    assert mode(path) == 0o600


@pytest.mark.parametrize("bits", [0o640, 0o604, 0o660, 0o644])
def test_load_refuses_a_file_others_can_read(tmp_path: Path, bits: int) -> None:
    path = tmp_path / "identity.json"
    make_identity().save(path)
    os.chmod(path, bits)
    with pytest.raises(IdentityError, match=r"accessible by other users.*chmod 600"):
        Identity.load(path)


def test_state_file_next_to_identity_is_also_checked(tmp_path: Path) -> None:
    ident = make_identity().save(tmp_path / "identity.json")
    assert ident.state_path == tmp_path / "identity.cursors.json"
    state = StateFile(ident.state_path, ident.device_id)
    state.save({"notes": 4})
    assert mode(ident.state_path) == 0o600
    assert state.load() == {"notes": 4}
    assert StateFile(ident.state_path, uuid7()).load() == {}  # another device's positions
    os.chmod(ident.state_path, 0o644)
    with pytest.raises(IdentityError):
        state.load()


@pytest.mark.parametrize("content, message", [
    (None, "no identity file"),
    ("not json", "not valid JSON"),
    ("[]", "not a JSON object"),
    ('{"server": "http://h:1"}', "has no 'server_id'"),
])
def test_load_explains_a_bad_file(tmp_path: Path, content: str | None, message: str) -> None:
    path = tmp_path / "identity.json"
    if content is not None:
        path.write_text(content)
        os.chmod(path, 0o600)
    with pytest.raises(IdentityError, match=message):
        Identity.load(path)


def test_load_refuses_a_wrong_key_length(tmp_path: Path) -> None:
    doc = make_identity().to_json()
    doc["private_key"] = doc["private_key"][:-2]
    path = tmp_path / "identity.json"
    path.write_text(json.dumps(doc))
    os.chmod(path, 0o600)
    with pytest.raises(IdentityError, match="malformed"):
        Identity.load(path)


@pytest.mark.parametrize("given, base, gateway", [
    ("http://127.0.0.1:8000", "http://127.0.0.1:8000", "ws://127.0.0.1:8000/api/v1/gateway"),
    ("https://relay.example/", "https://relay.example", "wss://relay.example/api/v1/gateway"),
    ("wss://relay.example/box/api/v1/gateway", "https://relay.example/box",
     "wss://relay.example/box/api/v1/gateway"),
    ("ws://h:1/api/v1", "http://h:1", "ws://h:1/api/v1/gateway"),
])
def test_server_urls(given: str, base: str, gateway: str) -> None:
    assert normalize_server_url(given) == base
    assert make_identity(base).gateway_url == gateway


@pytest.mark.parametrize("bad", ["relay.example", "ftp://h", "http://", "http://h:99999",
                                 "http://h/?x=1"])
def test_bad_server_urls_are_refused(bad: str) -> None:
    with pytest.raises(IdentityError):
        normalize_server_url(bad)


def test_backoff_grows_with_jitter_up_to_the_cap() -> None:
    rng = random.Random(7)
    delays = [backoff_delay(n, 0.5, 8.0, rng) for n in range(8)]
    for n, d in enumerate(delays):
        ceiling = min(8.0, 0.5 * 2**n)
        assert ceiling / 2 <= d <= ceiling
    assert len({round(d, 6) for d in delays[5:]}) > 1  # jitter: capped delays still differ


def test_positions_drop_duplicates_and_clamp_acks_to_the_session() -> None:
    pos = Positions({"a": 2})
    pos.new_session({"a": 5})
    for seq in (1, 2, 3):
        pos.receive("a", seq)
    assert pos.is_duplicate("a", 2) and not pos.is_duplicate("a", 3)
    pos.done("a", 3)
    pos.done("a", 4)  # taken from an earlier session's queue, not yet sent on this one
    assert pos.acks_due() == [("a", 3)]  # never above what this session received
    pos.receive("a", 4)
    pos.done("a", 4)  # the resent duplicate is acknowledged when dropped
    assert pos.acks_due() == [("a", 4)]
    assert pos.acks_due() == []


def test_positions_reset_when_the_server_is_behind() -> None:
    pos = Positions({"a": 9, "b": 1})
    pos.new_session({"a": 4, "b": 3})
    assert pos.delivered == {"a": 4, "b": 1} and pos.processed["a"] == 4
