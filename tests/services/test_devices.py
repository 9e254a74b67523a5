"""services/devices.py: the use cases behind ``relaybox device …`` and /api/v1/devices."""

from __future__ import annotations

import peewee as pw
import pytest

from relaybox.errors import Forbidden, InvalidInput, NotFound
from relaybox.services import devices
from relaybox.services.notify import Change
from tests.services.conftest import Clock, new_device, new_user


def notices(change: Change) -> list[str]:
    import orjson

    return [orjson.loads(e.body)["event"] for e in change.events]


def test_revoke_returns_the_device_as_now_stored_and_what_servers_must_hear(
        db: pw.Database, clock: Clock) -> None:
    alice = new_user(db, "alice", clock)
    phone = new_device(db, alice, "phone", clock)
    clock.advance(5000)
    info, change = devices.revoke(db, phone.device_id, "lost", clock)
    assert (info.revoked_at, info.revoked_reason, info.user_name) == (clock(), "lost", "alice")
    assert change.controls == [{"kind": "revoke", "device_id": phone.device_id}]
    assert notices(change) == ["device_revoked"] and change.events[0].ts == clock()


def test_revoking_twice_closes_sessions_again_but_stores_no_second_notice(
        db: pw.Database, clock: Clock) -> None:
    phone = new_device(db, new_user(db, "alice", clock), "phone", clock)
    first, _ = devices.revoke(db, phone.device_id, None, clock)
    clock.advance(1000)
    again, change = devices.revoke(db, phone.device_id, None, clock)
    assert again.revoked_at == first.revoked_at
    assert change.events == [] and change.controls[0]["kind"] == "revoke"


def test_unrevoke_lets_the_device_back_and_says_so_on_sys_devices(
        db: pw.Database, clock: Clock) -> None:
    phone = new_device(db, new_user(db, "alice", clock), "phone", clock)
    devices.revoke(db, phone.device_id, "oops", clock)
    info, change = devices.unrevoke(db, phone.device_id, clock)
    assert not info.revoked and info.revoked_reason is None
    assert notices(change) == ["device_unrevoked"]
    assert devices.unrevoke(db, phone.device_id, clock)[1].events == []  # idempotent


def test_a_malformed_id_is_invalid_and_an_unknown_one_is_not_found(db: pw.Database) -> None:
    with pytest.raises(InvalidInput) as bad:
        devices.revoke(db, "not-a-uuid")
    assert bad.value.code == "invalid_device_id"
    with pytest.raises(NotFound) as unknown:
        devices.unrevoke(db, "0190aaaa-0000-7000-8000-000000000000")
    assert unknown.value.code == "device_unknown"
    assert devices.device_info("not-a-uuid") is None


def test_rename_is_only_for_the_owners_devices(db: pw.Database, clock: Clock) -> None:
    alice, bob = new_user(db, "alice", clock), new_user(db, "bob", clock)
    phone = new_device(db, alice, "phone", clock)
    with pytest.raises(NotFound):
        devices.rename(db, phone.device_id, "mine now", user_id=bob.user_id, clock=clock)
    info, change = devices.rename(db, phone.device_id, "kitchen", user_id=alice.user_id,
                                  clock=clock)
    assert info.name == "kitchen" and devices.device_info(phone.device_id) == info
    assert notices(change) == ["device_renamed"]
    with pytest.raises(InvalidInput):
        devices.rename(db, phone.device_id, "", user_id=alice.user_id, clock=clock)


def test_a_device_may_revoke_itself_and_no_other(db: pw.Database, clock: Clock) -> None:
    alice = new_user(db, "alice", clock)
    phone, laptop = (new_device(db, alice, n, clock) for n in ("phone", "laptop"))
    with pytest.raises(Forbidden) as other:
        devices.revoke_self(db, laptop.device_id, user_id=alice.user_id,
                            caller_id=phone.device_id, clock=clock)
    assert other.value.code == "not_this_device"
    info, change = devices.revoke_self(db, phone.device_id, user_id=alice.user_id,
                                       caller_id=phone.device_id, clock=clock)
    assert info.revoked_reason == "revoked by the device itself"
    assert change.controls == [{"kind": "revoke", "device_id": phone.device_id}]


def test_devices_of_filters_by_user_and_revocation_and_names_owners(
        db: pw.Database, clock: Clock) -> None:
    alice, bob = new_user(db, "alice", clock), new_user(db, "bob", clock)
    phone = new_device(db, alice, "phone", clock)
    clock.advance(1)
    tablet = new_device(db, bob, "tablet", clock)
    devices.revoke(db, tablet.device_id, None, clock)
    assert [d.name for d in devices.devices_of()] == ["phone", "tablet"]
    assert [d.user_name for d in devices.devices_of(user_names=True)] == ["alice", "bob"]
    assert devices.devices_of()[0].user_name is None
    assert [d.device_id for d in devices.devices_of(alice.user_id)] == [phone.device_id]
    assert [d.name for d in devices.devices_of(None, True)] == ["tablet"]
    assert [d.name for d in devices.devices_of(None, False)] == ["phone"]
    assert devices.devices_of()[1].as_json(online=True)["online"] is True


def test_devices_in_bulk_fill_users_in_groups_without_notices(db: pw.Database,
                                                              clock: Clock) -> None:
    from relaybox.store.models import Device, Event, User

    keys = [bytes([i]) * 32 for i in range(5)]
    ids = devices.add_devices_in_bulk(db, keys, per_user=2, prefix="idle-t", clock=clock)
    assert len(ids) == len(set(ids)) == 5
    rows = {d.id: d for d in Device.select()}
    assert [bytes(rows[i].public_key) for i in ids] == keys
    owners = [str(rows[i].user_id) for i in ids]
    assert owners[0] == owners[1] != owners[2] == owners[3] != owners[4]
    assert sorted(u.name for u in User.select()) == ["idle-t-u0", "idle-t-u1", "idle-t-u2"]
    assert Event.select().count() == 0  # no sys.devices notice for a server not running
