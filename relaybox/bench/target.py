"""``relaybox bench --target``: users and devices made on a running server through its
admin API and pairing claims, and revoked when the run ends (docs/performance.md)."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import nacl.signing

from relaybox.bench.connection import Device
from relaybox.bench.latency import latency
from relaybox.bench.relay import catchup, relay
from relaybox.bench.run import Parts, summarize
from relaybox.bench.sessions import handshakes
from relaybox.protocol.encoding import b64url_encode

#: What the idle-memory part needs and a remote server does not give.
IDLE_SKIPPED = ("idle memory not measured: it reads the server process's memory, "
                "which only a local throwaway server exposes")


class Refused(RuntimeError):
    """The target refused the bench (a rate limit, the connection cap, a bad token)."""


def gateway_url(base: str) -> str:
    """ws(s)://HOST/api/v1/gateway for an http(s)://HOST server URL."""
    parts = urlsplit(base.rstrip("/"))
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme)
    if scheme is None or not parts.netloc:
        raise ValueError(f"not an http(s) server URL: {base!r}")
    return urlunsplit((scheme, parts.netloc, parts.path + "/api/v1/gateway", "", ""))


def _detail(resp: httpx.Response) -> str:
    try:
        doc = resp.json()
    except ValueError:
        return resp.reason_phrase
    if isinstance(doc, dict):
        return str(doc.get("code") or "") + (f": {doc['detail']}" if doc.get("detail") else "")
    return resp.reason_phrase


class TargetAccounts:
    """Bench users and devices on a running server; ``cleanup`` revokes the devices.

    The API has no route that deletes a user, so the (empty) users stay, named
    ``bench-<tag>-<n>``; their devices are revoked (api.md §3 Admin)."""

    def __init__(self, base: str, admin_token: str, *, log: Callable[[str], None] = print,
                 max_wait_s: float = 90.0, http: httpx.Client | None = None) -> None:
        self.base = base.rstrip("/")
        self.api = self.base + "/api/v1"
        self.log = log
        self.max_wait_s = max_wait_s  # total time spent waiting out 429s
        self.waited_s = 0.0
        self.http = http or httpx.Client(timeout=15.0)
        self.headers = {"Authorization": f"Bearer {admin_token}"}
        self.tag = secrets.token_hex(3)
        self.users: list[str] = []
        self.devices: list[Device] = []
        self.refusals: list[str] = []

    def _post(self, path: str, body: dict[str, Any] | None, *, admin: bool = True,
              want: int = 201) -> Any:
        while True:
            try:
                resp = self.http.post(self.api + path, json=body,
                                      headers=self.headers if admin else None)
            except httpx.HTTPError as exc:
                raise Refused(f"cannot reach {self.api}{path}: {exc}") from None
            if resp.status_code == want:
                return resp.json()
            if resp.status_code in (429, 503):
                wait = float(resp.headers.get("Retry-After") or 5)
                what = (f"{path}: {resp.status_code} {_detail(resp)} "
                        f"(Retry-After {wait:g} s)")
                self.refusals.append(what)
                if self.waited_s + wait > self.max_wait_s:
                    raise Refused(f"the target keeps refusing {what}; its rate limits apply "
                                  "to the bench too (api.md §4 Rate limits)")
                self.log(f"refused {what}; waiting")
                self.waited_s += wait
                time.sleep(wait)
                continue
            if resp.status_code in (401, 403) and admin:
                raise Refused(f"{path}: {resp.status_code} {_detail(resp)} (is the admin "
                              "token right?)")
            raise Refused(f"{path}: {resp.status_code} {_detail(resp)}")

    def make_user(self) -> str:
        name = f"bench-{self.tag}-{len(self.users)}"
        self._post("/admin/users", {"name": name})
        self.users.append(name)
        return name

    def make_devices(self, user: str, n: int) -> list[Device]:
        """``n`` devices of ``user``: an admin pairing code each, claimed with a new key.
        Claims count against ``rate_limits.pairing_per_min`` of this address."""
        out = []
        for i in range(n):
            code = self._post(f"/admin/users/{user}/pairing", None)["code"]
            sk = nacl.signing.SigningKey.generate()
            doc = self._post("/pairing/claim", {
                "code": code, "public_key": b64url_encode(bytes(sk.verify_key)),
                "name": f"bench-{i}"}, admin=False)
            dev = Device(str(doc["device_id"]), bytes(sk))
            self.devices.append(dev)
            out.append(dev)
        return out

    def cleanup(self) -> dict[str, Any]:
        """Revoke every device made; never raises (the run's own error matters more)."""
        revoked, failed = 0, []
        for dev in self.devices:
            try:
                resp = self.http.post(self.api + "/admin/revoke-device", headers=self.headers,
                                      json={"device_id": dev.device_id,
                                            "reason": "relaybox bench run over"})
                if resp.status_code == 200:
                    revoked += 1
                else:
                    failed.append(f"{dev.device_id}: {resp.status_code} {_detail(resp)}")
            except httpx.HTTPError as exc:
                failed.append(f"{dev.device_id}: {exc}")
        return {"devices_revoked": revoked, "revoke_failed": failed,
                "users_left": list(self.users),
                "note": "the API has no user removal; the bench users stay, with every "
                        "device revoked"}

    def close(self) -> None:
        self.http.close()


def run_target(base: str, admin_token: str, *, events: int = 50000,
               catchup_events: int = 20000, handshake_rounds: int = 3000,
               only: set[str] | None = None, log: Callable[[str], None] = print,
               settle_s: float = 5.0, max_wait_s: float = 90.0) -> dict[str, Any]:
    """The bench's throughput, latency, catch-up and handshake parts against ``base``."""
    want = (only or {"throughput", "latency", "catchup", "handshakes"}) - {"idle"}
    url = gateway_url(base)
    results: dict[str, Any] = {"target": base, "skipped": {"idle": IDLE_SKIPPED}}
    accounts = TargetAccounts(base, admin_token, log=log, max_wait_s=max_wait_s)
    try:
        log("making a bench user and devices through the admin API …")
        user = accounts.make_user()
        a, b, c, d = accounts.make_devices(user, 4)
        hs = accounts.make_devices(user, 4) if "handshakes" in want else []
        parts = Parts(want, settle_s, log)
        if parts.start("throughput", f"throughput: {events} events A → B …"):
            results["throughput"] = relay(url, a, b, events)
        n = min(events, 20000)
        if parts.start("latency", f"latency: {n} events at 2,000/s …"):
            results["latency_at_2000"] = latency(url, c, d, n, rate=2000)
        if parts.start("catchup", f"catch-up: {catchup_events} events …"):
            results["catchup"] = catchup(url, a, d, catchup_events)
        if parts.start("handshakes", "handshakes …"):
            # One session per device at a time: a second one would replace the first (4409).
            results["handshakes"] = handshakes(url, hs, handshake_rounds, procs=1,
                                               concurrency=len(hs))
    finally:
        results["cleanup"] = accounts.cleanup()
        results["refusals"] = accounts.refusals
        accounts.close()
    results["summary"] = summarize(results)
    return results
