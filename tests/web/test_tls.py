"""TLS in ``relaybox serve``: https and wss from tls.cert_file / tls.key_file, the web app in a
secure context away from localhost, and a new certificate taken on SIGHUP."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

pytest.importorskip("playwright.async_api", reason="pip install -e '.[test]'")
from playwright.async_api import expect

from relaybox.client import Client
from tests.client.conftest import _pools
from tests.support import Server, free_port, kill_embedded_redis, seed
from tests.web.conftest import LIMITS, Guard, cli

pytestmark = pytest.mark.skipif(subprocess.run(["which", "openssl"], capture_output=True)
                                .returncode != 0, reason="needs the openssl command")


def make_cert(folder: Path, name: str) -> tuple[Path, Path]:
    """A self-signed certificate for relaybox.test and 127.0.0.1 (it is its own CA)."""
    cert, key = folder / f"{name}.crt", folder / f"{name}.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2",
                    "-subj", f"/CN={name}", "-addext",
                    "subjectAltName=DNS:relaybox.test,DNS:localhost,IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    return cert, key


def served_fingerprint(port: int) -> str:
    """sha256 of the certificate a new TLS connection is given."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
            ctx.wrap_socket(raw, server_hostname="relaybox.test") as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return hashlib.sha256(der).hexdigest()


def fingerprint(cert: Path) -> str:
    return hashlib.sha256(ssl.PEM_cert_to_DER_cert(cert.read_text())).hexdigest()


class TlsServer(Server):
    """A relaybox server speaking https and wss only."""

    ca: Path = Path()

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[TlsServer]:
    cert, key = make_cert(tmp_path, "first")
    data = tmp_path / "data"
    keys = seed(data, {"tls-user": 1})
    srv = TlsServer(data, free_port(), {
        **LIMITS, "RELAYBOX_TLS_CERT_FILE": str(cert), "RELAYBOX_TLS_KEY_FILE": str(key)})
    srv.ca = cert
    srv.verify = ssl.create_default_context(cafile=cert)
    _pools[data] = list(keys.items())
    srv.start()
    yield srv
    srv.stop()
    srv.kill()
    kill_embedded_redis(data)
    assert "Traceback" not in srv.log()


def test_https_only_and_the_pairing_link_is_https(tls_server: TlsServer) -> None:
    r = httpx.get(tls_server.url + "/api/v1/status",
                  verify=ssl.create_default_context(cafile=tls_server.ca))
    assert r.status_code == 200
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{tls_server.port}/api/v1/status", timeout=3)
    link = cli(tls_server, "pair", "tls-user", "--json")
    assert f'"link": "https://127.0.0.1:{tls_server.port}/app/#pair=' in link


async def test_a_phone_over_https_pairs_and_exchanges_with_a_terminal_device(
        tls_server: TlsServer, browser: Any, guard: Guard,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.client.conftest import identity_for

    # As a phone on the network sees it: https to a name that is not localhost.
    link = cli(tls_server, "pair", "tls-user", "--json").split('"link": "')[1].split('"')[0]
    link = link.replace("127.0.0.1", "relaybox.test")
    # The Python device trusts the test certificate the way any program does.
    monkeypatch.setenv("SSL_CERT_FILE", str(tls_server.ca))
    _, devs = _pools[tls_server.data_dir][0]
    identity = dataclasses.replace(identity_for(tls_server, devs[0]),
                                   server=f"https://127.0.0.1:{tls_server.port}")
    # The test's CA is not in Chromium's store: its errors are ignored, and the origin
    # is still https (a secure context).
    context = await browser.new_context(ignore_https_errors=True,
                                        viewport={"width": 360, "height": 740})
    await context.route("**/*", guard.route)
    page = await context.new_page()
    await page.goto(link)
    assert await page.evaluate("window.isSecureContext")
    await page.click("#pair-submit")
    await expect(page.locator("#status")).to_have_text("Connected", timeout=15_000)
    async with Client(identity) as client:
        await client.publish("clipboard", {"text": "over wss"})
        await expect(page.locator("#events .event .body", has_text="over wss")
                     ).to_be_visible(timeout=10_000)
    await context.close()


def test_sighup_loads_a_new_certificate_without_a_restart(tls_server: TlsServer,
                                                          tmp_path: Path) -> None:
    assert served_fingerprint(tls_server.port) == fingerprint(tls_server.ca)
    pid = tls_server.proc.pid if tls_server.proc else 0
    new_cert, new_key = make_cert(tmp_path, "second")
    cert_file = Path(tls_server.env["RELAYBOX_TLS_CERT_FILE"])
    key_file = Path(tls_server.env["RELAYBOX_TLS_KEY_FILE"])
    # Renewed in place, as certbot or an operator would.
    cert_file.write_bytes(new_cert.read_bytes())
    key_file.write_bytes(new_key.read_bytes())
    assert served_fingerprint(tls_server.port) != fingerprint(new_cert)  # until told
    os.kill(pid, signal.SIGHUP)
    deadline = time.monotonic() + 10
    while served_fingerprint(tls_server.port) != fingerprint(new_cert):
        assert time.monotonic() < deadline, tls_server.log()[-2000:]
    assert tls_server.proc is not None and tls_server.proc.pid == pid
    assert tls_server.proc.poll() is None
    assert "TLS certificate reloaded" in tls_server.log()


def test_a_missing_key_file_is_a_one_line_error(tmp_path: Path) -> None:
    cert, _ = make_cert(tmp_path, "only-cert")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAYBOX_")}
    env.update(RELAYBOX_DATA_DIR=str(tmp_path / "data"), RELAYBOX_TLS_CERT_FILE=str(cert),
               RELAYBOX_TLS_KEY_FILE=str(tmp_path / "missing.key"))
    proc = subprocess.run([sys.executable, "-m", "relaybox", "serve", "--port",
                           str(free_port())], env=env, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1].startswith("error: tls.key_file")
