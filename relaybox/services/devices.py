"""Devices: lookup for authentication, adding, renaming, revoking, listing."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, cast

import peewee as pw

from relaybox.errors import Forbidden, InvalidInput, NotFound
from relaybox.protocol.encoding import check_name, dumps, format_ts, now_ms, parse_uuid, uuid7
from relaybox.services.notify import Change
from relaybox.store.append import append_now
from relaybox.store.db import write_transaction
from relaybox.store.events import Accepted, PublishRequest, StoredEvent
from relaybox.store.models import Device, User

DEVICES_STREAM = "sys.devices"


def _uid(device: Device) -> str:
    """The owning user's id without loading the user row."""
    return str(device.user_id)  # type: ignore[attr-defined]


@dataclass(frozen=True, slots=True)
class DeviceInfo:
    """A device as the CLI and the REST API show it (times in ms)."""

    device_id: str
    user_id: str
    name: str
    created_at: int
    last_seen_at: int | None
    revoked_at: int | None
    revoked_reason: str | None
    #: The owner's name, when the caller asked for it.
    user_name: str | None = None

    @classmethod
    def of(cls, d: Device, user_name: str | None = None) -> DeviceInfo:
        return cls(d.id, _uid(d), d.name, d.created_at, d.last_seen_at, d.revoked_at,
                   d.revoked_reason, user_name)

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None

    def as_json(self, online: bool = False) -> dict[str, Any]:
        return {
            "device_id": self.device_id,
            "user_id": self.user_id,
            "name": self.name,
            "created_at": format_ts(self.created_at),
            "last_seen_at": format_ts(self.last_seen_at) if self.last_seen_at else None,
            "online": online,
            "revoked": self.revoked,
            "revoked_at": format_ts(self.revoked_at) if self.revoked_at else None,
            "revoked_reason": self.revoked_reason,
        }


def valid_name(name: str) -> str:
    """``name`` if it follows the name rule (api.md Devices), else 422 ``invalid_name``."""
    try:
        return check_name(name)
    except ValueError as exc:
        raise InvalidInput(f"name: {exc}", code="invalid_name",
                           errors=[{"field": "name", "message": str(exc)}]) from None


def get_device(device_id: str) -> Device | None:
    try:
        device_id = parse_uuid(device_id)
    except ValueError:
        return None
    return Device.get_or_none(Device.id == device_id)


def require_device(device_id: str) -> Device:
    try:
        parse_uuid(device_id)
    except ValueError:
        raise InvalidInput(f"not a device id: {device_id!r}", code="invalid_device_id") from None
    d = Device.get_or_none(Device.id == device_id)
    if d is None:
        raise NotFound(f"no device {device_id}", code="device_unknown")
    return d


def notice(db: pw.Database, user_id: str, kind: str, device: Device,
           clock: Callable[[], int] = now_ms) -> StoredEvent:
    """Append a sys.devices notice (protocol.md §3 Server notices)."""
    body = dumps({"event": kind, "device_id": device.id, "name": device.name})
    req = PublishRequest(user_id=user_id, device_id=None, client_id=uuid7(),
                         stream=DEVICES_STREAM, body=body)
    (res,) = append_now(db, [req], clock)
    assert isinstance(res, Accepted)
    return res.event


def add_devices_in_bulk(db: pw.Database, public_keys: list[bytes], *, per_user: int = 50,
                        prefix: str = "idle", clock: Callable[[], int] = now_ms) -> list[str]:
    """A device for each key, ``per_user`` to a new user, inserted in bulk in one
    transaction, without ``sys.devices`` notices: for a database no server runs on yet
    (the bench's idle-memory part needs thousands). Returns the device ids in key order."""
    now = clock()
    ids: list[str] = []
    with write_transaction(db):
        user_id = ""
        rows: list[dict[str, Any]] = []
        for i, key in enumerate(public_keys):
            if i % per_user == 0:
                user_id = uuid7()
                User.create(id=user_id, name=f"{prefix}-u{i // per_user}", created_at=now)
            ids.append(uuid7())
            rows.append({"id": ids[-1], "user": user_id, "name": f"{prefix}-{i}",
                         "public_key": key, "created_at": now})
        for i in range(0, len(rows), 200):
            Device.insert_many(rows[i:i + 200]).execute()
    return ids


def add_device(db: pw.Database, user: User, name: str, public_key: bytes,
               clock: Callable[[], int] = now_ms) -> tuple[Device, Change]:
    name = valid_name(name)
    with write_transaction(db):
        device = Device.create(id=uuid7(), user=user, name=name, public_key=public_key,
                               created_at=clock())
    return device, Change(events=[notice(db, user.id, "device_added", device, clock)])


def rename_device(db: pw.Database, device: Device, name: str,
                  clock: Callable[[], int] = now_ms) -> Change:
    device.name = valid_name(name)
    with write_transaction(db):
        device.save()
    return Change(events=[notice(db, _uid(device), "device_renamed", device, clock)])


def revoke_device(db: pw.Database, device: Device, reason: str | None = None,
                  clock: Callable[[], int] = now_ms) -> Change:
    """Revoke (idempotent). Tokens stop at once; live sessions are closed via the bus."""
    change = Change(controls=[{"kind": "revoke", "device_id": device.id}])
    if device.revoked_at is not None:
        return change
    from relaybox.store.models import RefreshToken

    with write_transaction(db):
        # A new token epoch: tokens issued until now stay invalid even after an
        # unrevoke (protocol.md §5 Revocation).
        Device.update(revoked_at=clock(), revoked_reason=reason,
                      token_epoch=Device.token_epoch + 1).where(
            Device.id == device.id).execute()
        RefreshToken.update(revoked_at=clock()).where(
            (RefreshToken.device == device.id) & RefreshToken.revoked_at.is_null()).execute()
    device = Device.get_by_id(device.id)
    # The notice is stored before the session is cut, so the device sees it on catch-up
    # only if it is ever unrevoked; its other devices see it live.
    change.events.append(notice(db, _uid(device), "device_revoked", device, clock))
    return change


def unrevoke_device(db: pw.Database, device: Device,
                    clock: Callable[[], int] = now_ms) -> Change:
    if device.revoked_at is None:
        return Change()
    with write_transaction(db):
        Device.update(revoked_at=None, revoked_reason=None).where(
            Device.id == device.id).execute()
    device = Device.get_by_id(device.id)
    return Change(events=[notice(db, _uid(device), "device_unrevoked", device, clock)])


def list_devices(user_id: str | None = None, revoked: bool | None = None) -> list[Device]:
    q = Device.select().order_by(Device.created_at)
    if user_id is not None:
        q = q.where(Device.user == user_id)
    if revoked is True:
        q = q.where(Device.revoked_at.is_null(False))
    elif revoked is False:
        q = q.where(Device.revoked_at.is_null())
    return list(q)


#: Ids per query of ``revoked_among`` (well under SQLite's bound on query parameters).
_IDS_PER_QUERY = 500


def revoked_among(device_ids: list[str]) -> dict[str, bool]:
    """Of ``device_ids``, those no longer standing: id → True when revoked, False when
    gone (its user was removed). One indexed query per 500 ids (blocking: run it in a
    reader thread); the gateway's re-check of its live sessions (protocol.md §5)."""
    out: dict[str, bool] = {}
    for i in range(0, len(device_ids), _IDS_PER_QUERY):
        chunk = device_ids[i:i + _IDS_PER_QUERY]
        q = (Device.select(Device.id, Device.revoked_at).where(Device.id.in_(chunk))
             .tuples())
        found = dict(cast("Iterable[tuple[str, int | None]]", q))
        for device_id in chunk:
            if device_id not in found:
                out[device_id] = False
            elif found[device_id] is not None:
                out[device_id] = True
    return out


# -- use cases of the CLI and the REST API: plain DeviceInfo in and out ----------------------
def device_info(device_id: str) -> DeviceInfo | None:
    """The device, or None when ``device_id`` names none (malformed ids included)."""
    d = get_device(device_id)
    return DeviceInfo.of(d) if d is not None else None


def devices_of(user_id: str | None = None, revoked: bool | None = None, *,
               user_names: bool = False) -> list[DeviceInfo]:
    """Devices, oldest first: of one user or all, only revoked or unrevoked ones or both;
    with ``user_names``, each with its owner's name."""
    names = {u.id: u.name for u in User.select(User.id, User.name)} if user_names else {}
    return [DeviceInfo.of(d, names.get(_uid(d))) for d in list_devices(user_id, revoked)]


def _after(device_id: str) -> DeviceInfo:
    """The device as it is now, with its owner's name."""
    d = Device.get_by_id(device_id)
    return DeviceInfo.of(d, d.user.name)


def revoke(db: pw.Database, device_id: str, reason: str | None = None,
           clock: Callable[[], int] = now_ms) -> tuple[DeviceInfo, Change]:
    """Revoke the device ``device_id`` (idempotent; a malformed id is 422, an unknown one
    404); the Change closes its live session on every server process."""
    change = revoke_device(db, require_device(device_id), reason, clock)
    return _after(device_id), change


def unrevoke(db: pw.Database, device_id: str,
             clock: Callable[[], int] = now_ms) -> tuple[DeviceInfo, Change]:
    """Let the device connect again (idempotent); its old tokens stay revoked."""
    change = unrevoke_device(db, require_device(device_id), clock)
    return _after(device_id), change


def _own(device_id: str, user_id: str) -> Device:
    """A device of ``user_id``; another user's device is 404, like one that does not exist."""
    d = get_device(device_id)
    if d is None or _uid(d) != user_id:
        raise NotFound(f"no device {device_id}", code="device_unknown")
    return d


def rename(db: pw.Database, device_id: str, name: str, *, user_id: str,
           clock: Callable[[], int] = now_ms) -> tuple[DeviceInfo, Change]:
    """Rename a device of ``user_id`` (api.md Devices)."""
    d = _own(device_id, user_id)
    change = rename_device(db, d, name, clock)
    return DeviceInfo.of(d), change


def revoke_self(db: pw.Database, device_id: str, *, user_id: str, caller_id: str,
                clock: Callable[[], int] = now_ms) -> tuple[DeviceInfo, Change]:
    """A device revokes itself; revoking another device is the admin's (403)."""
    d = _own(device_id, user_id)
    if d.id != caller_id:
        raise Forbidden("a device may revoke only itself; use the admin API for others",
                        code="not_this_device")
    change = revoke_device(db, d, "revoked by the device itself", clock)
    return _after(d.id), change
