"""/api/v1/pairing: make a pairing code, look one up, claim one to add a device."""

from __future__ import annotations

from sanic import Blueprint, Request
from sanic.response import HTTPResponse, json

from relaybox.protocol.encoding import format_ts
from relaybox.server.api import examples as ex
from relaybox.server.api.docs import doc, path_param, ref
from relaybox.server.api.models import (
    CODE_IN_RE,
    ClaimOut,
    ClaimRequest,
    LookupOut,
    PairingCodeOut,
    PairingOptions,
    parse_body,
    parse_optional_body,
)
from relaybox.server.auth import device_auth, limit_address, limit_device, relay
from relaybox.services import pairing

bp = Blueprint("pairing", url_prefix="/api/v1/pairing")


@bp.post("/store")
@doc("Make a pairing code for the caller's user", auth="device",
     description="The code is single use and short lived; only its hash is stored. "
                 "An empty body means no payload and the default lifetime. Rate limited "
                 "per device (429); a user holding as many unused, unexpired codes as "
                 "the quota allows gets 403 quota_exceeded.",
     body=(PairingOptions, ex.PAIRING_OPTIONS), optional_body=True,
     ok=(201, ref(PairingCodeOut), ex.PAIRING_CODE),
     errors=(400, 403, 422, 429))
async def store(request: Request) -> HTTPResponse:
    claims = await device_auth(request)
    ctx = relay(request)
    await limit_device(request, "pairing_store", claims.device_id,
                       ctx.settings.rate_pairing_store_per_min)
    req = parse_optional_body(request, PairingOptions)
    code, expires_at = await ctx.run_sync(
        pairing.create_pairing_code, ctx.db, claims.user_id, claims.device_id, req.payload,
        req.ttl_s, ctx.settings)
    return json({"code": code, "expires_at": format_ts(expires_at)}, status=201)


@bp.get("/lookup/<code>")
@doc("What a pairing code offers, before claiming it",
     description="Unknown, expired and used codes are all 404. Rate limited per address.",
     params=[path_param("code", "XXXX-XXXX, any case, hyphen optional.", pattern=CODE_IN_RE)],
     ok=(200, ref(LookupOut), ex.LOOKUP), errors=(404, 429))
async def lookup(request: Request, code: str) -> HTTPResponse:
    ctx = relay(request)
    await limit_address(request, "pairing", ctx.settings.rate_pairing_per_min)
    info = await ctx.run_sync(pairing.lookup_code, code)
    return json(info.as_json(ctx.server_id))


@bp.post("/claim")
@doc("Claim a pairing code: add a device with this public key",
     description="The code is consumed; of concurrent claims of one code exactly one wins. "
                 "An unknown, expired or used code is 404; a registered key is 409.",
     body=(ClaimRequest, ex.CLAIM), ok=(201, ref(ClaimOut), ex.CLAIMED),
     errors=(400, 404, 409, 422, 429))
async def claim(request: Request) -> HTTPResponse:
    ctx = relay(request)
    await limit_address(request, "pairing", ctx.settings.rate_pairing_per_min)
    req = parse_body(request, ClaimRequest)
    device, change = await ctx.run_sync(pairing.claim_code, ctx.db, req.code, req.public_key,
                                        req.name)
    await ctx.announce(change)
    return json({"device_id": device.device_id, "user_id": device.user_id,
                 "server_id": ctx.server_id}, status=201)
