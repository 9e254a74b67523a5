r"""Locust users for a relaybox server: REST API users and gateway (WebSocket) users.

Locust goes into relaybox's environment (this file imports relaybox.protocol); it is not
a relaybox dependency nor a test extra:

    pip install locust
    RELAYBOX_ADMIN_TOKEN=rbadm_… locust -f docs/ops/locustfile.py --host http://HOST:PORT

Against a throwaway local server, headless for 15 s (docs/performance.md has the numbers
this printed):

    relaybox --data-dir /tmp/lb init --json            # prints admin_token
    RELAYBOX_RATE_LIMITS_PAIRING_PER_MIN=1000 relaybox --data-dir /tmp/lb serve --port 8765 &
    RELAYBOX_ADMIN_TOKEN=rbadm_… locust -f docs/ops/locustfile.py --headless \
        --host http://127.0.0.1:8765 --users 20 --spawn-rate 5 --run-time 15s --only-summary

Each simulated user makes its own relaybox user and device through the admin API and a
pairing claim when it starts, and revokes the device when it stops. The server's
limits apply to the load like to any client (api.md §4 Rate limits): pairing claims
are 10 a minute per address, so ramp users up slowly (``--spawn-rate 0.15``) or raise
``rate_limits.pairing_per_min`` on a test server (as above); a refused claim shows as a
failed ``/pairing/claim`` and stops that user. ``limits.connections_per_address`` caps
the gateway users from one machine (64 by default).
"""

from __future__ import annotations

import json
import os
import secrets
import time
import uuid
from typing import Any

import nacl.signing
from locust import HttpUser, between, events, task
from websockets.sync.client import connect

from relaybox.protocol.client import ClientHandshake, SendAuth
from relaybox.protocol.encoding import b64url_encode, random_nonce
from relaybox.protocol.handshake import token_signing_bytes

ADMIN = {"Authorization": f"Bearer {os.environ.get('RELAYBOX_ADMIN_TOKEN', '')}"}


def make_device(client: Any) -> tuple[str, str, nacl.signing.SigningKey]:
    """A new user and one device on it: (user name, device_id, key). ``client`` is the
    Locust user's HttpSession, so these requests count in the statistics too; a refused
    one (a wrong admin token, the pairing rate limit) stops the user with the reason."""
    name = f"locust-{secrets.token_hex(4)}"
    client.post("/api/v1/admin/users", json={"name": name}, headers=ADMIN,
                name="/admin/users").raise_for_status()
    r = client.post(f"/api/v1/admin/users/{name}/pairing", headers=ADMIN,
                    name="/admin/users/{user}/pairing")
    r.raise_for_status()
    key = nacl.signing.SigningKey.generate()
    r = client.post("/api/v1/pairing/claim", name="/pairing/claim", json={
        "code": r.json()["code"], "public_key": b64url_encode(bytes(key.verify_key)),
        "name": "locust"})
    r.raise_for_status()
    return name, r.json()["device_id"], key


def handshake(ws: Any, device_id: str, key: nacl.signing.SigningKey) -> dict[str, Any]:
    """protocol.md §2 on a blocking WebSocket, with relaybox's protocol core; `welcome`."""
    hs = ClientHandshake(device_id, key, strict=True)
    ws.send(hs.hello())
    while not hs.done:
        event = hs.receive_text(ws.recv(10))
        if isinstance(event, SendAuth):
            ws.send(event.frame)
    assert hs.welcome is not None, hs.refusal
    return hs.welcome


def revoke(client: Any, device_id: str) -> None:
    client.post("/api/v1/admin/revoke-device", headers=ADMIN, name="/admin/revoke-device",
                json={"device_id": device_id, "reason": "locust run over"})


class RestUser(HttpUser):
    """A script on the REST API: a token, the device list, publish and read events."""

    wait_time = between(0.5, 2)

    def on_start(self) -> None:
        self.user, self.device_id, self.key = make_device(self.client)
        self.server_id = self.client.get("/api/v1/status", name="/status").json()["server_id"]
        self.token = ""
        self.sign_in()

    def on_stop(self) -> None:
        revoke(self.client, self.device_id)

    def sign_in(self) -> None:
        ts, nonce = int(time.time()), random_nonce(24)
        sig = self.key.sign(token_signing_bytes(self.server_id, self.device_id, ts,
                                                nonce)).signature
        doc = self.client.post("/api/v1/auth/token", name="/auth/token", json={
            "device_id": self.device_id, "timestamp": ts, "nonce": nonce,
            "signature": b64url_encode(sig)}).json()
        self.token = doc["access_token"]

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    @task(5)
    def publish(self) -> None:
        self.client.post("/api/v1/streams/locust/events", headers=self.auth,
                         name="/streams/{stream}/events POST",
                         json={"id": str(uuid.uuid4()), "body": {"t": time.time()}})

    @task(3)
    def read(self) -> None:
        self.client.get("/api/v1/streams/locust/events?after=0&limit=100", headers=self.auth,
                        name="/streams/{stream}/events GET")

    @task(1)
    def devices(self) -> None:
        self.client.get("/api/v1/devices", headers=self.auth, name="/devices")


class GatewayUser(HttpUser):
    """A device on the gateway: signs in over the WebSocket, publishes and reads its
    own events back; each publish → ack is one Locust request ("gateway publish"). The
    HTTP client (an HttpUser's) only makes and revokes the device."""

    wait_time = between(0.1, 0.5)

    def on_start(self) -> None:
        self.ws: Any = None
        self.user, self.device_id, self.key = make_device(self.client)
        url = self.host.replace("http", "ws", 1).rstrip("/") + "/api/v1/gateway"
        t0 = time.perf_counter()
        try:
            self.ws = connect(url, compression=None, max_size=None)
            handshake(self.ws, self.device_id, self.key)
            self._fire("handshake", t0, None)
        except Exception as exc:
            self._fire("handshake", t0, exc)
            raise

    def on_stop(self) -> None:
        if self.ws is not None:
            self.ws.close()
        if getattr(self, "device_id", None):
            revoke(self.client, self.device_id)

    def _fire(self, name: str, t0: float, exc: BaseException | None) -> None:
        events.request.fire(request_type="WS", name=name, exception=exc, context={},
                            response_time=(time.perf_counter() - t0) * 1000,
                            response_length=0)

    @task
    def publish(self) -> None:
        t0 = time.perf_counter()
        pid = str(uuid.uuid4())
        self.ws.send(json.dumps({"type": "publish", "id": pid, "stream": "locust",
                                 "body": {"t": time.time()}}))
        exc: BaseException | None = None
        while True:  # events of other sessions are acked; our reply ends the request
            msg = json.loads(self.ws.recv(10))
            if msg["type"] == "event":
                self.ws.send(json.dumps({"type": "ack", "stream": msg["stream"],
                                         "seq": msg["seq"]}))
            elif msg["type"] in ("ack", "nack") and msg.get("id") == pid:
                if msg["type"] == "nack":
                    exc = RuntimeError(f"nack {msg.get('code')}")
                break
        self._fire("publish → ack", t0, exc)
