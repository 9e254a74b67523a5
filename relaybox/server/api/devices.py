"""/api/v1/devices: the caller's user's devices; rename one."""

from __future__ import annotations

import functools
from typing import Any

from sanic import Blueprint, Request
from sanic.response import HTTPResponse, json

from relaybox.server.api import examples as ex
from relaybox.server.api.docs import doc, path_param, ref
from relaybox.server.api.models import UUID_RE, DeviceOut, RenameRequest, parse_body
from relaybox.server.auth import device_auth, relay
from relaybox.server.context import ServerContext
from relaybox.services import devices
from relaybox.services.devices import DeviceInfo

bp = Blueprint("devices", url_prefix="/api/v1")
_FIELDS = ("device_id", "name", "created_at", "last_seen_at", "online", "revoked")


def _out(ctx: ServerContext, d: DeviceInfo) -> dict[str, Any]:
    full = d.as_json(online=ctx.hub.online(d.device_id))
    return {k: full[k] for k in _FIELDS}


@bp.get("/devices")
@doc("The devices of the caller's user", auth="device",
     ok=(200, {"type": "array", "items": ref(DeviceOut)}, [ex.DEVICE]))
async def list_devices(request: Request) -> HTTPResponse:
    claims = await device_auth(request)
    ctx = relay(request)
    rows = await ctx.run_sync(devices.devices_of, claims.user_id)
    return json([_out(ctx, d) for d in rows])


@bp.patch("/devices/<device_id>")
@doc("Rename a device of the caller's user", auth="device",
     description="Another user's device is 404, like one that does not exist.",
     params=[path_param("device_id", "A device of the caller's user.", format="uuid",
                        pattern=UUID_RE)],
     body=(RenameRequest, {"name": "kitchen tablet"}), ok=(200, ref(DeviceOut), ex.DEVICE),
     errors=(400, 404, 422))
async def rename_device(request: Request, device_id: str) -> HTTPResponse:
    claims = await device_auth(request)
    ctx = relay(request)
    req = parse_body(request, RenameRequest)
    device, change = await ctx.run_sync(
        functools.partial(devices.rename, ctx.db, device_id, req.name, user_id=claims.user_id))
    await ctx.announce(change)
    return json(_out(ctx, device))


@bp.post("/devices/<device_id>/revoke")
@doc("Revoke the calling device itself", auth="device",
     description="A device may end its own access (the web app's \"Forget this device\"); "
                 "revoking another device needs the admin API. Idempotent; the caller's "
                 "tokens and session stop at once. Another device is 403, another user's "
                 "404.",
     params=[path_param("device_id", "The calling device.", format="uuid", pattern=UUID_RE)],
     ok=(200, ref(DeviceOut), {**ex.DEVICE, "revoked": True}), errors=(403, 404))
async def revoke_self(request: Request, device_id: str) -> HTTPResponse:
    claims = await device_auth(request)
    ctx = relay(request)
    device, change = await ctx.run_sync(functools.partial(
        devices.revoke_self, ctx.db, device_id, user_id=claims.user_id,
        caller_id=claims.device_id))
    await ctx.announce(change)
    return json(_out(ctx, device))
