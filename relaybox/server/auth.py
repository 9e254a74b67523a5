"""Request authentication for the REST API: device bearer tokens, the admin token, limits."""

from __future__ import annotations

import time
from typing import Final

from sanic import Request

from relaybox.errors import Forbidden, Unauthorized, Unavailable
from relaybox.server.context import ServerContext
from relaybox.server.ratelimit import RateLimiter, limiter_for
from relaybox.services import identity, tokens
from relaybox.services.tokens import AccessClaims

_MAX_LOCAL_NONCES: Final = 100_000


def relay(request: Request) -> ServerContext:
    ctx: ServerContext = request.app.ctx.relay
    return ctx


def client_address(request: Request) -> str:
    """The caller's address, through trusted proxies only (settings: proxies_count)."""
    return request.client_ip or "unknown"


def bearer(request: Request) -> str | None:
    scheme, _, token = (request.headers.get("Authorization") or "").partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


async def device_auth(request: Request) -> AccessClaims:
    """The verified device behind the request's access token, or 401.

    Nothing is cached: the device row is read on every request so that a revocation on
    any node ends its tokens at once (protocol.md §5).
    """
    token = bearer(request)
    if token is None:
        raise Unauthorized("an access token is required (Authorization: Bearer …)",
                           code="missing_token")
    claims: AccessClaims = await relay(request).run_sync(tokens.verify_access, token)
    request.ctx.device_id = claims.device_id
    return claims


async def admin_auth(request: Request) -> None:
    """401 without the admin token; 403 for a valid device token (api.md §2)."""
    token = bearer(request)
    if token is None:
        raise Unauthorized("the admin token is required (Authorization: Bearer …)",
                           code="missing_token")
    ctx = relay(request)
    if await ctx.run_sync(identity.check_admin_token, token):
        return
    try:
        await ctx.run_sync(tokens.verify_access, token)
    except Unauthorized:
        raise Unauthorized("invalid admin token", code="invalid_token") from None
    raise Forbidden("this route needs the admin token, not a device token", code="admin_only")


def limiter(request: Request) -> RateLimiter:
    return limiter_for(request.app.ctx, relay(request).settings.redis_url or None)


async def limit_address(request: Request, scope: str, per_min: int) -> None:
    """Count a request against the caller's address (shared by every server process)."""
    await limiter(request).hit(scope, client_address(request), per_min)


async def limit_device(request: Request, scope: str, device_id: str, per_min: int) -> None:
    """Count a request against the calling device (shared by every server process)."""
    await limiter(request).hit(scope, device_id, per_min)


async def remember_nonce(request: Request, device_id: str, nonce: str) -> None:
    """Refuse a (device, nonce) pair seen in the last 10 minutes (api.md §2)."""
    ctx = relay(request)
    key = tokens.nonce_key(device_id, nonce)
    if ctx.bus is not None:
        try:
            fresh = await ctx.bus.remember_once(key, tokens.NONCE_TTL_S)
        except Exception:
            # Without the replay store a token request cannot be checked: refuse it safely.
            raise Unavailable("the replay check is unavailable; retry shortly",
                              code="nonce_store_unavailable") from None
    else:
        fresh = _remember_local(request, key)
    if not fresh:
        raise Unauthorized("this nonce was already used", code="replayed_request")


def _remember_local(request: Request, key: str) -> bool:
    """The same check for a process without Redis (a bare app): in memory."""
    seen: dict[str, float] | None = getattr(request.app.ctx, "nonces", None)
    if seen is None:
        seen = request.app.ctx.nonces = {}
    now = time.monotonic()
    if len(seen) > _MAX_LOCAL_NONCES:
        for k in [k for k, t in seen.items() if t <= now]:
            del seen[k]
    if seen.get(key, 0.0) > now:
        return False
    seen[key] = now + tokens.NONCE_TTL_S
    return True
