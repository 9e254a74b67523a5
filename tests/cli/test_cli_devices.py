"""relaybox device list | revoke | unrevoke (offline: no server running)."""

from __future__ import annotations

import json
from pathlib import Path

import psutil

from relaybox.config import load_settings
from relaybox.services.identity import check_admin_token, is_initialised
from relaybox.store.db import open_database
from relaybox.store.models import Event
from tests.cli.helpers import assert_error, run, run_json
from tests.support import seed


def test_list_filters_by_user_and_revoked(data_dir: Path) -> None:
    keys = seed(data_dir, {"alice": 2, "bob": 1})
    everyone = run_json(data_dir, "device", "list")
    assert len(everyone) == 3 and {d["user"] for d in everyone} == {"alice", "bob"}
    assert "online" not in everyone[0]  # the CLI cannot know presence
    mine = run_json(data_dir, "device", "list", "--user", "alice")
    assert {d["device_id"] for d in mine} == {k.device_id for k in keys["alice"]}
    assert run_json(data_dir, "device", "list", "--revoked") == []
    run_json(data_dir, "device", "revoke", keys["bob"][0].device_id)
    revoked = run_json(data_dir, "device", "list", "--revoked")
    assert [d["device_id"] for d in revoked] == [keys["bob"][0].device_id]
    table = run(data_dir, "device", "list")
    assert table.exit_code == 0 and "revoked" in table.stdout and "active" in table.stdout


def test_revoke_records_the_reason_and_unrevoke_undoes_it(data_dir: Path) -> None:
    dev = seed(data_dir, {"alice": 1})["alice"][0]
    doc = run_json(data_dir, "device", "revoke", dev.device_id, "--reason", "lost phone")
    assert doc["revoked"] is True and doc["revoked_reason"] == "lost phone"
    assert doc["server_notified"] is False
    again = run_json(data_dir, "device", "revoke", dev.device_id)  # idempotent
    assert again["revoked_at"] == doc["revoked_at"]
    back = run_json(data_dir, "device", "unrevoke", dev.device_id)
    assert back["revoked"] is False and back["revoked_reason"] is None
    human = run(data_dir, "device", "revoke", dev.device_id)
    assert human.exit_code == 0 and "Revoked" in human.stdout
    db = open_database(load_settings(data_dir, env={}))
    try:  # the user's devices hear about it on sys.devices (protocol.md Server notices)
        notices = [e.body for e in Event.select().where(Event.stream == "sys.devices")]
    finally:
        db.close()
    assert sum('"device_revoked"' in b for b in notices) == 2
    assert sum('"device_unrevoked"' in b for b in notices) == 1


def test_a_malformed_device_id_is_a_one_line_error(data_dir: Path) -> None:
    assert_error(run(data_dir, "device", "revoke", "not-an-id"), "not a device id")
    assert_error(run(data_dir, "device", "unrevoke", "12"), "not a device id")


def test_an_unknown_device_is_a_one_line_error(data_dir: Path) -> None:
    assert_error(run(data_dir, "device", "revoke", "01890000-0000-7000-8000-000000000000"),
                 "no device")


def test_an_unknown_user_filter_is_a_one_line_error(data_dir: Path) -> None:
    assert_error(run(data_dir, "device", "list", "--user", "ghost"), "no user 'ghost'")


def test_revoking_without_a_server_starts_no_redis(data_dir: Path) -> None:
    dev = seed(data_dir, {"alice": 1})["alice"][0]
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    run_json(data_dir, "device", "revoke", dev.device_id)
    after = psutil.Process().children(recursive=True)
    assert [p.name() for p in after if p.pid not in before] == []
    run_dir = data_dir / "run"
    assert not run_dir.exists() or not list(run_dir.glob("redis*"))


def test_admin_token_rotate_replaces_the_token(data_dir: Path) -> None:
    first = run_json(data_dir, "admin-token", "--rotate")["admin_token"]
    second = run_json(data_dir, "admin-token", "--rotate")["admin_token"]
    assert first != second and second.startswith("rbadm_")
    db = open_database(load_settings(data_dir, env={}))
    try:
        assert is_initialised(db)
        assert check_admin_token(second) and not check_admin_token(first)
    finally:
        db.close()
    human = run(data_dir, "admin-token", "--rotate")
    assert human.exit_code == 0 and "rbadm_" in human.stdout


def test_admin_token_without_rotate_is_a_usage_error(data_dir: Path) -> None:
    r = run(data_dir, "admin-token")
    assert r.exit_code == 2 and "--rotate" in r.stderr


def test_a_revocation_redis_refuses_is_saved_and_says_servers_were_not_told(
        data_dir: Path) -> None:
    dev = seed(data_dir, {"alice": 1})["alice"][0]
    env = {"RELAYBOX_REDIS_URL": f"unix://{data_dir}/no-redis.sock"}
    r = run(data_dir, "device", "revoke", dev.device_id, "--json", env=env)
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["server_notified"] is False
    warning = " ".join(r.stderr.split())  # rich wraps the line
    assert warning.startswith("warning: the change is saved, but running servers could not "
                              "be told (Error ")
    assert warning.endswith("); live sessions notice on their next connect")
    assert run_json(data_dir, "device", "list", "--revoked")[0]["device_id"] == dev.device_id
