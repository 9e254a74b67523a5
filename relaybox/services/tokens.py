"""Device tokens: signed token requests, access JWTs and rotating refresh tokens."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import jwt
import peewee as pw

from relaybox.config import Settings
from relaybox.errors import Unauthorized
from relaybox.protocol.encoding import b64url_decode, now_ms, parse_uuid, uuid7
from relaybox.protocol.handshake import (
    UNKNOWN_DEVICE_KEY,
    token_signing_bytes,
    verify_signature,
)
from relaybox.services import identity
from relaybox.store.db import is_postgres, write_transaction
from relaybox.store.models import Device, RefreshToken

# The one algorithm an access token may carry (api.md §2 How a device authenticates).
JWT_ALGORITHM: Final = "HS256"
JWT_ISSUER: Final = "relaybox"
REFRESH_PREFIX: Final = "rbr_"
# The device's token epoch a token was issued under (protocol.md §5 Revocation). Tokens
# from before this claim existed count as epoch 0.
EPOCH_CLAIM: Final = "tep"
NONCE_TTL_S: Final = 600  # api.md §2 How a device authenticates: replays refused for 10 minutes
SIGNATURE_BYTES: Final = 64


@dataclass(frozen=True, slots=True)
class TokenPair:
    access_token: str
    expires_in: int
    refresh_token: str

    def as_json(self) -> dict[str, Any]:
        return {"access_token": self.access_token, "token_type": "Bearer",
                "expires_in": self.expires_in, "refresh_token": self.refresh_token}


@dataclass(frozen=True, slots=True)
class AccessClaims:
    """What a verified access token says about its bearer."""

    user_id: str
    device_id: str
    expires_at_ms: int
    jti: str
    token_epoch: int = 0


def audience(server_id: str) -> str:
    """Tokens are valid only on the server that issued them."""
    return f"relaybox:{server_id}"


# -- signed token requests (api.md §2 How a device authenticates) ----------------------------
def check_timestamp(timestamp: int, settings: Settings, clock: Callable[[], int] = now_ms) -> None:
    """Refuse a token request whose timestamp is outside the accepted clock skew."""
    if abs(clock() // 1000 - timestamp) > settings.token_clock_skew_s:
        raise Unauthorized("the request timestamp is too far from the server's clock",
                           code="stale_request")


def verify_token_request(server_id: str, device_id: str, timestamp: int, nonce: str,
                         signature: str) -> str:
    """The id of the device whose key signed this token request; Unauthorized otherwise
    (blocking)."""
    device = None
    try:
        device = Device.get_or_none(Device.id == parse_uuid(device_id))
    except ValueError:
        pass
    try:
        sig = b64url_decode(signature, SIGNATURE_BYTES)
    except ValueError:
        sig = b"\0" * SIGNATURE_BYTES
    message = token_signing_bytes(server_id, device_id, timestamp, nonce)
    key = bytes(device.public_key) if device is not None else UNKNOWN_DEVICE_KEY
    ok = verify_signature(key, message, sig)
    if device is None or not ok:
        raise Unauthorized("unknown device or bad signature", code="auth_failed")
    # Only the key holder learns that the device is revoked.
    if device.revoked_at is not None:
        raise Unauthorized("this device was revoked", code="device_revoked")
    return str(device.id)


def nonce_key(device_id: str, nonce: str) -> str:
    return f"relaybox:nonce:{device_id}:{nonce}"


# -- issuing -------------------------------------------------------------------------------
def issue_access_token(device: Device, settings: Settings,
                       clock: Callable[[], int] = now_ms) -> tuple[str, int]:
    """A signed access JWT for ``device`` and its lifetime in seconds (blocking: reads keys)."""
    keys = identity.load_secrets()
    now_s = clock() // 1000
    ttl = settings.access_token_ttl_s
    claims = {"iss": JWT_ISSUER, "aud": audience(keys.server_id), "sub": device.id,
              "uid": device.user_id,  # type: ignore[attr-defined]  # peewee FK id
              "iat": now_s, "exp": now_s + ttl, "jti": uuid7(),
              EPOCH_CLAIM: device.token_epoch}
    secret = bytes.fromhex(keys.jwt_keys[keys.jwt_kid])
    token = jwt.encode(claims, secret, algorithm=JWT_ALGORITHM, headers={"kid": keys.jwt_kid})
    return token, ttl


def _new_refresh(device_id: str, family_id: str, settings: Settings, now: int) -> str:
    """A new refresh token of ``family_id``; only its hash is stored."""
    token = REFRESH_PREFIX + secrets.token_urlsafe(32)
    RefreshToken.create(token_hash=identity.hash_token(token), family_id=family_id,
                        device=device_id, created_at=now,
                        expires_at=now + settings.refresh_token_ttl_s * 1000)
    return token


def issue_pair(db: pw.Database, device_id: str, settings: Settings,
               clock: Callable[[], int] = now_ms) -> TokenPair:
    """A fresh access token and the first refresh token of a new family (blocking).

    The device is read again in the transaction that stores the refresh token: a
    revocation that landed since the signed request was checked either comes first (and
    the request is refused) or comes after and revokes this refresh token too; the
    access token carries the epoch read here, so it cannot outlive that revocation.
    """
    with write_transaction(db):
        device = _standing_device(db, device_id)
        refresh = _new_refresh(device.id, uuid7(), settings, clock())
    access, ttl = issue_access_token(device, settings, clock)
    return TokenPair(access, ttl, refresh)


def _standing_device(db: pw.Database, device_id: str) -> Device:
    """The device, unrevoked, read inside the caller's write transaction.

    On PostgreSQL the row is share-locked, so that a concurrent revocation's update of it
    waits for this transaction (and then revokes what it wrote); SQLite's write
    transaction already serialises the two.
    """
    q = Device.select().where(Device.id == device_id)
    if is_postgres(db):
        q = q.for_update("FOR SHARE")  # type: ignore[arg-type]  # peewee takes the clause
    device = q.get_or_none()
    if device is None or device.revoked_at is not None:
        raise Unauthorized("this device was revoked", code="device_revoked")
    return device


def refresh(db: pw.Database, token: str, settings: Settings,
            clock: Callable[[], int] = now_ms) -> TokenPair:
    """Rotate a refresh token (blocking). A reused token revokes its whole family."""
    # The write lock first, so that two refreshes of one token serialise.
    with write_transaction(db):
        now = clock()
        row = RefreshToken.get_or_none(RefreshToken.token_hash == identity.hash_token(token))
        if row is None or row.revoked_at is not None or row.expires_at <= now:
            raise Unauthorized("unknown, expired or revoked refresh token",
                               code="invalid_refresh_token")
        claimed = (RefreshToken.update(used_at=now)
                   .where((RefreshToken.token_hash == row.token_hash)
                          & RefreshToken.used_at.is_null()).execute())
        device = (_standing_device(db, row.device_id)  # type: ignore[attr-defined]
                  if claimed == 1 else None)
        if device is not None:
            new = _new_refresh(device.id, row.family_id, settings, now)
        else:
            # Theft detection (api.md §3 Routes, Tokens): someone presented a used token.
            RefreshToken.update(revoked_at=now).where(
                (RefreshToken.family_id == row.family_id)
                & RefreshToken.revoked_at.is_null()).execute()
    if device is None:
        raise Unauthorized("this refresh token was already used; its family is revoked",
                           code="refresh_token_reused")
    access, ttl = issue_access_token(device, settings, clock)
    return TokenPair(access, ttl, new)


# -- verifying -------------------------------------------------------------------------------
def _bad_token(detail: str = "invalid access token") -> Unauthorized:
    return Unauthorized(detail, code="invalid_token")


def decode_access_token(token: str, server_id: str, keys: dict[str, str],
                        clock: Callable[[], int] = now_ms) -> AccessClaims:
    """Check signature, algorithm, audience and lifetime; no database access."""
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError:
        raise _bad_token() from None
    kid = header.get("kid")
    if not isinstance(kid, str) or kid not in keys or header.get("alg") != JWT_ALGORITHM:
        raise _bad_token()
    try:
        claims = jwt.decode(
            token, bytes.fromhex(keys[kid]), algorithms=[JWT_ALGORITHM],
            audience=audience(server_id), issuer=JWT_ISSUER,
            # Lifetimes are checked below against the injected clock.
            options={"require": ["exp", "iat", "jti", "aud", "sub", "iss"],
                     "verify_exp": False, "verify_iat": False, "verify_nbf": False})
    except jwt.PyJWTError:
        raise _bad_token() from None
    exp, iat, sub, uid, jti = (claims.get(k) for k in ("exp", "iat", "sub", "uid", "jti"))
    epoch = claims.get(EPOCH_CLAIM, 0)
    if not (type(exp) is int and type(iat) is int and isinstance(sub, str)
            and isinstance(uid, str) and isinstance(jti, str) and type(epoch) is int):
        raise _bad_token()
    now_s = clock() // 1000
    if exp <= now_s:
        raise _bad_token("the access token has expired")
    if iat > now_s + 60:
        raise _bad_token()
    return AccessClaims(user_id=uid, device_id=sub, expires_at_ms=exp * 1000, jti=jti,
                        token_epoch=epoch)


def verify_access(token: str, clock: Callable[[], int] = now_ms) -> AccessClaims:
    """Verify an access token and that its device still stands (blocking, nothing cached).

    Keys and the device row are read on every call, so a rotated-out key or a revoked
    device stops working at once on every server process (protocol.md §5).
    """
    keys = identity.load_secrets()
    claims = decode_access_token(token, keys.server_id, keys.jwt_keys, clock)
    device = Device.get_or_none(Device.id == claims.device_id)
    if device is None or device.user_id != claims.user_id:  # type: ignore[attr-defined]
        raise _bad_token()
    if device.revoked_at is not None:
        raise Unauthorized("this device was revoked", code="device_revoked")
    if claims.token_epoch != device.token_epoch:
        # Issued before a revocation: unrevoking the device does not bring it back.
        raise _bad_token("this token was issued before the device was revoked")
    return claims

