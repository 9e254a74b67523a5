"""``relaybox client pair | send | tail | devices`` through the real command line."""

from __future__ import annotations

import dataclasses
import json
import os
import queue
import signal
import stat
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from relaybox.cli import cli
from relaybox.cli.client import DEFAULT_IDENTITY
from relaybox.client import DEFAULT_IDENTITY_PATH
from tests.client.conftest import new_devices, new_user
from tests.support import Server

ENV = {k: v for k, v in os.environ.items() if not k.startswith("RELAYBOX_")}


def rb(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "relaybox", *args], capture_output=True,
                          text=True, timeout=timeout, env=ENV)


def ok(*args: str) -> str:
    res = rb(*args)
    assert res.returncode == 0, res.stderr
    return res.stdout


def invoke(*args: str) -> Result:
    """In process (faster than a subprocess), for the many error cases."""
    return CliRunner().invoke(cli, list(args), env={"RELAYBOX_IDENTITY": None})


def one_line_error(res: subprocess.CompletedProcess[str] | Result, *words: str) -> str:
    code = res.returncode if isinstance(res, subprocess.CompletedProcess) else res.exit_code
    assert code == 1, (res.stdout, res.stderr)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def pairing_code(server: Server, user: str) -> str:
    doc = json.loads(ok("--data-dir", str(server.data_dir), "pair", user, "--json"))
    return str(doc["code"])


class Lines:
    """The stdout lines of a running process, read with a deadline."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.q: queue.Queue[str] = queue.Queue()
        assert proc.stdout is not None
        out = proc.stdout

        def pump() -> None:
            for line in out:
                self.q.put(line)

        threading.Thread(target=pump, daemon=True).start()

    def next_json(self, timeout: float = 15) -> dict[str, Any]:
        return json.loads(self.q.get(timeout=timeout))  # type: ignore[no-any-return]


def test_pair_send_tail_devices(server: Server, tmp_path: Path) -> None:
    user = new_user(server)
    laptop, phone = tmp_path / "laptop.json", tmp_path / "phone" / "id.json"
    paired = {}
    for name, path in (("laptop", laptop), ("phone", phone)):
        doc = json.loads(ok("client", "pair", pairing_code(server, user), "--server", server.url,
                            "--name", name, "--identity", str(path), "--json"))
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert doc["identity"] == str(path) and doc["name"] == name
        paired[name] = doc["device_id"]

    assert ok("client", "send", "notes", '{"text": "hi"}', "--identity", str(laptop)) == "1\n"
    line = ok("client", "tail", "notes", "--json", "--count", "1", "--identity", str(phone))
    event = json.loads(line)
    assert (event["stream"], event["seq"], event["body"], event["from"]) == (
        "notes", 1, {"text": "hi"}, paired["laptop"])

    # A long-running tail prints new events as they come and stops cleanly on SIGTERM.
    tail = subprocess.Popen([sys.executable, "-m", "relaybox", "client", "tail", "--json",
                             "--identity", str(phone)], stdout=subprocess.PIPE, text=True,
                            env=ENV)
    try:
        lines = Lines(tail)
        sent = json.loads(ok("client", "send", "notes", '{"n": 2}', "--json",
                             "--identity", str(laptop)))
        assert sent["seq"] == 2 and sent["stream"] == "notes"
        while (item := lines.next_json())["stream"] != "notes":
            assert item["stream"] == "sys.devices"  # notices not yet printed by a run
        assert (item["seq"], item["body"]) == (2, {"n": 2})  # seq 1 is not printed again
        tail.send_signal(signal.SIGTERM)
        assert tail.wait(20) == 0
    finally:
        if tail.poll() is None:
            tail.kill()
            tail.wait()
    ok("client", "send", "notes", '{"n": 3}', "--identity", str(laptop))
    line = ok("client", "tail", "notes", "--json", "--count", "1", "--identity", str(phone))
    assert json.loads(line)["seq"] == 3

    devices = json.loads(ok("client", "devices", "--json", "--identity", str(laptop)))
    names = {d["name"]: d["device_id"] for d in devices}
    assert names.items() >= {"laptop": paired["laptop"], "phone": paired["phone"]}.items()
    human = ok("client", "devices", "--identity", str(phone))
    assert "laptop" in human and "phone" in human


def test_send_plain_text_or_standard_input_and_tail_names_the_sender(
        server: Server, tmp_path: Path) -> None:
    laptop, phone = new_devices(server, 2)
    laptop_file, phone_file = laptop.save(tmp_path / "l.json"), phone.save(tmp_path / "p.json")
    env = ["--identity", str(laptop_file.path)]
    # Not JSON: sent as text. JSON: sent as that value. '-': standard input, as text.
    assert invoke("client", "send", "clipboard", "hello world", *env).exit_code == 0
    assert invoke("client", "send", "clipboard", "[1, 2]", *env).exit_code == 0
    assert invoke("client", "send", "clipboard", "42", "--as", "text", *env).exit_code == 0
    piped = CliRunner().invoke(cli, ["client", "send", "clipboard", "-", *env],
                               input='{"looks": "like JSON"}\nsecond line\n',
                               env={"RELAYBOX_IDENTITY": None})
    assert piped.exit_code == 0, piped.output
    out = ok("client", "tail", "clipboard", "--json", "--count", "4", "--no-state",
             "--identity", str(phone_file.path))
    bodies = [json.loads(line)["body"] for line in out.splitlines()]
    assert bodies == [{"text": "hello world"}, [1, 2], {"text": "42"},
                      {"text": '{"looks": "like JSON"}\nsecond line\n'}]
    # The human view names the sending device instead of a shortened id.
    assert invoke("client", "send", "clipboard", "named", *env).exit_code == 0
    human = ok("client", "tail", "clipboard", "--count", "1", "--no-state",
               "--identity", str(phone_file.path))
    name = next(d["name"] for d in json.loads(ok("client", "devices", "--json",
                                                 "--identity", str(phone_file.path)))
                if d["device_id"] == laptop.device_id)
    assert f" {name} " in human, human
    assert laptop.device_id[-8:] not in human


def test_errors_are_one_line(server: Server, tmp_path: Path) -> None:
    ident = tmp_path / "id.json"
    res = invoke("client", "pair", "AAAA-AAAA", "--server", server.url, "--name", "x",
                 "--identity", str(ident))
    one_line_error(res)
    assert not ident.exists()

    (dev,) = new_devices(server, 1)
    dev.save(ident)
    one_line_error(invoke("client", "pair", "AAAA-AAAA", "--server", server.url,
                          "--name", "x", "--identity", str(ident)), "already exists")
    one_line_error(invoke("client", "send", "s", "{oops", "--as", "json",
                          "--identity", str(ident)), "JSON")
    one_line_error(invoke("client", "tail", "Bad Name", "--identity", str(ident)), "stream name")
    sent = invoke("client", "send", "s", "1", "--key", "k", "--base-seq", "0",
                  "--identity", str(ident))
    assert (sent.exit_code, sent.stdout) == (0, "1\n")
    one_line_error(invoke("client", "send", "s", "2", "--key", "k", "--base-seq", "0",
                          "--identity", str(ident)), "conflict", "seq 1")
    one_line_error(invoke("client", "send", "sys.x", "1", "--identity", str(ident)), "forbidden")

    os.chmod(ident, 0o644)
    one_line_error(invoke("client", "send", "s", "1", "--identity", str(ident)), "chmod 600")
    one_line_error(invoke("client", "devices", "--identity", str(tmp_path / "none.json")),
                   "no identity file", "client pair")

    dataclasses.replace(dev, server="http://127.0.0.1:9").save(ident)
    one_line_error(invoke("client", "send", "s", "1", "--timeout", "0.5",
                          "--identity", str(ident)), "no ack")


def test_default_identity_path_matches_the_sdk() -> None:
    assert Path(DEFAULT_IDENTITY) == DEFAULT_IDENTITY_PATH


@pytest.mark.parametrize("args", [["client", "send", "s"], ["client", "pair", "CODE"]])
def test_usage_errors_exit_2(args: list[str]) -> None:
    assert invoke(*args).exit_code == 2
