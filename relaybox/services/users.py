"""Users: add, list, find, remove (with their devices, events and cursors)."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import peewee as pw

from relaybox.errors import Conflict, InvalidInput, NotFound
from relaybox.protocol.encoding import format_ts, now_ms, uuid7
from relaybox.services.notify import Change
from relaybox.store.db import write_transaction
from relaybox.store.models import Cursor, Device, Event, PairingCode, StreamHead, User

# User names appear in commands and URLs, so they are stricter than device names
# (api.md Admin); being ASCII, they pass the name rule of check_name too.
USER_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")


def add_user(db: pw.Database, name: str, clock: Callable[[], int] = now_ms) -> User:
    # fullmatch: with match, "$" would also accept a trailing newline.
    if not isinstance(name, str) or not USER_NAME_RE.fullmatch(name):
        raise InvalidInput("user names are 1-64 letters, digits, '.', '_', '@' or '-', "
                           "starting with a letter or digit", code="invalid_user_name")
    with write_transaction(db):
        if User.get_or_none(User.name == name) is not None:
            raise Conflict(f"user {name!r} exists", code="user_exists")
        return User.create(id=uuid7(), name=name, created_at=clock())


def find_user(ref: str) -> User:
    """A user by name or id."""
    user = User.get_or_none((User.name == ref) | (User.id == ref))
    if user is None:
        raise NotFound(f"no user {ref!r}", code="user_unknown")
    return user


def list_users() -> list[User]:
    return list(User.select().order_by(User.created_at))


def remove_user(db: pw.Database, user: User) -> list[str]:
    """Delete a user and everything of theirs; returns the removed device ids."""
    with write_transaction(db):
        device_ids = [d.id for d in Device.select(Device.id).where(Device.user == user.id)]
        if device_ids:
            Cursor.delete().where(Cursor.device_id.in_(device_ids)).execute()
        Event.delete().where(Event.user_id == user.id).execute()
        StreamHead.delete().where(StreamHead.user_id == user.id).execute()
        PairingCode.delete().where(PairingCode.user == user.id).execute()
        Device.delete().where(Device.user == user.id).execute()
        user.delete_instance()
    return device_ids


# -- use cases of the CLI and the REST API: plain UserInfo out ---------------------------------
@dataclass(frozen=True, slots=True)
class UserInfo:
    """A user as the CLI and the REST API show it; device counts when asked for."""

    user_id: str
    name: str
    created_at: int
    devices: int = 0
    active_devices: int = 0

    @classmethod
    def of(cls, u: User) -> UserInfo:
        return cls(u.id, u.name, u.created_at)

    def as_json(self) -> dict[str, Any]:
        return {"user_id": self.user_id, "name": self.name,
                "created_at": format_ts(self.created_at)}


@dataclass(frozen=True, slots=True)
class RemovedUser:
    user: UserInfo
    device_ids: list[str]
    #: Closes the sessions of the removed devices on every server process.
    change: Change


def create_user(db: pw.Database, name: str, clock: Callable[[], int] = now_ms) -> UserInfo:
    return UserInfo.of(add_user(db, name, clock))


def user_info(ref: str) -> UserInfo:
    """A user by name or id (404 ``user_unknown``)."""
    return UserInfo.of(find_user(ref))


def all_users() -> list[UserInfo]:
    """Every user, oldest first."""
    return [UserInfo.of(u) for u in list_users()]


def users_with_devices() -> list[UserInfo]:
    """Every user, oldest first, with their device counts (one query)."""
    total = pw.fn.COUNT(Device.id)
    active = Device.id.is_null(False) & Device.revoked_at.is_null()
    live = pw.fn.SUM(pw.Case(None, [(active, 1)], 0))
    query: Any = (User.select(User.id, User.name, User.created_at,
                              total.alias("devices"), live.alias("active"))
                  .join(Device, pw.JOIN.LEFT_OUTER, on=(Device.user == User.id))
                  .group_by(User.id, User.name, User.created_at)
                  .order_by(User.created_at))
    return [UserInfo(r["id"], r["name"], r["created_at"], int(r["devices"] or 0),
                     int(r["active"] or 0)) for r in query.dicts()]


def delete_user(db: pw.Database, ref: str) -> RemovedUser:
    """Delete the user ``ref`` (name or id) with everything of theirs."""
    user = find_user(ref)
    device_ids = remove_user(db, user)
    # hub.on_control closes the sessions of these devices on every server process.
    change = Change(controls=[{"kind": "user_removed", "device_ids": device_ids}])
    return RemovedUser(UserInfo.of(user), device_ids, change)
