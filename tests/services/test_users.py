"""services/users.py: the use cases behind ``relaybox user …`` and /api/v1/admin/users."""

from __future__ import annotations

import peewee as pw
import pytest

from relaybox.errors import Conflict, InvalidInput, NotFound
from relaybox.protocol.encoding import format_ts
from relaybox.services import devices, users
from tests.services.conftest import Clock, new_device, new_user


def test_create_user_returns_plain_data_and_refuses_bad_or_taken_names(
        db: pw.Database, clock: Clock) -> None:
    alice = users.create_user(db, "alice", clock)
    assert alice.as_json() == {"user_id": alice.user_id, "name": "alice",
                               "created_at": format_ts(clock())}
    assert users.user_info("alice") == users.user_info(alice.user_id) == alice
    with pytest.raises(Conflict):
        users.create_user(db, "alice", clock)
    with pytest.raises(InvalidInput):
        users.create_user(db, "al ice", clock)


def test_users_with_devices_counts_active_and_revoked_ones(
        db: pw.Database, clock: Clock) -> None:
    alice = new_user(db, "alice", clock)
    clock.advance(1)
    new_user(db, "bob", clock)
    new_device(db, alice, "phone", clock)
    lost = new_device(db, alice, "old phone", clock)
    devices.revoke(db, lost.device_id, None, clock)
    found = users.users_with_devices()
    assert [(u.name, u.devices, u.active_devices) for u in found] == [("alice", 2, 1),
                                                                       ("bob", 0, 0)]
    assert [u.name for u in users.all_users()] == ["alice", "bob"]


def test_delete_user_removes_everything_and_closes_their_sessions(
        db: pw.Database, clock: Clock) -> None:
    alice = new_user(db, "alice", clock)
    phone = new_device(db, alice, "phone", clock)
    removed = users.delete_user(db, "alice")
    assert removed.user == alice and removed.device_ids == [phone.device_id]
    assert removed.change.controls == [{"kind": "user_removed",
                                        "device_ids": [phone.device_id]}]
    assert devices.device_info(phone.device_id) is None
    with pytest.raises(NotFound):
        users.user_info("alice")
