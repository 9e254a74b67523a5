"""services/datadir.py: setting up a data dir and opening its database for a command."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from relaybox.config import load_settings
from relaybox.services import datadir, identity
from relaybox.store import migrate


def test_an_empty_data_dir_is_not_initialised_until_set_up(tmp_path: Path) -> None:
    settings = load_settings(tmp_path / "data", env={})
    assert datadir.is_initialised(settings) is False
    with pytest.raises(datadir.NotInitialised, match="run 'relaybox init'"):
        datadir.open_store(settings)
    first = datadir.initialise(settings)
    assert first.created and first.admin_token is not None
    assert os.stat(settings.data_dir).st_mode & 0o077 == 0
    assert datadir.is_initialised(settings) is True
    again = datadir.initialise(settings)  # safe on an existing one
    assert (again.created, again.admin_token, again.server_id) == (False, None,
                                                                   first.server_id)


def test_the_opened_store_is_migrated_answers_and_rotates_the_admin_token(
        tmp_path: Path) -> None:
    settings = load_settings(tmp_path / "data", env={})
    old = datadir.initialise(settings).admin_token
    db = datadir.open_store(settings)
    try:
        assert migrate.status(db).pending == []
        assert datadir.database_answers(db) is True
        new = identity.new_admin_token(db)
        assert identity.check_admin_token(new) and not identity.check_admin_token(str(old))
    finally:
        db.close()


def test_prepare_migrates_and_gives_an_empty_database_an_identity_once(tmp_path: Path) -> None:
    settings = load_settings(tmp_path / "data", env={})
    settings.data_dir.mkdir(mode=0o700)
    first = datadir.prepare(settings)
    assert first.applied == sorted(p.stem for p in migrate.MIGRATIONS_DIR.glob("0*.py"))
    assert first.admin_token is not None and first.users == 0
    again = datadir.prepare(settings)
    assert (again.applied, again.admin_token) == ([], None)
    assert datadir.is_initialised(settings)
