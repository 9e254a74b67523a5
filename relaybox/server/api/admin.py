"""/api/v1/admin: users, first-device pairing codes, device revocation (admin token)."""

from __future__ import annotations

from typing import Any

from sanic import Blueprint, Request
from sanic.response import HTTPResponse, json

from relaybox.errors import NotFound
from relaybox.protocol.encoding import format_ts
from relaybox.server.api import examples as ex
from relaybox.server.api.docs import doc, path_param, ref
from relaybox.server.api.models import (
    NewUser,
    PairingCodeOut,
    PairingOptions,
    RevocationOut,
    RevokeRequest,
    UnrevokeRequest,
    UserOut,
    parse_body,
    parse_optional_body,
)
from relaybox.server.auth import admin_auth, relay
from relaybox.services import devices, pairing, users
from relaybox.services.devices import DeviceInfo
from relaybox.services.users import USER_NAME_RE

bp = Blueprint("admin", url_prefix="/api/v1/admin")


def _revocation(d: DeviceInfo) -> dict[str, Any]:
    full = d.as_json()
    return {"device_id": full["device_id"], "user_id": full["user_id"], "name": full["name"],
            "revoked_at": full["revoked_at"], "reason": full["revoked_reason"]}


async def _device(request: Request, device_id: str) -> DeviceInfo:
    """The device, 404 for an id that names none (a malformed one too)."""
    device: DeviceInfo | None = await relay(request).run_sync(devices.device_info, device_id)
    if device is None:
        raise NotFound(f"no device {device_id}", code="device_unknown")
    return device


@bp.post("/revoke-device")
@doc("Revoke a device (idempotent)", auth="admin",
     description="Its tokens stop working at once and its live session is closed (4403).",
     body=(RevokeRequest, ex.REVOKE), ok=(200, ref(RevocationOut), ex.REVOKED),
     errors=(400, 404, 422))
async def revoke(request: Request) -> HTTPResponse:
    await admin_auth(request)
    ctx = relay(request)
    req = parse_body(request, RevokeRequest)
    device = await _device(request, req.device_id)
    device, change = await ctx.run_sync(devices.revoke, ctx.db, device.device_id, req.reason)
    await ctx.announce(change)
    return json(_revocation(device))


@bp.post("/unrevoke-device")
@doc("Unrevoke a device (idempotent)", auth="admin",
     body=(UnrevokeRequest, {"device_id": ex.DEVICE_ID}),
     ok=(200, ref(RevocationOut), {**ex.REVOKED, "revoked_at": None, "reason": None}),
     errors=(400, 404, 422))
async def unrevoke(request: Request) -> HTTPResponse:
    await admin_auth(request)
    ctx = relay(request)
    req = parse_body(request, UnrevokeRequest)
    device = await _device(request, req.device_id)
    device, change = await ctx.run_sync(devices.unrevoke, ctx.db, device.device_id)
    await ctx.announce(change)
    return json(_revocation(device))


@bp.get("/revoked-devices")
@doc("Revoked devices of every user", auth="admin",
     ok=(200, {"type": "array", "items": ref(RevocationOut)}, [ex.REVOKED]))
async def revoked_devices(request: Request) -> HTTPResponse:
    await admin_auth(request)
    rows = await relay(request).run_sync(devices.devices_of, None, True)
    return json([_revocation(d) for d in rows])


@bp.get("/users")
@doc("Users", auth="admin", ok=(200, {"type": "array", "items": ref(UserOut)}, [ex.USER]))
async def list_users(request: Request) -> HTTPResponse:
    await admin_auth(request)
    return json([u.as_json() for u in await relay(request).run_sync(users.all_users)])


@bp.post("/users")
@doc("Create a user", auth="admin", body=(NewUser, {"name": "alice"}),
     ok=(201, ref(UserOut), ex.USER), errors=(400, 409, 422))
async def create_user(request: Request) -> HTTPResponse:
    await admin_auth(request)
    ctx = relay(request)
    req = parse_body(request, NewUser)
    return json((await ctx.run_sync(users.create_user, ctx.db, req.name)).as_json(), status=201)


@bp.post("/users/<user>/pairing")
@doc("Make a pairing code for a user (first-device bootstrap)", auth="admin",
     params=[path_param("user", "The user's name or id.", pattern=USER_NAME_RE.pattern)],
     description="An empty body means no payload and the default lifetime. A user "
                 "holding as many unused, unexpired codes as the quota allows gets 403 "
                 "quota_exceeded.",
     body=(PairingOptions, ex.PAIRING_OPTIONS), optional_body=True,
     ok=(201, ref(PairingCodeOut), ex.PAIRING_CODE),
     errors=(400, 403, 404, 422))
async def user_pairing(request: Request, user: str) -> HTTPResponse:
    await admin_auth(request)
    ctx = relay(request)
    req = parse_optional_body(request, PairingOptions)
    code, expires_at = await ctx.run_sync(pairing.create_pairing_code, ctx.db, user, None,
                                          req.payload, req.ttl_s, ctx.settings)
    return json({"code": code, "expires_at": format_ts(expires_at)}, status=201)
