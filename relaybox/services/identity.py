"""Server identity and secrets kept in the database: server_id, JWT keys, admin token."""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass

import peewee as pw

from relaybox.protocol.encoding import uuid7
from relaybox.store.db import write_transaction
from relaybox.store.models import Meta

ADMIN_TOKEN_PREFIX = "rbadm_"  # noqa: S105 - a prefix, not a secret


@dataclass(frozen=True)
class ServerSecrets:
    server_id: str
    jwt_keys: dict[str, str]  # kid -> secret (hex); the newest kid signs
    jwt_kid: str


def _get(key: str) -> str | None:
    row = Meta.get_or_none(Meta.key == key)
    return row.value if row else None


def _set(key: str, value: str) -> None:
    Meta.insert(key=key, value=value).on_conflict(
        conflict_target=[Meta.key], update={Meta.value: value}).execute()


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def is_initialised(db: pw.Database) -> bool:
    return "meta" in db.get_tables() and _get("server_id") is not None


def initialise(db: pw.Database) -> tuple[ServerSecrets, str | None]:
    """Create server_id, a JWT key and an admin token if missing.

    Returns the secrets and the new admin token (None when one existed already).
    """
    with write_transaction(db):
        server_id = _get("server_id")
        if server_id is None:
            server_id = uuid7()
            _set("server_id", server_id)
        if _get("jwt_keys") is None:
            kid = secrets.token_hex(4)
            _set("jwt_keys", json.dumps({"current": kid, "keys": {kid: secrets.token_hex(32)}}))
        token = None
        if _get("admin_token_hash") is None:
            token = rotate_admin_token()
    return load_secrets(), token


def load_secrets() -> ServerSecrets:
    server_id = _get("server_id")
    raw = _get("jwt_keys")
    if server_id is None or raw is None:
        raise RuntimeError("the database is not initialised (run 'relaybox init')")
    keys = json.loads(raw)
    return ServerSecrets(server_id=server_id, jwt_keys=dict(keys["keys"]), jwt_kid=keys["current"])


def rotate_admin_token() -> str:
    """Make a new admin token; the old one stops working at once. Only its hash is kept."""
    token = ADMIN_TOKEN_PREFIX + secrets.token_urlsafe(32)
    _set("admin_token_hash", hash_token(token))
    return token


def new_admin_token(db: pw.Database) -> str:
    """``rotate_admin_token`` in a write transaction of its own (``relaybox admin-token``)."""
    with write_transaction(db):
        return rotate_admin_token()


def check_admin_token(token: str) -> bool:
    stored = _get("admin_token_hash")
    return stored is not None and hmac.compare_digest(stored, hash_token(token))


def rotate_jwt_key(keep_previous: bool = True) -> str:
    """Start signing with a new key; the previous one keeps verifying unless dropped."""
    keys = json.loads(_get("jwt_keys") or '{"keys": {}}')
    kid = secrets.token_hex(4)
    ring = dict(keys["keys"]) if keep_previous else {}
    if keep_previous and keys.get("current") in ring:
        ring = {keys["current"]: ring[keys["current"]]}
    ring[kid] = secrets.token_hex(32)
    _set("jwt_keys", json.dumps({"current": kid, "keys": ring}))
    return kid
