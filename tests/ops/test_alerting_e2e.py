"""Alerts reach a person: Debian's Prometheus and Alertmanager, a real relaybox, and
receivers in this process (a webhook endpoint and an SMTP server).

Prometheus loads the shipped rules (docs/ops/alerts.yml) with shorter ``for:`` durations;
Alertmanager loads the shipped routing tree (docs/ops/alertmanager.yml) with every
receiver turned into a webhook to this process, except ``email``, which goes to the local
SMTP server through the shipped templates. Delivery times: docs/operations.md
"How fast an alert arrives".
"""

from __future__ import annotations

import asyncio
import contextlib
import email
import email.policy
import json
import os
import shutil
import socketserver
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.observability.helpers import Device, start_server, stop_server
from tests.support import Server, free_port, seed

OPS = Path(__file__).resolve().parents[2] / "docs" / "ops"

# Test timings (the shipped files keep theirs): scrape and evaluate every second, alerts
# fire after 2 s, Alertmanager notifies 1 s after a group starts or changes.
SCRAPE_S = 1
FOR_S = 2
GROUP_WAIT_S = 1
GROUP_INTERVAL_S = 1
# Down is seen at the next scrape, pending at the next evaluation, firing FOR_S later (at
# an evaluation), sent at once, notified after group_wait. A resolved alert: the next
# scrape and evaluation, then the next group_interval flush.
FIRING_BOUND_S = SCRAPE_S + SCRAPE_S + FOR_S + SCRAPE_S + GROUP_WAIT_S
RESOLVED_BOUND_S = SCRAPE_S + SCRAPE_S + GROUP_INTERVAL_S
SLACK_S = 8  # process scheduling on a loaded 2-core machine

pytestmark = pytest.mark.slow


# -- receivers in this process ------------------------------------------------------------
@dataclass
class Notification:
    receiver: str
    at: float
    status: str
    alerts: list[dict[str, Any]]


@dataclass
class Inbox:
    """What the receivers got, in order, and a way to wait for one."""

    items: list[Notification] = field(default_factory=list)
    mails: list[tuple[float, email.message.EmailMessage]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, n: Notification) -> None:
        with self.lock:
            self.items.append(n)

    def wait(self, pred: Callable[[Notification], bool], after: float,
             timeout: float, what: str) -> Notification:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                for n in self.items:
                    if n.at >= after and pred(n):
                        return n
            time.sleep(0.05)
        got = [(n.receiver, n.status, [a["labels"]["alertname"] for a in n.alerts])
               for n in self.items]
        raise AssertionError(f"no {what} within {timeout} s; received {got}")

    def wait_mail(self, pred: Callable[[email.message.EmailMessage], bool], after: float,
                  timeout: float, what: str) -> email.message.EmailMessage:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                for at, msg in self.mails:
                    if at >= after and pred(msg):
                        return msg
            time.sleep(0.05)
        raise AssertionError(f"no mail {what} within {timeout} s")


def alert_named(name: str, status: str) -> Callable[[Notification], bool]:
    def pred(n: Notification) -> bool:
        return any(a["labels"]["alertname"] == name and a["status"] == status
                   for a in n.alerts)
    return pred


@contextlib.contextmanager
def serving(server: socketserver.TCPServer) -> Iterator[int]:
    """``server`` answering in a thread of its own: its port; shut down afterwards."""
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()


@contextlib.contextmanager
def webhook_receiver(inbox: Inbox) -> Iterator[int]:
    """An HTTP server taking Alertmanager's webhook POSTs at /<receiver name>."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            inbox.add(Notification(self.path.strip("/"), time.monotonic(), body["status"],
                                   body["alerts"]))
            self.send_response(200)
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    with serving(ThreadingHTTPServer(("127.0.0.1", 0), Handler)) as port:
        yield port


@contextlib.contextmanager
def smtp_receiver(inbox: Inbox) -> Iterator[int]:
    """Just enough SMTP (no TLS, no auth) to take Alertmanager's mails."""

    class Handler(socketserver.StreamRequestHandler):
        def reply(self, line: str) -> None:
            self.wfile.write(line.encode() + b"\r\n")

        def handle(self) -> None:
            self.reply("220 localhost ESMTP test")
            while line := self.rfile.readline():
                verb = line.decode(errors="replace").strip().split(" ")[0].upper()
                if verb in ("EHLO", "HELO"):
                    self.reply("250 localhost")
                elif verb == "DATA":
                    self.reply("354 end with <CRLF>.<CRLF>")
                    data = []
                    while (chunk := self.rfile.readline()) not in (b".\r\n", b""):
                        data.append(chunk[1:] if chunk.startswith(b"..") else chunk)
                    msg = email.message_from_bytes(b"".join(data), policy=email.policy.default)
                    with inbox.lock:
                        inbox.mails.append((time.monotonic(), msg))
                    self.reply("250 queued")
                elif verb == "QUIT":
                    self.reply("221 bye")
                    return
                else:  # MAIL, RCPT, RSET, NOOP
                    self.reply("250 ok")

    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    with serving(server) as port:
        yield port


# -- configuration derived from the shipped files -------------------------------------------
def write_rules(path: Path) -> None:
    """alerts.yml with every ``for:`` shortened to FOR_S."""
    rules = yaml.safe_load((OPS / "alerts.yml").read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            if "for" in rule:
                rule["for"] = f"{FOR_S}s"
    path.write_text(yaml.safe_dump(rules, sort_keys=False))


def write_alertmanager_config(path: Path, webhook_port: int, smtp_port: int) -> None:
    """alertmanager.yml's routes and inhibitions; receivers point at this process."""
    config = yaml.safe_load((OPS / "alertmanager.yml").read_text())
    config["global"].update({"smtp_smarthost": f"127.0.0.1:{smtp_port}",
                             "smtp_require_tls": False})
    for key in ("smtp_auth_username", "smtp_auth_password"):
        config["global"].pop(key)
    config["templates"] = [str(OPS / "templates" / "*.tmpl")]

    def shorten(route: dict[str, Any]) -> None:
        route.update({"group_wait": f"{GROUP_WAIT_S}s", "group_interval":
                      f"{GROUP_INTERVAL_S}s", "repeat_interval": "1h"})
        for child in route.get("routes", []):
            shorten(child)

    shorten(config["route"])
    for receiver in config["receivers"]:
        name = receiver["name"]
        if name == "email":
            receiver["email_configs"][0]["to"] = "oncall@localhost"
            continue
        receiver.clear()
        receiver.update({"name": name, "webhook_configs": [
            {"url": f"http://127.0.0.1:{webhook_port}/{name}", "send_resolved": True}]})
    path.write_text(yaml.safe_dump(config, sort_keys=False))


# -- Prometheus and Alertmanager processes -----------------------------------------------------
def executable(*names: str) -> str:
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    raise AssertionError(f"{names[0]} is needed: .ci/run installs Debian's prometheus and "
                         "prometheus-alertmanager")


@contextlib.contextmanager
def process(cmd: list[str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        try:
            yield proc
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def wait_ready(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text(errors="replace")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2).status_code == 200:
                return
        time.sleep(0.1)
    raise AssertionError(f"{url} not ready: {log.read_text(errors='replace')}")


def wait_target_up(prom_url: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError, KeyError):
            result = httpx.get(f"{prom_url}/api/v1/query", params={"query": 'up{job="relaybox"}'},
                               timeout=2).json()["data"]["result"]
            if result and result[0]["value"][1] == "1":
                return
        time.sleep(0.1)
    raise AssertionError("Prometheus never scraped relaybox")


# -- breaking the database -------------------------------------------------------------------
@contextlib.contextmanager
def damaged_header(db: Path) -> Iterator[None]:
    """Overwrite the SQLite file's magic header in place, and restore it afterwards.

    The WAL is checkpointed first so that page 1 is read from the file: the writer's next
    transaction then fails with "file is not a database", the health monitor's write probe
    keeps failing, and relaybox_database_up drops to 0 (relaybox/server/observability/health.py).
    """
    import sqlite3

    con = sqlite3.connect(db, isolation_level=None)
    try:
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
    finally:
        con.close()
    fd = os.open(db, os.O_RDWR)
    try:
        header = os.pread(fd, 16, 0)
        assert header == b"SQLite format 3\0"
        os.pwrite(fd, b"\0" * 16, 0)
        os.fsync(fd)
        yield
        os.pwrite(fd, header, 0)
        os.fsync(fd)
    finally:
        os.close(fd)


async def publish_and_wait(dev: Device, stream: str) -> str:
    """Publish one event; its answer: 'ack' or the nack code."""
    pid = await dev.publish(stream)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if pid in dev.acks:
            return "ack"
        if pid in dev.nacks:
            return dev.nacks[pid]
        await asyncio.sleep(0.02)
    raise AssertionError("no answer to a publish")


def test_alerts_reach_the_receivers_and_resolve(tmp_path: Path) -> None:
    prometheus = executable("prometheus")
    alertmanager = executable("prometheus-alertmanager", "alertmanager")
    data = tmp_path / "data"
    device = seed(data, {"alice": 1})["alice"][0]
    srv = start_server(data)
    inbox = Inbox()
    am_port, prom_port = free_port(), free_port()
    rules, am_config, prom_config = (tmp_path / "alerts.yml", tmp_path / "alertmanager.yml",
                                     tmp_path / "prometheus.yml")
    write_rules(rules)
    prom_config.write_text(yaml.safe_dump({
        "global": {"scrape_interval": f"{SCRAPE_S}s", "scrape_timeout": f"{SCRAPE_S}s",
                   "evaluation_interval": f"{SCRAPE_S}s"},
        "rule_files": [str(rules)],
        "alerting": {"alertmanagers": [{"static_configs": [
            {"targets": [f"127.0.0.1:{am_port}"]}]}]},
        "scrape_configs": [{"job_name": "relaybox", "static_configs": [
            {"targets": [f"127.0.0.1:{srv.port}"]}]}],
    }))
    times: dict[str, float] = {}
    try:
        with webhook_receiver(inbox) as hook_port, smtp_receiver(inbox) as smtp_port:
            write_alertmanager_config(am_config, hook_port, smtp_port)
            am_log, prom_log = tmp_path / "alertmanager.log", tmp_path / "prometheus.log"
            with process([alertmanager, f"--config.file={am_config}",
                          f"--storage.path={tmp_path / 'am'}",
                          f"--web.listen-address=127.0.0.1:{am_port}",
                          "--cluster.listen-address="], am_log) as am, \
                 process([prometheus, f"--config.file={prom_config}",
                          f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                          f"--web.listen-address=127.0.0.1:{prom_port}"], prom_log) as prom:
                wait_ready(f"http://127.0.0.1:{am_port}/-/ready", am, am_log)
                wait_ready(f"http://127.0.0.1:{prom_port}/-/ready", prom, prom_log)
                prom_url = f"http://127.0.0.1:{prom_port}"
                wait_target_up(prom_url)

                # 1. The server stops: RelayboxDown pages (PagerDuty route) and mails.
                t0 = time.monotonic()
                srv.stop()
                down = inbox.wait(alert_named("RelayboxDown", "firing"), t0,
                                  FIRING_BOUND_S + SLACK_S, "RelayboxDown on the pager")
                times["down fired"] = down.at - t0
                for receiver in ("pagerduty", "ntfy", "slack", "webhook"):
                    inbox.wait(lambda n, r=receiver: n.receiver == r  # type: ignore[misc]
                               and alert_named("RelayboxDown", "firing")(n), t0,
                               SLACK_S, f"RelayboxDown at {receiver}")
                alert = next(a for a in down.alerts if a["labels"]["alertname"] == "RelayboxDown")
                assert alert["labels"]["severity"] == "critical"
                assert alert["annotations"]["runbook_url"].endswith("operations.md#relayboxdown")
                mail = inbox.wait_mail(lambda m: "RelayboxDown" in str(m["Subject"]), t0,
                                       SLACK_S, "about RelayboxDown")
                assert str(mail["Subject"]).startswith("[FIRING:1] RelayboxDown on 127.0.0.1:")
                body = mail.get_body(("plain",))
                assert body is not None
                text = body.get_content()
                assert "is not answering /metrics" in text
                assert "Runbook: https://" in text and "#relayboxdown" in text

                # 2. It starts again: the resolved notification follows.
                t1 = time.monotonic()
                srv.start()
                up = inbox.wait(alert_named("RelayboxDown", "resolved"), t1,
                                RESOLVED_BOUND_S + SLACK_S, "RelayboxDown resolved")
                times["down resolved"] = up.at - t1

                # 3. The database file is damaged under the running server.
                wait_target_up(prom_url)
                asyncio.run(_break_and_repair_database(srv, device, inbox, times))
    finally:
        stop_server(srv)
        print("alert delivery times (s):",
              {k: round(v, 2) for k, v in times.items()})
    assert times["down fired"] <= FIRING_BOUND_S + SLACK_S
    assert times["database fired"] <= FIRING_BOUND_S + SLACK_S


async def _break_and_repair_database(srv: Server, device: Any, inbox: Inbox,
                                     times: dict[str, float]) -> None:
    dev = await Device.connect(srv, device)
    try:
        assert await publish_and_wait(dev, "notes") == "ack"
        db = srv.data_dir / "relaybox.db"
        with damaged_header(db):
            t0 = time.monotonic()
            # A commit notices the damage; the health monitor then probes writes.
            assert await publish_and_wait(dev, "notes") == "unavailable"
            n = await asyncio.to_thread(
                inbox.wait, alert_named("RelayboxDatabaseDown", "firing"), t0,
                FIRING_BOUND_S + SLACK_S + 2, "RelayboxDatabaseDown")
            times["database fired"] = n.at - t0
            alert = next(a for a in n.alerts
                         if a["labels"]["alertname"] == "RelayboxDatabaseDown")
            assert alert["annotations"]["runbook_url"].endswith("#relayboxdatabasedown")
            t1 = time.monotonic()
        n = await asyncio.to_thread(
            inbox.wait, alert_named("RelayboxDatabaseDown", "resolved"), t1,
            RESOLVED_BOUND_S + SLACK_S + 2, "RelayboxDatabaseDown resolved")
        times["database resolved"] = n.at - t1
        assert await publish_and_wait(dev, "notes") == "ack"
    finally:
        await dev.close()
