"""Bench users and devices written into a throwaway server's database before it starts."""

from __future__ import annotations

import secrets
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

    Added in bulk (``services.devices.add_devices_in_bulk``), before the server starts:
    the idle-memory part needs thousands, which ``add_device`` would add one device (and
    one ``sys.devices`` notice) at a time."""
    from relaybox.config import load_settings
    from relaybox.services.datadir import open_store
    from relaybox.services.devices import add_devices_in_bulk

    settings = load_settings(data_dir, env=env or {})
    db = open_store(settings)
    keys = [nacl.signing.SigningKey.generate() for _ in range(n)]
    try:
        ids = add_devices_in_bulk(db, [bytes(k.verify_key) for k in keys],
                                  prefix=f"idle-{secrets.token_hex(3)}")
    finally:
        db.close()
    return [Device(did, bytes(k)) for did, k in zip(ids, keys, strict=True)]
