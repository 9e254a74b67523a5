"""services/pairing.py: a code made for a user (``relaybox pair``), and claiming it."""

from __future__ import annotations

import base64

import nacl.signing
import peewee as pw
import pytest

from relaybox.errors import NotFound
from relaybox.services import pairing
from tests.services.conftest import Clock, new_device, new_user


def public_key() -> str:
    key = bytes(nacl.signing.SigningKey.generate().verify_key)
    return base64.urlsafe_b64encode(key).rstrip(b"=").decode()


def test_code_for_user_says_when_it_expires_and_how_many_devices_there_are(
        db: pw.Database, clock: Clock) -> None:
    alice = new_user(db, "alice", clock)
    new_device(db, alice, "phone", clock)
    made = pairing.code_for_user(db, "alice", ttl_s=120, clock=clock)
    assert (made.expires_at, made.user_name, made.devices) == (clock() + 120_000, "alice", 1)
    assert pairing.lookup_code(made.code, clock).user_name == "alice"
    clock.advance(120_000)
    with pytest.raises(NotFound):
        pairing.lookup_code(made.code, clock)


def test_claiming_returns_the_new_device_as_plain_data_and_its_notice(
        db: pw.Database, clock: Clock) -> None:
    alice = new_user(db, "alice", clock)
    made = pairing.code_for_user(db, alice.user_id, clock=clock)
    device, change = pairing.claim_code(db, made.code, public_key(), "tablet", clock)
    assert (device.user_id, device.name, device.created_at) == (alice.user_id, "tablet",
                                                                clock())
    assert [e.stream for e in change.events] == ["sys.devices"]
    with pytest.raises(NotFound):  # single use
        pairing.claim_code(db, made.code, public_key(), "another", clock)


def test_a_code_for_an_unknown_user_is_not_found(db: pw.Database) -> None:
    with pytest.raises(NotFound) as exc:
        pairing.code_for_user(db, "nobody")
    assert exc.value.code == "user_unknown"
