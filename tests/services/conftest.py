"""Service fixtures: a data dir set up by the datadir service on a temporary SQLite, and a
clock the test moves (services take ``clock`` as an argument)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import peewee as pw
import pytest

from relaybox.config import Settings, load_settings
from relaybox.services.datadir import initialise, open_store
from relaybox.services.devices import DeviceInfo, add_device
from relaybox.services.users import UserInfo, create_user, find_user


class Clock:
    """Milliseconds that move only when the test says so."""

    def __init__(self, now_ms: int = 1_800_000_000_000) -> None:
        self.now_ms = now_ms

    def __call__(self) -> int:
        return self.now_ms

    def advance(self, ms: int) -> None:
        self.now_ms += ms


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return load_settings(tmp_path / "data", env={})


@pytest.fixture
def db(settings: Settings) -> Iterator[pw.Database]:
    initialise(settings)
    database = open_store(settings)
    yield database
    database.close()


@pytest.fixture
def clock() -> Clock:
    return Clock()


def new_user(db: pw.Database, name: str, clock: Clock) -> UserInfo:
    return create_user(db, name, clock)


def new_device(db: pw.Database, user: UserInfo, name: str, clock: Clock) -> DeviceInfo:
    device, _ = add_device(db, find_user(user.user_id), name, os.urandom(32), clock)
    return DeviceInfo.of(device)
