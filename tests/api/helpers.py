"""REST test helpers: a running server with users, signed token requests, an httpx client.

The servers run inside the test process (``tests.inproc``) unless a test asks for a
``relaybox serve`` process of its own (``own_process=True``)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import nacl.signing

from relaybox.protocol.encoding import b64url_encode, random_nonce
from relaybox.protocol.handshake import token_signing_bytes
from tests.inproc import InProcServer
from tests.support import DeviceKey, Server, free_port, seed

# Generous limits, so that only the tests about limits meet them.
HIGH_LIMITS = {"RELAYBOX_RATE_LIMITS_TOKEN_PER_MIN": "100000",
               "RELAYBOX_RATE_LIMITS_PAIRING_PER_MIN": "100000",
               "RELAYBOX_RATE_LIMITS_PUBLISH_PER_MIN": "100000"}


@dataclass
class Api:
    """A started server, its admin token and seeded devices."""

    server: Server | InProcServer
    admin_token: str
    server_id: str
    devices: dict[str, list[DeviceKey]]
    _tokens: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return self.server.url + "/api/v1"

    def client(self, token: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=20)

    def admin(self) -> httpx.Client:
        return self.client(self.admin_token)

    def token_pair(self, dev: DeviceKey) -> dict[str, Any]:
        r = httpx.post(self.url + "/auth/token", json=signed_request(self.server_id, dev),
                       timeout=20)
        assert r.status_code == 200, r.text
        return dict(r.json())

    def token(self, dev: DeviceKey) -> str:
        """An access token for ``dev`` (cached per device for the module)."""
        if dev.device_id not in self._tokens:
            self._tokens[dev.device_id] = self.token_pair(dev)["access_token"]
        return self._tokens[dev.device_id]

    def as_device(self, dev: DeviceKey) -> httpx.Client:
        return self.client(self.token(dev))

    def settings(self) -> Any:
        from relaybox.config import load_settings

        return load_settings(self.server.data_dir, env={})


def signed_request(server_id: str, dev: DeviceKey, *, timestamp: int | None = None,
                   nonce: str | None = None) -> dict[str, Any]:
    """A token request signed with the device key (http-api.md Signing strings)."""
    ts = int(time.time()) if timestamp is None else timestamp
    nonce = nonce or random_nonce(16)
    sig = dev.key.sign(token_signing_bytes(server_id, dev.device_id, ts, nonce)).signature
    return {"device_id": dev.device_id, "timestamp": ts, "nonce": nonce,
            "signature": b64url_encode(sig)}


def new_public_key() -> str:
    return b64url_encode(bytes(nacl.signing.SigningKey.generate().verify_key))


def start_api(data_dir: Path, users: dict[str, int], *, own_process: bool = False,
              **env: str) -> Api:
    """Initialise ``data_dir``, seed ``users`` and start a server on it: in this process,
    or with ``own_process`` a ``relaybox serve`` process (to kill or signal it, or to
    look at the process)."""
    from relaybox.cli.init_cmd import initialise
    from relaybox.config import load_settings

    res = initialise(load_settings(data_dir, env={}))
    assert res.admin_token is not None
    devices = seed(data_dir, users)
    env = {**HIGH_LIMITS, **env}
    srv = Server(data_dir, free_port(), env) if own_process else InProcServer(data_dir, env)
    srv.start()
    return Api(srv, res.admin_token, res.server_id, devices)


def assert_problem(r: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    """``r`` is an RFC 9457 problem with this status (and code)."""
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/problem+json"), r.headers
    doc = r.json()
    assert doc["status"] == status and doc["type"] == "about:blank" and doc["title"]
    assert doc["request_id"] == r.headers["x-request-id"]
    if code is not None:
        assert doc["code"] == code, doc
    return dict(doc)


def assert_clean_log(server: Server | InProcServer) -> None:
    """No traceback and no 500 in the server's log."""
    text = server.log()
    for needle in ("Traceback", " 500 request_id="):
        at = text.find(needle)
        assert at < 0, f"{server.log_path}:\n" + text[max(0, at - 1500):at + 3000]
