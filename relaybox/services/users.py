"""Users: add, list, find, remove (with their devices, events and cursors)."""

from __future__ import annotations

import re
from collections.abc import Callable

import peewee as pw

from relaybox.errors import Conflict, InvalidInput, NotFound
from relaybox.protocol.encoding import now_ms, uuid7
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
