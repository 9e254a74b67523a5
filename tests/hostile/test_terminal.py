"""Hostile text on the admin's terminal, and the name rule (security.md "Terminal output
and names", api.md Devices): user data printed by the CLI cannot inject rich markup or
escape sequences, and new names refuse control, bidi and invisible characters."""

from __future__ import annotations

import json
import shlex
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner, Result

from relaybox.cli import cli
from relaybox.client import Event, Gap, Identity
from tests.api.helpers import HIGH_LIMITS, assert_problem, new_public_key, signed_request
from tests.support import DeviceKey, Server, free_port, seed

# A closing tag with no opening one, SGR colour, an OSC 8 hyperlink, a bidi override.
HOSTILE = {
    "markup": "[/nope]",
    "sgr": "\x1b[31mred\x1b[0m",
    "osc8": "\x1b]8;;http://x\x1b\\click\x1b]8;;\x1b\\",
    "bidi": "\u202eexe.txt",
}
# Characters that act on a terminal or hide text; none may reach the output raw.
RAW = ("\x1b", "\x9b", "\x07", "\u202e", "\u2066", "\u200b", "\x7f")
# The name rule refuses these (one of each family).
REFUSED = ["\x00", "\x1b", "\n", "\x7f", "\x85", "\x9b", "\u202a", "\u202e", "\u2066",
           "\u2069", "\u200b", "\u200d", "\u200f", "\u2060", "\ufeff", "\u2028",
           "\U000e0041"]
ACCEPTED = ["kitchen tablet", "[/nope]", "[bold]x[/]", "Zoë's 日本語 📱", "a\\b", "x" * 64]


def run(data_dir: Path, *args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(cli, ["--data-dir", str(data_dir), *args],
                              catch_exceptions=False, env=env)


def assert_inert(r: Result, expect: int = 0) -> str:
    """The command ended with ``expect`` and printed nothing that acts on a terminal."""
    assert r.exit_code == expect, (r.exit_code, r.stdout, r.stderr)
    for text in (r.stdout, r.stderr):
        assert "Traceback" not in text
        for ch in RAW:
            assert ch not in text, (ch, text)
    return r.stdout + r.stderr


def one_error(r: Result, *fragments: str) -> str:
    assert r.exit_code == 1, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    for f in fragments:
        assert f in lines[0], lines[0]
    return lines[0]


def store_names(data_dir: Path, *, devices: dict[str, str] | None = None,
                users: dict[str, str] | None = None) -> None:
    """Write names straight into the database, as a name stored before the rule was."""
    from relaybox.config import load_settings
    from relaybox.store.db import open_database
    from relaybox.store.models import Device, User

    db = open_database(load_settings(data_dir, env={}))
    try:
        for device_id, name in (devices or {}).items():
            Device.update(name=name).where(Device.id == device_id).execute()
        for user_id, name in (users or {}).items():
            User.update(name=name).where(User.id == user_id).execute()
    finally:
        db.close()


def revoked_at(data_dir: Path, device_id: str) -> int | None:
    from relaybox.config import load_settings
    from relaybox.store.db import open_database
    from relaybox.store.models import Device

    db = open_database(load_settings(data_dir, env={}))
    try:
        return Device.get_by_id(device_id).revoked_at  # type: ignore[no-any-return]
    finally:
        db.close()


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    from relaybox.cli.init_cmd import initialise
    from relaybox.config import load_settings

    d = tmp_path / "data"
    initialise(load_settings(d, env={}))
    return d


# -- the reported defects -------------------------------------------------------------------
def test_device_named_like_markup_lists_and_revokes(data_dir: Path) -> None:
    """A device renamed ``[/nope]`` made ``device list`` exit 1, and ``device revoke`` exit 1
    although the revocation was committed."""
    (dev,) = seed(data_dir, {"alice": 1})["alice"]
    store_names(data_dir, devices={dev.device_id: "[/nope]"})

    listing = assert_inert(run(data_dir, "device", "list"))
    assert "[/nope]" in listing
    revoked = assert_inert(run(data_dir, "device", "revoke", dev.device_id))
    assert "[/nope]" in revoked and dev.device_id in revoked
    assert revoked_at(data_dir, dev.device_id) is not None
    assert "[/nope]" in assert_inert(run(data_dir, "device", "list", "--revoked"))


def test_client_tail_shows_wire_text_inert(hostile_api: HostileApi, tmp_path: Path) -> None:
    """An event key and body holding escape sequences reached the terminal raw."""
    sender, reader = hostile_api.identities(tmp_path, "sender", "reader")
    key = HOSTILE["osc8"] + HOSTILE["bidi"]
    body = {"text": HOSTILE["sgr"] + "\x9b2J\x07" + HOSTILE["markup"]}
    send = CliRunner().invoke(cli, ["client", "send", "notes", json.dumps(body), "--key", key,
                                    "--identity", str(sender)], catch_exceptions=False)
    assert send.exit_code == 0, send.stderr

    r = CliRunner().invoke(cli, ["client", "tail", "notes", "--count", "1", "--no-state",
                                 "--identity", str(reader)], catch_exceptions=False)
    out = assert_inert(r)
    assert "\\x1b]8;;http://x\\x1b\\click" in out and "\\u202eexe.txt" in out
    # The body is shown as JSON, so its hidden characters as JSON escapes.
    assert '"\\u001b[31mred\\u001b[0m\\u009b2J\\u0007[/nope]"' in out


def test_client_tail_json_is_exact_and_inert(hostile_api: HostileApi, tmp_path: Path) -> None:
    """``--json`` lines are terminal-safe and still decode to exactly what was sent."""
    sender, reader = hostile_api.identities(tmp_path, "sender", "reader")
    key = "".join(HOSTILE.values()) + "\x85\u2066\U000e0041"
    body = {k: v + "\x7f\x9b" for k, v in HOSTILE.items()}
    send = CliRunner().invoke(cli, ["client", "send", "json", json.dumps(body), "--key", key,
                                    "--identity", str(sender)], catch_exceptions=False)
    assert send.exit_code == 0, send.stderr

    r = CliRunner().invoke(cli, ["client", "tail", "json", "--count", "1", "--no-state",
                                 "--json", "--identity", str(reader)], catch_exceptions=False)
    assert_inert(r)
    (line,) = r.stdout.splitlines()
    doc = json.loads(line)
    assert doc["key"] == key and doc["body"] == body


@pytest.mark.parametrize("item", [
    Event(stream=HOSTILE["osc8"], seq=1, id="x", from_device=HOSTILE["sgr"],
          key=HOSTILE["markup"], ts=HOSTILE["bidi"], body=[HOSTILE["sgr"]]),
    Gap(stream=HOSTILE["sgr"] + HOSTILE["markup"], after=1, next=5),
], ids=["event", "gap"])
def test_tail_line_of_a_hostile_server_is_inert(item: Event | Gap) -> None:
    """Stream names, timestamps and sender ids come from the wire too."""
    import io

    from rich.console import Console

    from relaybox.cli.client import _show

    buf = io.StringIO()
    _show(Console(file=buf, width=200, highlight=False), item)
    text = buf.getvalue()
    assert not any(ch in text for ch in RAW), text
    assert "[/nope]" in text and "\\x1b[" in text


# -- every command that prints a name ------------------------------------------------------
@pytest.mark.parametrize("name", list(HOSTILE.values()), ids=list(HOSTILE))
def test_admin_commands_show_hostile_names_inert(data_dir: Path, name: str) -> None:
    keys = seed(data_dir, {"alice": 2})["alice"]
    dev, other = keys
    store_names(data_dir, devices={dev.device_id: name, other.device_id: name + "2"},
                users={dev.user_id: name})
    # How the name shows: each ESC and U+202E as a visible escape, the rest as is.
    shown = name.replace("\x1b", "\\x1b").replace("\u202e", "\\u202e")
    claim_name = shlex.quote(f"{name}-device3") if name == HOSTILE["markup"] else "device3"

    outputs = [
        assert_inert(run(data_dir, "device", "list")),
        assert_inert(run(data_dir, "device", "list", "--user", dev.user_id)),
        assert_inert(run(data_dir, "device", "revoke", dev.device_id, "--reason", name)),
        assert_inert(run(data_dir, "device", "list", "--revoked")),
        assert_inert(run(data_dir, "device", "unrevoke", dev.device_id)),
        assert_inert(run(data_dir, "device", "revoke", dev.device_id)),
        assert_inert(run(data_dir, "user", "list")),
        assert_inert(run(data_dir, "pair", dev.user_id, "--no-qr")),
        assert_inert(run(data_dir, "prune", "--dry-run")),
        assert_inert(run(data_dir, "user", "remove", dev.user_id), expect=1),
    ]
    assert revoked_at(data_dir, dev.device_id) is not None  # the revocation was committed
    for text in outputs[:8]:
        assert shown in text, text
    # The claim command offered for the new device keeps to the name rule.
    assert f"--name {claim_name}" in outputs[7]
    assert_inert(run(data_dir, "user", "remove", dev.user_id, "--yes"))


@pytest.mark.parametrize("args", [
    ("device", "list"), ("device", "list", "--revoked"), ("user", "list"),
], ids=["devices", "revoked", "users"])
def test_json_output_is_exact(data_dir: Path, args: tuple[str, ...]) -> None:
    (dev,) = seed(data_dir, {"alice": 1})["alice"]
    name = "".join(HOSTILE.values()) + "\x7f\x9b"
    store_names(data_dir, devices={dev.device_id: name}, users={dev.user_id: name})
    assert_inert(run(data_dir, "device", "revoke", dev.device_id, "--reason", name))
    r = run(data_dir, *args, "--json")
    assert_inert(r)
    (doc,) = json.loads(r.stdout)
    assert doc["name"] == name
    if args[0] == "device":
        assert doc["user"] == name and doc["revoked_reason"] == name


def test_errors_echoing_input_stay_one_inert_line(data_dir: Path) -> None:
    seed(data_dir, {"alice": 1})
    for args in (("device", "revoke", HOSTILE["osc8"]), ("user", "remove", HOSTILE["bidi"]),
                 ("device", "list", "--user", HOSTILE["sgr"] + "\n2nd line")):
        r = run(data_dir, *args)
        assert_inert(r, expect=1)
        one_error(r)


class _HostileStatus(BaseHTTPRequestHandler):
    """A server whose status answer is made to attack the admin's terminal."""

    def do_GET(self) -> None:
        body = json.dumps({"status": HOSTILE["sgr"], "version": HOSTILE["markup"],
                           "server_id": HOSTILE["osc8"], "uptime_s": 1e400,
                           "database": HOSTILE["bidi"], "redis": "[red]ok",
                           "connections": "\x1b[2J", "failing": [HOSTILE["osc8"], 7]},
                          allow_nan=True).encode()
        self.send_response(503)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


def test_status_of_a_hostile_server_is_inert(data_dir: Path) -> None:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _HostileStatus)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        r = run(data_dir, "status",
                env={"RELAYBOX_PUBLIC_URL": f"http://127.0.0.1:{httpd.server_address[1]}"})
    finally:
        httpd.shutdown()
        httpd.server_close()
    text = assert_inert(r, expect=1)
    one_error(r, "not ready", "\\x1b]8;;http://x")
    assert "[/nope]" in text and "\\x1b[31mred" in text and "[red]ok" in text


# -- the name rule ------------------------------------------------------------------------
@pytest.mark.parametrize("ch", REFUSED, ids=[f"U+{ord(c):04X}" for c in REFUSED])
def test_check_name_refuses(ch: str) -> None:
    from relaybox.protocol.encoding import check_name

    with pytest.raises(ValueError, match=f"U\\+{ord(ch):04X}"):
        check_name(f"lap{ch}top")


@pytest.mark.parametrize("name", ACCEPTED)
def test_check_name_accepts(name: str) -> None:
    from relaybox.protocol.encoding import check_name

    assert check_name(name) == name


def test_services_refuse_bad_device_names(data_dir: Path) -> None:
    import nacl.signing

    from relaybox.config import load_settings
    from relaybox.errors import InvalidInput
    from relaybox.services.devices import add_device, rename_device
    from relaybox.store.db import open_database
    from relaybox.store.models import Device, User

    (dev,) = seed(data_dir, {"alice": 1})["alice"]
    db = open_database(load_settings(data_dir, env={}))
    try:
        user, device = User.get_by_id(dev.user_id), Device.get_by_id(dev.device_id)
        key = bytes(nacl.signing.SigningKey.generate().verify_key)
        with pytest.raises(InvalidInput) as added:
            add_device(db, user, HOSTILE["sgr"], key)
        with pytest.raises(InvalidInput) as renamed:
            rename_device(db, device, HOSTILE["bidi"])
        assert added.value.code == renamed.value.code == "invalid_name"
        assert Device.get_by_id(dev.device_id).name == "alice-dev0"
        assert not Device.select().where(Device.public_key == key).exists()
    finally:
        db.close()


@pytest.mark.parametrize("name", ["alice\n", "al\x1bce", "al\u202ece", ""])
def test_cli_user_add_refuses_bad_names(data_dir: Path, name: str) -> None:
    r = run(data_dir, "user", "add", name)
    assert_inert(r, expect=1)
    one_error(r, "user names are")
    assert run(data_dir, "user", "list", "--json").stdout.strip() == "[]"


@pytest.mark.parametrize("ch", ["\x1b", "\u202e", "\u200b"])
def test_cli_pair_name_follows_the_rule(data_dir: Path, ch: str) -> None:
    seed(data_dir, {"alice": 0})
    r = run(data_dir, "pair", "alice", "--no-qr", "--name", f"lap{ch}top")
    assert_inert(r, expect=1)
    one_error(r, f"U+{ord(ch):04X}")


def test_cli_client_pair_refuses_bad_name_before_claiming(tmp_path: Path) -> None:
    identity = tmp_path / "id.json"
    # An address nothing listens on: the name is refused before any request is made.
    r = CliRunner().invoke(cli, ["client", "pair", "AAAA-BBBB", "--server",
                                 f"http://127.0.0.1:{free_port()}", "--name",
                                 HOSTILE["osc8"], "--identity", str(identity)],
                           catch_exceptions=False)
    assert_inert(r, expect=1)
    one_error(r, "--name", "U+001B")
    assert not identity.exists()


@pytest.mark.parametrize("ch", REFUSED, ids=[f"U+{ord(c):04X}" for c in REFUSED])
def test_rest_rename_refuses(hostile_api: HostileApi, ch: str) -> None:
    dev = hostile_api.devices[0]
    with hostile_api.client(dev) as c:
        r = c.patch(f"/devices/{dev.device_id}", json={"name": f"lap{ch}top"})
        doc = assert_problem(r, 422, "invalid")
        assert doc["errors"][0]["field"] == "name"
        assert f"U+{ord(ch):04X}" in doc["errors"][0]["message"], doc
        names = [d["name"] for d in c.get("/devices").json()]
    assert f"lap{ch}top" not in names


@pytest.mark.parametrize("name", ACCEPTED)
def test_rest_rename_accepts(hostile_api: HostileApi, name: str) -> None:
    dev = hostile_api.devices[0]
    with hostile_api.client(dev) as c:
        r = c.patch(f"/devices/{dev.device_id}", json={"name": name})
        assert r.status_code == 200, r.text
        assert r.json()["name"] == name


@pytest.mark.parametrize("ch", ["\x9b", "\u202e", "\u2066", "\u200d", "\ufeff"])
def test_rest_claim_refuses_and_keeps_the_code(hostile_api: HostileApi, ch: str) -> None:
    dev = hostile_api.devices[0]
    with hostile_api.client(dev) as c:
        code = c.post("/pairing/store").json()["code"]
    with hostile_api.client(None) as c:
        r = c.post("/pairing/claim", json={"code": code, "public_key": new_public_key(),
                                           "name": f"phone{ch}"})
        doc = assert_problem(r, 422, "invalid")
        assert f"U+{ord(ch):04X}" in doc["detail"]
        ok = c.post("/pairing/claim", json={"code": code, "public_key": new_public_key(),
                                            "name": "phone"})
        assert ok.status_code == 201, ok.text


def test_client_devices_table_is_inert(hostile_api: HostileApi, tmp_path: Path) -> None:
    """Names stored before the rule, listed by a device of the same user."""
    (me,) = hostile_api.identities(tmp_path, "me")
    r = CliRunner().invoke(cli, ["client", "devices", "--identity", str(me)],
                           catch_exceptions=False)
    text = assert_inert(r)
    assert "(this device)" in text and "\\u202eexe.txt" in text and "[/nope]" in text


# -- a real server whose user has devices with names stored before the rule ------------------
class HostileApi:
    def __init__(self, server: Server, server_id: str, devices: list[DeviceKey]) -> None:
        self.server, self.server_id, self.devices = server, server_id, devices

    def client(self, dev: DeviceKey | None) -> httpx.Client:
        headers = {}
        if dev is not None:
            r = httpx.post(self.server.url + "/api/v1/auth/token",
                           json=signed_request(self.server_id, dev), timeout=20)
            assert r.status_code == 200, r.text
            headers["Authorization"] = f"Bearer {r.json()['access_token']}"
        return httpx.Client(base_url=self.server.url + "/api/v1", headers=headers, timeout=20)

    def identities(self, tmp_path: Path, *names: str) -> list[Path]:
        """Identity files for the user's well-named devices (the first len(names))."""
        paths = []
        for name, dev in zip(names, self.devices[:2], strict=False):
            ident = Identity(server=self.server.url, server_id=self.server_id,
                             device_id=dev.device_id, user_id=dev.user_id,
                             private_key=bytes(dev.key))
            ident.save(tmp_path / f"{name}.json")
            paths.append(tmp_path / f"{name}.json")
        return paths


@pytest.fixture(scope="module")
def hostile_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HostileApi]:
    from relaybox.cli.init_cmd import initialise
    from relaybox.config import load_settings

    data_dir = tmp_path_factory.mktemp("hostile") / "data"
    res = initialise(load_settings(data_dir, env={}))
    devs = seed(data_dir, {"mallory": 2 + len(HOSTILE)})["mallory"]
    store_names(data_dir, devices={d.device_id: name for d, name
                                   in zip(devs[2:], HOSTILE.values(), strict=True)})
    srv = Server(data_dir, free_port(), dict(HIGH_LIMITS))
    srv.start()
    try:
        yield HostileApi(srv, res.server_id, devs)
    finally:
        log = srv.log()
        srv.stop()
        srv.kill()
    assert "Traceback" not in log, log[-4000:]


@pytest.mark.parametrize("name", list(HOSTILE.values()), ids=list(HOSTILE))
def test_backup_list_shows_hostile_file_names_inert(data_dir: Path, name: str) -> None:
    """Files in the backups folder are named by whoever can write there; `backup list`
    shows such a name (an unreadable archive) without acting on the terminal."""
    backups = data_dir / "backups"
    backups.mkdir(exist_ok=True)
    from relaybox.services.backup import SUFFIX

    (backups / f"relaybox-{name.replace('/', '_')}{SUFFIX}").write_bytes(b"not an archive")
    shown = assert_inert(run(data_dir, "backup", "list"))
    assert "unreadable" in shown


@pytest.mark.parametrize("name", list(HOSTILE.values()), ids=list(HOSTILE))
def test_server_log_lines_are_inert(name: str) -> None:
    """A log message that carries peer text cannot act on the terminal nor forge a line."""
    import logging

    from relaybox.server.observability.logs import PlainFormatter

    record = logging.LogRecord("relaybox.test", logging.INFO, __file__, 1,
                               "refused %s", (name + "\nFAKE ERROR line",), None)
    line = PlainFormatter().format(record)
    assert "\n" not in line
    for ch in RAW:
        assert ch not in line
