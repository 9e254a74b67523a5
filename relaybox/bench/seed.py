"""Bench users and devices written into a throwaway server's database before it starts."""

from __future__ import annotations

import secrets
import time
from collections.abc import Mapping
from pathlib import Path

import nacl.signing

from relaybox.bench.connection import Device


def seed_devices(data_dir: Path, per_user: int, users: int = 1,
                 env: Mapping[str, str] | None = None) -> list[list[Device]]:
    """Initialise ``data_dir`` and create users with devices (before the server starts),
    in the database the server will use (``env``: its RELAYBOX_* settings). Names are new
    on every run, so that a shared PostgreSQL database can be measured again."""
    from relaybox.config import load_settings
    from relaybox.services.datadir import initialise, open_store
    from relaybox.services.devices import add_device
    from relaybox.services.users import add_user

    settings = load_settings(data_dir, env=env or {})
    initialise(settings)
    db = open_store(settings)
    out = []
    tag = secrets.token_hex(3)
    try:
        for u in range(users):
            user = add_user(db, f"bench{u}-{tag}")
            devs = []
            for i in range(per_user):
                sk = nacl.signing.SigningKey.generate()
                d, _ = add_device(db, user, f"bench{u}-{i}", bytes(sk.verify_key))
                devs.append(Device(d.id, bytes(sk)))
            out.append(devs)
    finally:
        db.close()
    return out


def seed_devices_more(data_dir: Path, n: int,
                      env: Mapping[str, str] | None = None) -> list[Device]:
    """``n`` more devices, spread over users of 50 devices (after ``seed_devices``).

    Inserted in bulk straight into the tables of the throwaway database, before its
    server starts: the idle-memory part needs thousands, which the services would add
    one device (and one ``sys.devices`` notice) at a time."""
    from relaybox.config import load_settings
    from relaybox.protocol.encoding import uuid7
    from relaybox.store.db import open_database
    from relaybox.store.models import Device as DeviceRow
    from relaybox.store.models import User

    settings = load_settings(data_dir, env=env or {})
    db = open_database(settings)
    out = []
    now = int(time.time() * 1000)
    tag = secrets.token_hex(3)
    try:
        with db.atomic():
            user_id = ""
            rows = []
            for i in range(n):
                if i % 50 == 0:
                    user_id = uuid7()
                    User.create(id=user_id, name=f"idle{i // 50}-{tag}", created_at=now)
                sk = nacl.signing.SigningKey.generate()
                did = uuid7()
                rows.append({"id": did, "user": user_id, "name": f"idle-{i}",
                             "public_key": bytes(sk.verify_key), "created_at": now})
                out.append(Device(did, bytes(sk)))
            for i in range(0, len(rows), 200):
                DeviceRow.insert_many(rows[i:i + 200]).execute()
    finally:
        db.close()
    return out
