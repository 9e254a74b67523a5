"""POST /api/v1/devices/{device_id}/revoke: a device may end its own access, no other's."""

from __future__ import annotations

import asyncio

import pytest

from relaybox.client import ApiError, Client, RestClient, RevokedError
from tests.support import Server
from tests.web.conftest import account


async def test_a_device_revokes_itself_and_no_other(server: Server) -> None:
    me, other = account(server).devices
    stranger = account(server).devices[0]
    async with RestClient(me) as api:
        with pytest.raises(ApiError) as exc:  # another device of the same user
            await api.request("POST", f"/devices/{other.device_id}/revoke", json={})
        assert (exc.value.status, exc.value.code) == (403, "not_this_device")
        with pytest.raises(ApiError) as exc:  # another user's device: no existence oracle
            await api.request("POST", f"/devices/{stranger.device_id}/revoke", json={})
        assert exc.value.status == 404
        async with Client(me) as session:
            doc = await api.request("POST", f"/devices/{me.device_id}/revoke", json={})
            assert doc["device_id"] == me.device_id and doc["revoked"] is True
            # Its live session is closed with 4403: the client stops with RevokedError.
            with pytest.raises(RevokedError):
                async with asyncio.timeout(10):
                    async for _ in session.events():
                        pass
        with pytest.raises(ApiError) as exc:  # its tokens stop working at once
            await api.devices()
        assert exc.value.status == 401
    async with RestClient(other) as api:
        devices = {d["device_id"]: d for d in await api.devices()}
    assert devices[me.device_id]["revoked"] and not devices[other.device_id]["revoked"]
