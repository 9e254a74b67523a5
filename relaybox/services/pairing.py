"""Pairing codes: make one for a user, look it up, claim it once to add a device."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, cast

import peewee as pw

from relaybox.config import Settings
from relaybox.errors import Conflict, Forbidden, InvalidInput, NotFound
from relaybox.protocol.encoding import format_ts, now_ms
from relaybox.protocol.handshake import parse_public_key
from relaybox.services.devices import DeviceInfo, add_device, valid_name
from relaybox.services.notify import Change
from relaybox.services.users import find_user
from relaybox.store.db import is_postgres, write_transaction
from relaybox.store.models import Device, Meta, PairingCode, User

# Crockford base32 (no I, L, O, U); api.md §3 Routes, Pairing: 8 characters shown as XXXX-XXXX.
ALPHABET: Final = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
CODE_LENGTH: Final = 8
_ALIASES: Final = str.maketrans({"I": "1", "L": "1", "O": "0"})
MIN_TTL_S: Final = 60
MAX_TTL_S: Final = 3600
MAX_PAYLOAD_BYTES: Final = 8192
_KEY_META: Final = "pairing_key"
# Codes that expired this long ago are deleted when a new code is made.
_KEEP_EXPIRED_MS: Final = 86_400_000


@dataclass(frozen=True, slots=True)
class NewCode:
    """A pairing code made for a user (``relaybox pair``)."""

    code: str
    expires_at: int
    user_name: str
    #: How many devices the user has had paired (for the next default device name).
    devices: int


@dataclass(frozen=True, slots=True)
class CodeInfo:
    """What a lookup shows before a device claims the code."""

    user_name: str
    inviter: dict[str, str] | None
    payload: str | None
    expires_at: int

    def as_json(self, server_id: str) -> dict[str, Any]:
        return {"user_name": self.user_name, "inviter": self.inviter, "payload": self.payload,
                "expires_at": format_ts(self.expires_at), "server_id": server_id}


def format_code(raw: str) -> str:
    return f"{raw[:4]}-{raw[4:]}"


def normalize_code(text: str) -> str | None:
    """The canonical 8 characters of a code as typed, or None if it cannot be one."""
    s = text.strip().replace("-", "").upper().translate(_ALIASES)
    if len(s) != CODE_LENGTH or any(c not in ALPHABET for c in s):
        return None
    return s


def _pairing_key() -> bytes:
    """The server secret that keys code hashes (made once, shared by every node)."""
    row = Meta.get_or_none(Meta.key == _KEY_META)
    if row is None:
        Meta.insert(key=_KEY_META, value=secrets.token_hex(32)).on_conflict_ignore().execute()
        row = Meta.get(Meta.key == _KEY_META)
    return bytes.fromhex(row.value)


def code_hash(key: bytes, text: str) -> str:
    """Codes are stored only as HMAC-SHA256 under the server's pairing key."""
    canonical = normalize_code(text)
    # A malformed code is hashed as typed: it takes the same path and finds nothing.
    material = canonical if canonical is not None else "!" + text
    return hmac.new(key, material.encode("utf-8", "replace"), hashlib.sha256).hexdigest()


def _check_options(payload: str | None, ttl_s: int | None) -> None:
    if ttl_s is not None and not MIN_TTL_S <= ttl_s <= MAX_TTL_S:
        raise InvalidInput(f"ttl_s must be between {MIN_TTL_S} and {MAX_TTL_S}",
                           code="invalid_ttl")
    if payload is not None and len(payload.encode("utf-8")) > MAX_PAYLOAD_BYTES:
        raise InvalidInput(f"payload is over {MAX_PAYLOAD_BYTES} bytes", code="payload_too_large")


def create_pairing_code(
    db: pw.Database,
    user: User | str,
    inviter_device_id: str | None = None,
    payload: str | None = None,
    ttl_s: int | None = None,
    settings: Settings | None = None,
    clock: Callable[[], int] = now_ms,
) -> tuple[str, int]:
    """Make a single-use code for ``user`` (a User, or a user's name or id).

    Returns (``XXXX-XXXX``, expires_at in ms). Only the code's hash is stored. A user
    holds at most ``quotas.pairing_codes_per_user`` unused, unexpired codes, however they
    were made (device, admin API or CLI): past it, Forbidden ``quota_exceeded``.
    """
    _check_options(payload, ttl_s)
    if isinstance(user, str):
        user = find_user(user)
    settings = settings or Settings()
    if ttl_s is None:
        ttl_s = settings.pairing_ttl_s
    key = _pairing_key()
    now = clock()
    expires_at = now + ttl_s * 1000
    with write_transaction(db):
        PairingCode.delete().where(PairingCode.expires_at < now - _KEEP_EXPIRED_MS).execute()
        _check_quota(db, user, settings.quota_pairing_codes_per_user, now)
        while True:
            raw = "".join(secrets.choice(ALPHABET) for _ in range(CODE_LENGTH))
            inserted = PairingCode.insert(
                code_hash=code_hash(key, raw), user=user.id, inviter_device_id=inviter_device_id,
                payload=payload, created_at=now, expires_at=expires_at,
            ).on_conflict_ignore().execute()
            if inserted:  # 40 random bits: a clash with a live code is rare but possible
                return format_code(raw), expires_at


def code_for_user(db: pw.Database, user_ref: str, *, ttl_s: int | None = None,
                  settings: Settings | None = None,
                  clock: Callable[[], int] = now_ms) -> NewCode:
    """A code for the user ``user_ref`` (name or id), made by the admin (no inviter)."""
    user = find_user(user_ref)
    code, expires_at = create_pairing_code(db, user, ttl_s=ttl_s, settings=settings,
                                           clock=clock)
    devices = Device.select().where(Device.user == user.id).count()
    return NewCode(code, expires_at, user.name, devices)


def _check_quota(db: pw.Database, user: User, quota: int, now: int) -> None:
    """Refuse a code past the user's quota of live ones (inside the write transaction)."""
    if is_postgres(db):
        # Makers of codes for one user take turns, so that two cannot both pass the count.
        User.select(User.id).where(User.id == user.id).for_update().execute()
    live = (PairingCode.select()
            .where((PairingCode.user == user.id) & PairingCode.used_at.is_null()
                   & (PairingCode.expires_at > now))
            .count())
    if live >= quota:
        raise Forbidden(f"user {user.name!r} already holds {live} unused pairing codes, the "
                        "most allowed (quotas.pairing_codes_per_user); use one or wait for "
                        "one to expire", code="quota_exceeded")


def _find(key: bytes, text: str, now: int) -> dict[str, Any] | None:
    """The live code ``text`` names, with its user and inviter, in one query.

    A wrong code costs the same as a right one: one indexed lookup by hash, one
    constant-time comparison (against a dummy when nothing matched).
    """
    digest = code_hash(key, text)
    q = (PairingCode.select(PairingCode.code_hash, PairingCode.user, PairingCode.payload,
                            PairingCode.expires_at, PairingCode.used_at,
                            PairingCode.inviter_device_id, User.name.alias("user_name"),
                            Device.id.alias("inviter_id"), Device.name.alias("inviter_name"),
                            Device.revoked_at.alias("inviter_revoked_at"))
         .join(User, on=(PairingCode.user == User.id))
         .join(Device, pw.JOIN.LEFT_OUTER, on=(PairingCode.inviter_device_id == Device.id))
         .where(PairingCode.code_hash == digest).dicts())
    row = cast("dict[str, Any] | None", q.get_or_none())
    stored = row["code_hash"] if row is not None else "0" * 64
    match = hmac.compare_digest(stored, digest)
    live = row is not None and row["used_at"] is None and row["expires_at"] > now
    # A code made by a device that was revoked since dies with it: a stolen device
    # must not keep a way to add devices to its user.
    inviter_ok = row is not None and (row["inviter_device_id"] is None or (
        row["inviter_id"] is not None and row["inviter_revoked_at"] is None))
    return row if match and live and inviter_ok else None


def _unknown() -> NotFound:
    return NotFound("unknown, expired or used pairing code", code="pairing_code_unknown")


def lookup_code(text: str, clock: Callable[[], int] = now_ms) -> CodeInfo:
    """What a code offers (blocking). Unknown, expired and used codes are all 404."""
    row = _find(_pairing_key(), text, clock())
    if row is None:
        raise _unknown()
    inviter = None
    if row["inviter_id"] is not None:
        inviter = {"device_id": row["inviter_id"], "name": row["inviter_name"]}
    return CodeInfo(row["user_name"], inviter, row["payload"], row["expires_at"])


def claim_code(db: pw.Database, text: str, public_key: str, name: str,
               clock: Callable[[], int] = now_ms) -> tuple[DeviceInfo, Change]:
    """Consume a code and add the device it pairs (blocking).

    Exactly one of several concurrent claims of one code wins: the code is marked used by
    an UPDATE that matches only while it is unused, inside a write transaction. A refused
    claim (bad key, key already registered) leaves the code usable, and so does a bad name.
    """
    name = valid_name(name)  # before the code is consumed
    try:
        key_bytes: bytes | None = parse_public_key(public_key)
    except ValueError:
        key_bytes = None
    secret = _pairing_key()
    now = clock()
    try:
        with write_transaction(db):
            row = _find(secret, text, now)
            if row is None:
                raise _unknown()
            if key_bytes is None:
                raise InvalidInput("public_key is not a valid Ed25519 public key",
                                   code="invalid_public_key")
            won = (PairingCode.update(used_at=now)
                   .where((PairingCode.code_hash == row["code_hash"])
                          & PairingCode.used_at.is_null()).execute())
            if won != 1:
                raise _unknown()
            if Device.select().where(Device.public_key == key_bytes).exists():
                raise _key_taken()
            device, change = add_device(db, User.get_by_id(row["user"]), name, key_bytes,
                                        clock)
            return DeviceInfo.of(device), change
    except pw.IntegrityError:
        raise _key_taken() from None


def _key_taken() -> Conflict:
    return Conflict("this public key is already registered", code="public_key_registered")
