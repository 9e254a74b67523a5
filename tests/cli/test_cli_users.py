"""relaybox user add | list | remove."""

from __future__ import annotations

from pathlib import Path

import nacl.signing

from relaybox.config import load_settings
from relaybox.services.devices import add_device
from relaybox.services.users import find_user
from relaybox.store.db import open_database
from relaybox.store.models import Device, Event, User
from tests.cli.helpers import assert_error, run, run_json


def test_add_then_list_shows_the_user_with_device_counts(data_dir: Path) -> None:
    added = run_json(data_dir, "user", "add", "alice")
    assert added["name"] == "alice" and len(added["user_id"]) == 36
    run_json(data_dir, "user", "add", "bob")
    db = open_database(load_settings(data_dir, env={}))
    add_device(db, find_user("alice"), "phone", bytes(nacl.signing.SigningKey.generate()
                                                      .verify_key))
    db.close()

    users = run_json(data_dir, "user", "list")
    assert [(u["name"], u["devices"], u["active_devices"]) for u in users] == [
        ("alice", 1, 1), ("bob", 0, 0)]
    table = run(data_dir, "user", "list")
    assert table.exit_code == 0 and "alice" in table.stdout and "bob" in table.stdout


def test_add_human_output_suggests_pairing(data_dir: Path) -> None:
    r = run(data_dir, "user", "add", "carol")
    assert r.exit_code == 0
    assert "relaybox pair carol" in r.stdout


def test_adding_a_user_twice_is_a_one_line_error(data_dir: Path) -> None:
    run_json(data_dir, "user", "add", "alice")
    assert_error(run(data_dir, "user", "add", "alice"), "exists")


def test_a_bad_user_name_is_a_one_line_error(data_dir: Path) -> None:
    assert_error(run(data_dir, "user", "add", "no spaces"), "user names")


def test_list_on_an_empty_server_says_how_to_add_one(data_dir: Path) -> None:
    assert run_json(data_dir, "user", "list") == []
    assert "relaybox user add" in run(data_dir, "user", "list").stdout


def test_remove_needs_yes_and_changes_nothing_without_it(data_dir: Path) -> None:
    run_json(data_dir, "user", "add", "alice")
    assert_error(run(data_dir, "user", "remove", "alice"), "--yes")
    assert [u["name"] for u in run_json(data_dir, "user", "list")] == ["alice"]


def test_remove_deletes_the_user_devices_and_events(data_dir: Path) -> None:
    from tests.support import seed

    keys = seed(data_dir, {"dave": 2, "erin": 1})
    gone = run_json(data_dir, "user", "remove", "dave", "--yes")
    assert sorted(gone["removed_devices"]) == sorted(k.device_id for k in keys["dave"])
    assert gone["server_notified"] is False  # no server runs: nobody to tell
    db = open_database(load_settings(data_dir, env={}))
    try:
        assert [u.name for u in User.select()] == ["erin"]
        assert Device.select().where(Device.user == keys["dave"][0].user_id).count() == 0
        # seed's device_added notices of dave went with him; erin's stay.
        assert Event.select().where(Event.user_id == keys["dave"][0].user_id).count() == 0
        assert Event.select().where(Event.user_id == keys["erin"][0].user_id).count() == 1
    finally:
        db.close()


def test_removing_an_unknown_user_is_a_one_line_error(data_dir: Path) -> None:
    assert_error(run(data_dir, "user", "remove", "nobody", "--yes"), "no user 'nobody'")


def test_commands_on_a_missing_data_dir_say_to_init(tmp_path: Path) -> None:
    assert_error(run(tmp_path / "nothing", "user", "list"), "relaybox init")
