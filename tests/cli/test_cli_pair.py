"""relaybox pair USER: code, expiry, QR code and the claim command."""

from __future__ import annotations

import re
import time
from datetime import datetime
from pathlib import Path

from relaybox.cli.pair import qr_text
from relaybox.config import load_settings
from relaybox.services.pairing import lookup_code
from relaybox.store.db import open_database
from tests.cli.helpers import assert_error, run, run_json

CODE_RE = re.compile(r"^[0-9A-HJKMNP-TV-Z]{4}-[0-9A-HJKMNP-TV-Z]{4}$")


def test_json_gives_a_live_code_for_the_user(data_dir: Path) -> None:
    run_json(data_dir, "user", "add", "alice")
    doc = run_json(data_dir, "pair", "alice", "--ttl", "120")
    assert set(doc) == {"code", "expires_at", "user", "link"}
    assert doc["link"] == f"http://127.0.0.1:8787/app/#pair={doc['code']}"
    assert CODE_RE.match(doc["code"]) and doc["user"] == "alice"
    expires = datetime.fromisoformat(doc["expires_at"].replace("Z", "+00:00")).timestamp()
    assert 100 < expires - time.time() <= 121
    db = open_database(load_settings(data_dir, env={}))
    try:  # the code really pairs with alice
        assert lookup_code(doc["code"]).user_name == "alice"
    finally:
        db.close()


def test_human_output_has_code_expiry_qr_and_the_exact_claim_line(data_dir: Path) -> None:
    run_json(data_dir, "user", "add", "alice")
    r = run(data_dir, "pair", "alice", "--name", "laptop")
    assert r.exit_code == 0, r.output
    code = re.search(r"[0-9A-Z]{4}-[0-9A-Z]{4}", r.stdout)
    assert code is not None and "expires" in r.stdout
    assert "█" in r.stdout or "▀" in r.stdout  # the QR code drawn with block characters
    line = (f"relaybox client pair {code.group(0)} --server http://127.0.0.1:8787 "
            "--name laptop")
    assert line in r.stdout.splitlines()[-1]


def test_the_qr_code_is_the_web_app_link_which_is_printed_too(data_dir: Path) -> None:
    # A phone camera opens a link; a shell command in a QR code is of no use to it.
    run_json(data_dir, "user", "add", "alice")
    r = run(data_dir, "pair", "alice")
    assert r.exit_code == 0, r.output
    code = re.search(r"[0-9A-Z]{4}-[0-9A-Z]{4}", r.stdout)
    assert code is not None
    link = f"http://127.0.0.1:8787/app/#pair={code.group(0)}"
    assert qr_text(link) in r.stdout
    assert f"  {link}" in r.stdout.splitlines()
    assert "tls.cert_file" not in r.stdout  # plain http to 127.0.0.1 is a secure context


def test_the_link_uses_public_url_and_http_elsewhere_gets_a_tls_note(data_dir: Path) -> None:
    run_json(data_dir, "user", "add", "alice")
    r = run(data_dir, "pair", "alice", "--no-qr",
            env={"RELAYBOX_PUBLIC_URL": "http://192.168.1.20:8787"})
    assert r.exit_code == 0, r.output
    assert "http://192.168.1.20:8787/app/#pair=" in r.stdout
    assert "tls.cert_file" in r.stdout


def test_the_claim_line_uses_public_url_and_suggests_a_name(data_dir: Path) -> None:
    run_json(data_dir, "user", "add", "alice")
    env = {"RELAYBOX_PUBLIC_URL": "https://relay.example.org/"}
    r = run(data_dir, "pair", "alice", "--no-qr", env=env)
    assert r.exit_code == 0
    assert "█" not in r.stdout
    assert r.stdout.rstrip().endswith("--server https://relay.example.org --name alice-device1")


def test_pairing_an_unknown_user_is_a_one_line_error(data_dir: Path) -> None:
    assert_error(run(data_dir, "pair", "ghost"), "no user 'ghost'")


def test_a_ttl_out_of_range_is_a_usage_error(data_dir: Path) -> None:
    run_json(data_dir, "user", "add", "alice")
    r = run(data_dir, "pair", "alice", "--ttl", "5")
    assert r.exit_code == 2 and "--ttl" in r.stderr
