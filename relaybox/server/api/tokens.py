"""/api/v1/auth: signed token requests, refresh-token rotation, token introspection."""

from __future__ import annotations

from sanic import Blueprint, Request
from sanic.response import HTTPResponse, json

from relaybox.protocol.encoding import format_ts
from relaybox.server.api import examples as ex
from relaybox.server.api.docs import doc, ref
from relaybox.server.api.models import (
    RefreshRequest,
    TokenPairOut,
    TokenRequest,
    VerifyOut,
    parse_body,
)
from relaybox.server.auth import device_auth, limit_address, relay, remember_nonce
from relaybox.services import tokens

bp = Blueprint("auth", url_prefix="/api/v1/auth")


@bp.post("/token")
@doc("Exchange a signed token request for an access and a refresh token",
     description="The device signs the 'relaybox-token-v1' signing string with its key "
                 "(api.md §2 How a device authenticates). Timestamps off by more than the allowed "
                 "clock skew and nonces seen in the last 10 minutes are refused (401).",
     body=(TokenRequest, ex.TOKEN_REQUEST), ok=(200, ref(TokenPairOut), ex.TOKEN_PAIR),
     errors=(400, 401, 422, 429))
async def token(request: Request) -> HTTPResponse:
    ctx = relay(request)
    await limit_address(request, "token", ctx.settings.rate_token_per_min)
    req = parse_body(request, TokenRequest)
    tokens.check_timestamp(req.timestamp, ctx.settings)
    device_id = await ctx.run_sync(tokens.verify_token_request, ctx.server_id, req.device_id,
                                   req.timestamp, req.nonce, req.signature)
    await remember_nonce(request, device_id, req.nonce)
    pair = await ctx.run_sync(tokens.issue_pair, ctx.db, device_id, ctx.settings)
    return json(pair.as_json())


@bp.post("/refresh")
@doc("Rotate a refresh token for a new token pair",
     description="Each refresh token works once. Presenting one that was already used "
                 "revokes its whole family (theft detection) and is refused (401).",
     body=(RefreshRequest, ex.REFRESH_REQUEST), ok=(200, ref(TokenPairOut), ex.TOKEN_PAIR),
     errors=(400, 401, 422, 429))
async def refresh(request: Request) -> HTTPResponse:
    ctx = relay(request)
    await limit_address(request, "token", ctx.settings.rate_token_per_min)
    req = parse_body(request, RefreshRequest)
    pair = await ctx.run_sync(tokens.refresh, ctx.db, req.refresh_token, ctx.settings)
    return json(pair.as_json())


@bp.get("/verify")
@doc("Who the presented access token belongs to", auth="device",
     ok=(200, ref(VerifyOut), ex.VERIFY))
async def verify(request: Request) -> HTTPResponse:
    claims = await device_auth(request)
    return json({"user_id": claims.user_id, "device_id": claims.device_id,
                 "expires_at": format_ts(claims.expires_at_ms)})
