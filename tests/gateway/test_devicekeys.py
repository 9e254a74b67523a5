"""The keys of devices that authenticated: bounded, never revoked ones, forgotten on notice."""

from __future__ import annotations

import pytest

from relaybox.server.gateway.devicekeys import DeviceKeys
from relaybox.server.gateway.hub import Hub
from relaybox.store.queries import DeviceKey


def key(n: int, revoked_at: int | None = None) -> DeviceKey:
    return DeviceKey(f"dev-{n}", "user", bytes([n % 256]) * 32, revoked_at)


def test_keeps_verified_keys_and_never_a_revoked_one() -> None:
    keys = DeviceKeys()
    keys.remember(key(1))
    keys.remember(key(2, revoked_at=123))
    assert keys.get("dev-1") == key(1)
    assert keys.get("dev-2") is None and "dev-2" not in keys
    keys.forget("dev-1")
    keys.forget("dev-404")  # forgetting an unknown device is fine
    assert keys.get("dev-1") is None and len(keys) == 0


def test_holds_at_most_its_limit_dropping_the_oldest() -> None:
    keys = DeviceKeys(limit=3)
    for n in range(5):
        keys.remember(key(n))
    assert len(keys) == 3
    assert [n for n in range(5) if f"dev-{n}" in keys] == [2, 3, 4]
    keys.remember(key(3))  # known already: nothing is dropped
    assert len(keys) == 3 and "dev-2" in keys
    off = DeviceKeys(limit=0)
    off.remember(key(1))
    assert len(off) == 0


@pytest.mark.asyncio(loop_scope="function")
@pytest.mark.parametrize("notice", [
    {"kind": "revoke", "device_id": "dev-1"},
    {"kind": "user_removed", "device_ids": ["dev-0", "dev-1"]},
])
async def test_the_hub_forgets_a_key_on_a_revoke_or_removal_notice(notice: dict) -> None:
    hub = Hub("node", None)
    hub.keys.remember(key(1))
    hub.keys.remember(key(2))
    await hub.on_control(notice)
    assert "dev-1" not in hub.keys
    assert "dev-2" in hub.keys
