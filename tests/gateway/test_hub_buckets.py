"""The hub's publish buckets: one per device, kept only while they still matter."""

from __future__ import annotations

import pytest

from relaybox.server.gateway.hub import Hub
from relaybox.server.ratelimit import UNLIMITED

pytestmark = pytest.mark.asyncio(loop_scope="function")


async def test_a_device_gets_its_bucket_back_and_an_unlimited_setting_stores_none() -> None:
    hub = Hub("node", None)
    first = hub.bucket_for("d1", 1.0, 2)
    assert hub.bucket_for("d1", 1.0, 2) is first
    assert hub.bucket_for("d2", 1.0, 2) is not first
    assert hub.bucket_for("d3", 0, 2) is UNLIMITED and "d3" not in hub.rates.buckets


async def test_an_unused_bucket_is_dropped_once_it_is_full_again() -> None:
    hub = Hub("node", None)
    full = hub.bucket_for("idle", 1.0, 2)
    assert full.until_full() == 0
    hub.rates.forget("idle")
    assert "idle" not in hub.rates.buckets  # as good as a new one: nothing to remember
    used = hub.bucket_for("busy", 0.001, 2)
    assert used.take() == 0 and used.take() == 0
    assert used.take() > 0
    hub.rates.forget("busy")
    assert hub.rates.buckets["busy"] is used  # still empty: a reconnect must find it
    assert used.until_full() > 1000
